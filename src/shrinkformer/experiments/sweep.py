"""``reproduce``: train the baseline (or take one), run every experiment of the preset against it,
cache each result under a key of its full configuration, and hand the rows to the report.

An interrupted or extended sweep continues where it stopped; a finished one re-renders at once. An
experiment that fails is recorded with its error and the others go on. Each row keeps its
translations of every test split (``hypotheses/``), so significance tests can be run on them later.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..adapters.base import ModelAdapter
from ..checkpoint import load_checkpoint
from ..config import load_config
from ..data.datasets import cache_root
from ..data.splits import read_split
from ..errors import OutputError, UsageError
from ..io import atomic_write, write_text_atomic
from ..loading import load_adapter
from ..locks import BusyError, hold
from ..pack.sizes import ModelSizes
from ..train.loop import train
from ..workflow.pipeline import CompressionResult, SplitResult, compress_model, score_splits
from ..workflow.allocate import Allocation, describe
from ..workflow.budget import load_or_plan
from ..workflow.retrain import RetrainConfig, Stage
from .comparisons import compare
from .plots import allocation_heatmap
from .grid import EXPERIMENTS, SWEEP_PRESETS, Experiment, SweepPreset

log = logging.getLogger(__name__)

ROW_FIELDS = ["name", "method", "scope", "bits", "sparsity", "bleu", "chrf", "bleu_retention", "control_retention",
              "params_compressed_share", "packed_bytes", "compression_ratio", "model_compression_ratio",
              "scope_compression_ratio", "huffman_compression_ratio", "huffman_scope_compression_ratio",
              "tokenizer_bytes", "retrain_seconds", "status", "error"]


def fingerprint(checkpoint: Path) -> str:
    """SHA-256 of the model in ``checkpoint`` (config, tokenizer, weights), whatever its family or file format."""
    return load_adapter(checkpoint, training=True).fingerprint()


def baseline_checkpoint(sp: SweepPreset, output: Path, data_dir: str | None, baseline: Path | None) -> Path:
    if baseline is not None:
        return baseline
    if sp.baseline is not None:
        if not Path(sp.baseline).exists():
            raise UsageError(f"preset {sp.name} starts from the trained model {sp.baseline}, which is not here "
                             "(run from the repository root, or pass --baseline MODEL)")
        return Path(sp.baseline)
    run = output / "baseline"
    with hold(run / ".lock", f"run directory {run}", wait=True):  # row jobs wait for the one training it
        if not (run / "model.pt").exists() or (run / "last.pt").exists() and not _finished(run):
            path = Path(sp.train_config)
            is_file = path.suffix in (".yaml", ".yml")
            cfg = load_config(None if is_file else sp.train_config, path if is_file else None, sp.overrides)
            if data_dir:
                cfg.data.data_dir = data_dir
            log.info("training the baseline into %s", run)
            train(cfg, run)
    return run / "model.pt"


def _finished(run: Path) -> bool:
    return bool(load_checkpoint(run / "last.pt")["progress"].get("finished"))


def hypotheses_path(output: Path, name: str, split: str) -> Path:
    return output / "hypotheses" / f"{name}.{split}.txt.gz"


def save_hypotheses(output: Path, name: str, tests: dict[str, SplitResult]) -> None:
    for split, result in tests.items():
        # mtime=0: the same translations give the same bytes, so a re-run does not churn git.
        data = gzip.compress(("\n".join(result.hypotheses) + "\n").encode("utf-8"), mtime=0)
        with atomic_write(hypotheses_path(output, name, split)) as f:
            f.write(data)


def load_hypotheses(output: Path, name: str, split: str) -> list[str] | None:
    path = hypotheses_path(output, name, split)
    if not path.exists():
        return None
    return gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()


def _size_fields(sizes: ModelSizes) -> dict[str, Any]:
    """A row's sizes: the packed bytes, the tokenizer's, every size and, at the top, the ratios."""
    d = sizes.to_dict()
    return {"packed_bytes": sizes.packed_file_bytes, "tokenizer_bytes": sizes.tokenizer_bytes, "sizes": d,
            **{k: v for k, v in d.items() if k.endswith("_ratio")}}


def _row_scores(tests: dict[str, SplitResult]) -> dict[str, Any]:
    first = next(iter(tests.values()))
    return {"test_split": first.split, "bleu": first.scores.bleu, "chrf": first.scores.chrf,
            "bleu_signature": first.scores.bleu_signature,
            "tests": {k: {"bleu": r.scores.bleu, "chrf": r.scores.chrf, "sentences": r.scores.sentences}
                      for k, r in tests.items()}}


def work_dir(exp: Experiment, key: str) -> Path:
    """Where a row's retraining keeps its resumable state: outside the work tree (a fresh checkout
    of the repository on the same machine still finds it), named by the row's cache key."""
    return cache_root() / "sweep" / f"{exp.name}-{key}"


