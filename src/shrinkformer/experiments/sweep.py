"""``reproduce``: train the baseline, run every experiment of the grid against it, cache each result
under a key of its full configuration, and hand the rows to the report.

An interrupted or extended sweep continues where it stopped; a finished one re-renders at once. An
experiment that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import load_config
from ..errors import UsageError
from ..io import write_text_atomic
from ..evaluate.bleu import score
from ..pack.format import fp32_size, load_any, save_packed
from ..train.checkpoint import model_fingerprint
from ..train.loop import read_split, train
from ..train.retrain import RetrainConfig, Stage, retrain
from ..translate import Translator
from .grid import GRID, SWEEP_PRESETS, Experiment, SweepPreset

log = logging.getLogger(__name__)

ROW_FIELDS = ["name", "method", "scope", "bits", "sparsity", "bleu", "chrf", "bleu_retention",
              "params_compressed_share", "packed_bytes", "compression_ratio", "scope_compression_ratio",
              "huffman_compression_ratio", "huffman_scope_compression_ratio", "retrain_seconds", "status", "error"]


def fingerprint(checkpoint: Path) -> str:
    """SHA-256 of the model in ``checkpoint`` (config, tokenizer, weights), whatever its file format."""
    return model_fingerprint(*load_any(checkpoint))


def baseline_checkpoint(sp: SweepPreset, output: Path, data_dir: str | None, baseline: Path | None) -> Path:
    if baseline is not None:
        return baseline
    run = output / "baseline"
    if not (run / "model.pt").exists() or (run / "last.pt").exists() and not _finished(run):
        path = Path(sp.train_config)
        is_file = path.suffix in (".yaml", ".yml")
        overrides = sp.overrides + ([f"data.data_dir={data_dir}"] if data_dir else [])
        cfg = load_config(None if is_file else sp.train_config, path if is_file else None, overrides)
        log.info("training the baseline into %s", run)
        train(cfg, run)
    return run / "model.pt"


def _finished(run: Path) -> bool:
    from ..train.checkpoint import load_checkpoint
    return bool(load_checkpoint(run / "last.pt")["progress"].get("finished"))


def run_experiment(exp: Experiment, sp: SweepPreset, checkpoint: Path, data_dir: str | None,
                   models: Path) -> dict[str, Any]:
    cfg, tok, model = load_any(checkpoint)
    if data_dir:
        cfg.data.data_dir = data_dir
    row: dict[str, Any] = {"name": exp.name, "method": exp.method, "scope": exp.scope, "bits": exp.bits,
                           "sparsity": exp.sparsity}
    out = models / f"{exp.name}.sfz"
    if not exp.stages:  # the baseline, packed uncompressed
        started = time.perf_counter()
        test = read_split(cfg, cfg.data.test_split, sp.test_limit)
        s = score(Translator(model, tok, cfg.decode).translate(test.source), test.target)
        packed = save_packed(model, cfg, tok, out)
        row.update(bleu=s.bleu, chrf=s.chrf, params_compressed_share=0.0, packed_bytes=packed,
                   compression_ratio=round(fp32_size(model, tok) / packed, 3), scope_compression_ratio=None,
                   retrain_seconds=0.0, wall_seconds=round(time.perf_counter() - started, 1),
                   bleu_signature=s.bleu_signature)
        return row
    rc = RetrainConfig(epochs=sp.retrain_epochs, lr=sp.retrain_lr, distill=exp.distill, test_limit=sp.test_limit)
    report = retrain(model, tok, cfg, [Stage(c, [scope]) for c, scope in exp.stages], rc, out, sp.train_limit,
                     work_dir=out.with_name(out.name + ".work"))
    row.update({k: report[k] for k in ("bleu", "chrf", "params_compressed_share", "packed_bytes", "compression_ratio",
                                       "scope_compression_ratio", "huffman_compression_ratio",
                                       "huffman_scope_compression_ratio", "retrain_seconds", "wall_seconds",
                                       "history", "bleu_signature")})
    return row


def reproduce(preset: str, output: Path, data_dir: str | None = None, baseline: Path | None = None,
              only: list[str] | None = None, commit: str | None = None) -> dict[str, Any]:
    """Run (or take from the cache) every experiment of the grid; ``commit`` is recorded in the
    rows computed now (cached rows keep the commit they ran with)."""
    if preset not in SWEEP_PRESETS:
        raise UsageError(f"unknown sweep preset {preset!r} (known: {', '.join(SWEEP_PRESETS)})")
    sp = SWEEP_PRESETS[preset]
    grid = [e for e in GRID if only is None or e.name in only or e.name == "baseline"]
    unknown = set(only or []) - {e.name for e in GRID}
    if unknown:
        raise UsageError(f"unknown experiment {sorted(unknown)[0]!r} (known: {', '.join(e.name for e in GRID)})")
    started = time.perf_counter()
    cache, models = output / "cache", output / "models"
    cache.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    checkpoint = baseline_checkpoint(sp, output, data_dir, baseline)
    base_hash = fingerprint(checkpoint)
    rows = []
    bar = tqdm(grid, desc="experiments", unit="exp", disable=None)
    for exp in bar:
        bar.set_postfix_str(exp.name)
        key = hashlib.sha256(json.dumps({"experiment": exp.spec(), "preset": asdict(sp), "baseline": base_hash},
                                        sort_keys=True).encode()).hexdigest()[:16]
        cached = cache / f"{exp.name}.json"
        if cached.exists():
            entry = json.loads(cached.read_text())
            if entry.get("key") == key:
                rows.append(entry["row"])
                log.info("%s: cached", exp.name)
                continue
        log.info("running %s", exp.name)
        try:
            row = run_experiment(exp, sp, checkpoint, data_dir, models)
            row.update(status="ok", git_commit=commit)
            write_text_atomic(cached, json.dumps({"key": key, "row": row}, indent=1))
        except Exception as err:  # one failure must not end the sweep
            log.error("%s failed: %s", exp.name, err)
            log.debug("%s", traceback.format_exc())
            row = {"name": exp.name, "method": exp.method, "scope": exp.scope, "status": "failed",
                   "error": f"{type(err).__name__}: {err}"}
        rows.append(row)
    base = next((r for r in rows if r["name"] == "baseline" and r.get("bleu") is not None), None)
    for r in rows:
        if base and r.get("bleu") is not None:
            r["bleu_retention"] = round(r["bleu"] / base["bleu"], 4) if base["bleu"] else None
    return {"preset": preset, "rows": rows, "baseline_checkpoint": str(checkpoint),
            "sweep_seconds": round(time.perf_counter() - started, 1)}
