"""The compression pipeline: retrain with the compression in the loop, pack, measure, score.

Three steps, each with one job: ``retrain`` (resumable, in ``retrain.py``), ``pack`` (the plain
file and, beside it, the Huffman-coded one; sizes measured from what was written) and ``score``
(beam search on each test split). The result is a ``CompressionResult``, whose fields the CLI, the
sweep and the reports read, and whose ``to_dict`` is what lands in JSON.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..adapters.base import ModelAdapter
from ..config import RunConfig
from ..data.splits import read_split
from ..evaluate.bleu import Scores, score
from ..pack.format import round_dense_to_half
from ..pack.sizes import ModelSizes
from ..train.distributed import World
from .retrain import RetrainConfig, RetrainOutcome, Stage, retrain


@dataclass
class SplitResult:
    """A model's scores on one test split, and the translations they come from."""

    split: str
    scores: Scores
    hypotheses: list[str] = field(repr=False)


def score_splits(adapter: ModelAdapter, splits: Sequence[str], limit: int | None = None,
                 device: Any = "cpu") -> dict[str, SplitResult]:
    """The model's own search (its default beam) on each split; ``limit``: its first N sentences."""
    return score_translations(adapter.translator(device=device).translate, adapter.cfg, splits, limit)


def score_translations(translate: Callable[[list[str]], list[str]], cfg: RunConfig, splits: Sequence[str],
                       limit: int | None = None) -> dict[str, SplitResult]:
    """Any translator's scores on each split (its first ``limit`` sentences)."""
    out = {}
    for split in splits:
        data = read_split(cfg, split, limit)
        hyps = translate(data.source)
        out[split] = SplitResult(split, score(hyps, data.target), hyps)
    return out


@dataclass
class CompressionResult:
    outcome: RetrainOutcome
    sizes: ModelSizes
    packed_file: Path
    huffman_file: Path
    tests: dict[str, SplitResult]  # by split, the model's own test split first
    wall_seconds: float

    @property
    def primary(self) -> SplitResult | None:
        return next(iter(self.tests.values()), None)

    def to_dict(self) -> dict[str, Any]:
        o, s = self.outcome, self.sizes
        d: dict[str, Any] = {
            "modules": o.modules, "compressed_params": o.compressed_params, "total_params": o.total_params,
            "params_compressed_share": round(o.share, 4), "history": o.history,
            "packed_file": str(self.packed_file), "huffman_file": str(self.huffman_file),
            # The names earlier reports used, kept so their readers keep working.
            "packed_bytes": s.packed_file_bytes, "fp32_bytes": s.fp32_file_bytes,
            "scope_fp32_bytes": 4 * s.scope_params, "huffman_packed_bytes": s.huffman_file_bytes,
            "scope_huffman_bytes": s.scope_huffman_bytes, "sizes": s.to_dict(),
            **{k: v for k, v in s.to_dict().items() if k.endswith("_ratio")},
            "scope_packed_bytes": s.scope_packed_bytes,
            "retrain_seconds": o.retrain_seconds, "wall_seconds": round(self.wall_seconds, 1)}
        if self.primary:
            p = self.primary
            d.update(test_split=p.split, bleu=p.scores.bleu, chrf=p.scores.chrf, bleu_signature=p.scores.bleu_signature)
            d["tests"] = {k: r.scores.to_dict() for k, r in self.tests.items()}
        return d


def compress_model(adapter: ModelAdapter, stages: list[Stage], rc: RetrainConfig, output: Path,
                   train_limit: int | None = None, work_dir: Path | None = None, world: World = World(),
                   test_splits: Sequence[str] | None = None, test_limit: int | None = None,
                   half_dense: bool = False) -> CompressionResult | None:
    """Compress and retrain ``adapter.model`` (in place), write ``output`` and ``OUTPUT.huffman.sfz``
    beside it, and score it on ``test_splits`` (default: the model's test split; ``[]`` scores
    nothing). The work directory is removed once the packed file holds everything. ``half_dense``:
    the parameters left uncompressed are rounded to fp16 and stored so. Returns the result on the
    main process, None on the others."""
    started = time.perf_counter()
    outcome = retrain(adapter, stages, rc, train_limit, work_dir, world)
    if not world.is_main:
        return None
    model = adapter.model.eval()
    if half_dense:
        round_dense_to_half(model)  # scored as the file holds it
    extra = {"history": outcome.history}
    packed = adapter.write_packed(output, extra, half_dense=half_dense)
    # Deep Compression's third stage, reported separately from a real file beside the plain one.
    huffman = adapter.write_packed(output.with_name(f"{output.stem}.huffman{output.suffix}"), extra, huffman=True,
                                   half_dense=half_dense)
    sizes = ModelSizes.measure(model, adapter.tokenizer_files(), packed, huffman)
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)  # the packed file now holds everything
    splits = [adapter.cfg.data.test_split] if test_splits is None else list(test_splits)
    tests = score_splits(adapter, splits, test_limit, world.device)
    return CompressionResult(outcome, sizes, packed.path, huffman.path, tests, time.perf_counter() - started)