def stages_of(exp: Experiment) -> list[Stage]:
    last = len(exp.stages) - 1
    return [Stage(c, list(scope) if isinstance(scope, tuple) else [scope],
                  retrain=not exp.retrain_last_only or i == last) for i, (c, scope) in enumerate(exp.stages)]


def run_experiment(exp: Experiment, sp: SweepPreset, checkpoint: Path, data_dir: str | None,
                   output: Path, work: Path | None = None, model_file: Path | None = None) -> dict[str, Any]:
    """One row: its model packed to ``model_file`` (default ``OUTPUT/models/NAME.sfz``), its
    translations under ``OUTPUT/hypotheses``; the row's fields."""
    adapter = load_adapter(checkpoint, training=True)
    cfg = adapter.cfg
    if data_dir:
        cfg.data.data_dir = data_dir
    if sp.valid_limit is not None:
        cfg.data.valid_limit = sp.valid_limit
    splits = list(sp.test_splits or [cfg.data.test_split])
    row = new_row(exp)
    out = model_file or model_path(output, exp, checkpoint)
    if not exp.retrains:  # the baseline, packed uncompressed
        started = time.perf_counter()
        tests = score_splits(adapter, splits, sp.test_limit)
        sizes = ModelSizes.measure(adapter.model, adapter.tokenizer_files(), adapter.write_packed(out))
        return baseline_row(row, output, exp, tests, sizes, started)
    work = work or out.with_name(out.name + ".work")
    allocation, half_dense = None, False
    if exp.target_ratio is not None:
        budget = exp.budget()
        allocation, half_dense = load_or_plan(adapter, budget, work, sp.train_limit), budget.half_dense
        stages = budget.stages(allocation.choices(), allocation.sensitivities())
    else:
        stages = stages_of(exp)
    result = compress_model(adapter, stages, retrain_config(exp, sp), out, sp.train_limit, work_dir=work,
                            test_splits=splits, test_limit=sp.test_limit, half_dense=half_dense)
    if result is None:  # only torchrun's other ranks get None, and a sweep runs in one process
        raise RuntimeError(f"{exp.name}: compress_model returned nothing on the main process")
    if allocation is not None:
        row["allocation"] = save_allocation(allocation, result, out, exp)
    return compressed_row(row, output, exp, result)


def save_allocation(allocation: Allocation, result: CompressionResult, out: Path, exp: Experiment) -> dict[str, Any]:
    """The allocation's table and heat map beside the row's model; its summary for the row."""
    used = result.sizes.packed_file_bytes - result.sizes.tokenizer_bytes
    summary = {**allocation.to_dict(), "packed_bytes": used}
    write_text_atomic(out.with_name(f"{exp.name}.allocation.json"), json.dumps(summary, indent=1))
    allocation_heatmap(summary["layers"], out.with_name(f"{exp.name}.allocation.png"),
                       f"{exp.name}: {used:,} bytes, {result.sizes.model_compression_ratio:.1f}x")
    return {"choices": describe(allocation.choices()), "budget_bytes": allocation.budget_bytes,
            "search_seconds": round(allocation.search_seconds, 1)}


def refusal(exp: Experiment, adapter: ModelAdapter) -> str | None:
    """Why a row cannot run on this model (a scope that matches none of its modules), or None."""
    try:
        for _, scope in exp.stages:
            adapter.check_scopes(list(scope) if isinstance(scope, tuple) else [scope])
    except UsageError as err:
        return str(err)
    return None


def new_row(exp: Experiment) -> dict[str, Any]:
    return {"name": exp.name, "method": exp.method, "scope": exp.scope, "bits": exp.bits, "sparsity": exp.sparsity}


def model_path(output: Path, exp: Experiment, checkpoint: Path) -> Path:
    out = output / "models" / f"{exp.name}.sfz"
    if out.exists() and out.resolve() == checkpoint.resolve():  # never write over the model being read
        out = out.with_name(f"{out.stem}.repacked{out.suffix}")
    return out


def retrain_config(exp: Experiment, sp: SweepPreset) -> RetrainConfig:
    return RetrainConfig(epochs=exp.retrain_epochs or sp.retrain_epochs, lr=sp.retrain_lr, distill=exp.distill,
                         data=exp.retrain_data,
                         **({"warmup_steps": sp.retrain_warmup} if sp.retrain_warmup is not None else {}))


def baseline_row(row: dict[str, Any], output: Path, exp: Experiment, tests: dict[str, SplitResult],
                 sizes: ModelSizes, started: float) -> dict[str, Any]:
    row.update(_row_scores(tests), params_compressed_share=0.0, **_size_fields(sizes),
               retrain_seconds=0.0, wall_seconds=round(time.perf_counter() - started, 1))
    save_hypotheses(output, exp.name, tests)
    return row


def compressed_row(row: dict[str, Any], output: Path, exp: Experiment, result: CompressionResult) -> dict[str, Any]:
    d = result.to_dict()
    row.update(_row_scores(result.tests), params_compressed_share=d["params_compressed_share"],
               **_size_fields(result.sizes), history=d["history"], retrain_seconds=d["retrain_seconds"],
               wall_seconds=d["wall_seconds"])
    save_hypotheses(output, exp.name, result.tests)
    return row


# The preset settings a row's numbers depend on. Named one by one: a new preset field (or a new
# row) must not invalidate hours of cached rows unless it changes what they compute.
KEYED_SETTINGS = ("train_config", "overrides", "retrain_epochs", "retrain_lr", "train_limit", "valid_limit",
                  "test_splits", "test_limit")


# Settings added later enter the key only when a preset sets them, so existing caches stay valid.
OPTIONAL_KEYED_SETTINGS = ("retrain_warmup",)


def cache_key(exp: Experiment, sp: SweepPreset, base_hash: str) -> str:
    settings = {k: getattr(sp, k) for k in KEYED_SETTINGS}
    settings.update({k: getattr(sp, k) for k in OPTIONAL_KEYED_SETTINGS if getattr(sp, k) is not None})
    return hashlib.sha256(json.dumps({"experiment": exp.spec(), "preset": settings, "baseline": base_hash},
                                     sort_keys=True).encode()).hexdigest()[:16]


def reproduce(preset: str, output: Path, data_dir: str | None = None, baseline: Path | None = None,
              only: list[str] | None = None, commit: str | None = None, cached_only: bool = False) -> dict[str, Any]:
    """Run (or take from the cache) every experiment of the preset; ``commit`` is recorded in the
    rows computed now (cached rows keep the commit they ran with). ``cached_only``: run nothing,
    report the cached rows and list the others as pending (a sweep still running elsewhere)."""
    if preset not in SWEEP_PRESETS:
        raise UsageError(f"unknown sweep preset {preset!r} (known: {', '.join(SWEEP_PRESETS)})")
    sp = SWEEP_PRESETS[preset]
    unknown = sorted(set(only or []) - set(EXPERIMENTS))
    if unknown:
        raise UsageError(f"unknown experiment {unknown[0]!r} (known: {', '.join(EXPERIMENTS)})")
    names = list(sp.rows) + [n for n in only or [] if n not in sp.rows]
    grid = [EXPERIMENTS[n] for n in names if only is None or n in only or n in ("baseline", "control")]
    started = time.perf_counter()
    cache = output / "cache"
    checkpoint = baseline_checkpoint(sp, output, data_dir, baseline)
    adapter = load_adapter(checkpoint, training=True)  # the fingerprint hashes the training form
    cfg, base_hash = adapter.cfg, adapter.fingerprint()
    for exp in list(grid):
        why = refusal(exp, adapter)
        if why:
            log.warning("%s left out: %s", exp.name, why)
            grid.remove(exp)
    del adapter
    if data_dir:
        cfg.data.data_dir = data_dir
    rows, computed = [], []
    bar = tqdm(grid, desc="experiments", unit="exp", disable=None)
    for exp in bar:
        bar.set_postfix_str(exp.name)
        key = cache_key(exp, sp, base_hash)
        cached = cache / f"{exp.name}.json"
        row = cached_row(cached, key)
        if row is not None:
            log.info("%s: cached", exp.name)
        elif cached_only:
            row = {"name": exp.name, "method": exp.method, "scope": exp.scope, "status": "pending"}
        else:
            # A row belongs to the process that runs it. One that only comes along (the baseline and
            # the control beside --only rows) is waited for: row jobs on one cache share them.
            implicit = only is not None and exp.name not in only
            with hold(cache / f"{exp.name}.lock", f"sweep row {exp.name} in {cache}", wait=implicit):
                row = cached_row(cached, key)  # finished by another process while this one waited
                if row is None:
                    row = run_row(exp, sp, checkpoint, data_dir, output, key, commit, cached)
                    computed.append(exp.name)
        rows.append(row)
    add_retention(rows)
    splits = list(sp.test_splits or [cfg.data.test_split])
    log.info("paired bootstrap tests on %s", ", ".join(splits))
    comparisons = compare(rows, splits, lambda split: read_split(cfg, split, sp.test_limit).target,
                          lambda name, split: load_hypotheses(output, name, split))
    settings = {k: getattr(sp, k) for k in KEYED_SETTINGS + OPTIONAL_KEYED_SETTINGS}
    return {"preset": preset, "settings": settings, "rows": rows, "baseline_checkpoint": str(checkpoint),
            "test_splits": splits,
            "comparisons": [c.to_dict() for c in comparisons],
            "sweep_seconds": round(time.perf_counter() - started, 1), "computed_this_run": computed}


def cached_row(path: Path, key: str) -> dict[str, Any] | None:
    """The row cached at ``path`` for exactly this configuration, or None."""
    if not path.exists():
        return None
    entry = json.loads(path.read_text())
    return entry["row"] if entry.get("key") == key else None


def run_row(exp: Experiment, sp: SweepPreset, checkpoint: Path, data_dir: str | None, output: Path, key: str,
            commit: str | None, cached: Path) -> dict[str, Any]:
    """One experiment, cached when it succeeds; a failure is a row saying why (the sweep goes on)."""
    log.info("running %s", exp.name)
    try:
        row = run_experiment(exp, sp, checkpoint, data_dir, output, work_dir(exp, key))
    except (BusyError, OutputError):
        raise  # another process's work, or nowhere to write: the next rows would fail alike
    except Exception as err:
        log.error("%s failed: %s", exp.name, err)
        log.debug("%s", traceback.format_exc())
        return {"name": exp.name, "method": exp.method, "scope": exp.scope, "status": "failed",
                "error": f"{type(err).__name__}: {err}"}
    row.update(status="ok", git_commit=commit)
    write_text_atomic(cached, json.dumps({"key": key, "row": row}, indent=1))
    return row


def add_retention(rows: list[dict[str, Any]]) -> None:
    """BLEU as a share of the baseline's and of the control's, on the primary split and on each."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok" and r.get("bleu") is not None}
    for ref_name, key in (("baseline", "bleu_retention"), ("control", "control_retention")):
        ref = ok.get(ref_name)
        for r in ok.values():
            if ref and ref["bleu"]:
                r[key] = round(r["bleu"] / ref["bleu"], 4)
                for split, t in r.get("tests", {}).items():
                    ref_t = ref.get("tests", {}).get(split)
                    if ref_t and ref_t["bleu"]:
                        t[key] = round(t["bleu"] / ref_t["bleu"], 4)
