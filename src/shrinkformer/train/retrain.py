"""Compress a trained model and retrain it with the compression in the loop.

Pruning follows its schedule (prune, retrain, raise the sparsity, retrain ...); a quantizer given
after pruning then clusters the survivors and retrains once more (Deep Compression's order).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compress import PruneConfig, codecs, compress, set_sparsity
from ..config import RunConfig
from ..data.tokenizer import Tokenizer
from ..evaluate.bleu import score
from ..model.transformer import Transformer
from ..pack.format import entropy_code, fp32_size, save_packed
from ..translate import Translator
from .distributed import World
from .loop import Progress, Split, build_optimizer, fit, read_split

log = logging.getLogger(__name__)


@dataclass
class RetrainConfig:
    epochs: int = 2  # per pruning step, and for the quantization stage
    lr: float = 3e-4
    warmup_steps: int = 100
    distill: float = 0.0  # weight of the KL term to the uncompressed model (0 = off)
    temperature: float = 1.0
    evaluate_test: bool = True
    test_limit: int | None = None  # score only the first N test sentences

    def __post_init__(self) -> None:
        from ..errors import UsageError
        if self.epochs < 0:
            raise UsageError(f"retrain epochs must be >= 0, got {self.epochs}")
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"distillation weight must be in [0, 1], got {self.distill}")


@dataclass
class Stage:
    """One compression applied to the model: a method config and where."""

    config: Any
    scopes: list[str] = field(default_factory=lambda: ["all"])
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


def valid_bleu(model: Transformer, tok: Tokenizer, cfg: RunConfig, split: Split) -> float:
    return score(Translator(model, tok, dataclasses.replace(cfg.decode, beam_size=1)).translate(split.raw.source),
                 split.raw.target).bleu


def retrain(model: Transformer, tok: Tokenizer, cfg: RunConfig, stages: list[Stage], rc: RetrainConfig,
            output: Path, train_limit: int | None = None) -> dict[str, Any]:
    """Compress ``model`` in place stage by stage, retraining after each step; write the packed
    file to ``output`` and return the report."""
    started = time.perf_counter()
    run_cfg = copy.deepcopy(cfg)
    run_cfg.train = dataclasses.replace(cfg.train, max_epochs=rc.epochs, lr=rc.lr, warmup_steps=rc.warmup_steps,
                                        patience=10**6, average_last=1, save_every_steps=0, max_minutes=None)
    train = Split.encode(read_split(cfg, cfg.data.train_split, train_limit), tok, cfg.data.max_tokens_per_sentence)
    valid = Split.encode(read_split(cfg, cfg.data.valid_split, cfg.data.valid_limit), tok)
    teacher = copy.deepcopy(model).eval() if rc.distill > 0 else None
    history: list[dict[str, Any]] = [{"stage": "uncompressed", "valid_bleu": valid_bleu(model, tok, cfg, valid)}]
    report: dict[str, Any] = {}
    retrain_seconds = 0.0

    with tempfile.TemporaryDirectory(prefix="shrinkformer-retrain-") as work:
        for stage in stages:
            schedule = stage.config.schedule if isinstance(stage.config, PruneConfig) else [None]
            for i, sparsity in enumerate(schedule):
                if i == 0:
                    r = compress(model, stage.config, stage.scopes, stage.include, stage.exclude)
                    report.update(modules=r.modules, compressed_params=r.compressed_params,
                                  total_params=r.total_params, params_compressed_share=round(r.share, 4))
                    stage_codecs = [codecs(model)[n] for n in r.modules]
                else:
                    set_sparsity(stage_codecs, sparsity, stage.config.scope)
                name = type(stage.config).__name__ + (f"@{sparsity:.2f}" if sparsity is not None else "")
                history.append({"stage": name, "when": "compressed", "valid_bleu": valid_bleu(model, tok, cfg, valid)})
                if rc.epochs:
                    t0 = time.perf_counter()
                    fit(model, tok, run_cfg, train, valid, Path(work), World(), Progress(),
                        build_optimizer(model, run_cfg), teacher=teacher, distill=rc.distill,
                        temperature=rc.temperature)
                    retrain_seconds += time.perf_counter() - t0
                    history.append({"stage": name, "when": "retrained", "valid_bleu": valid_bleu(model, tok, cfg, valid)})
                log.info("%s: validation BLEU %.2f", name, history[-1]["valid_bleu"])

    model.eval()
    packed = save_packed(model, cfg, tok, output, extra={"history": history})
    # Deep Compression's third stage, reported separately from a real file beside the plain one.
    huffman_path = output.with_name(f"{output.stem}.huffman{output.suffix}")
    huffman = save_packed(model, cfg, tok, huffman_path, extra={"history": history}, huffman=True)
    dense = fp32_size(model, tok)
    scope_fp32 = 4 * sum(c.shape.numel() for c in codecs(model).values())
    scope_packed, scope_huffman = _scope_bytes(model), _scope_bytes(model, huffman=True)
    report.update(history=history, packed_bytes=packed, fp32_bytes=dense,
                  compression_ratio=round(dense / packed, 3), scope_fp32_bytes=scope_fp32,
                  scope_packed_bytes=scope_packed, scope_compression_ratio=round(scope_fp32 / max(scope_packed, 1), 3),
                  huffman_file=str(huffman_path), huffman_packed_bytes=huffman,
                  huffman_compression_ratio=round(dense / huffman, 3), scope_huffman_bytes=scope_huffman,
                  huffman_scope_compression_ratio=round(scope_fp32 / max(scope_huffman, 1), 3),
                  retrain_seconds=round(retrain_seconds, 1), wall_seconds=round(time.perf_counter() - started, 1))
    if rc.evaluate_test:
        test = read_split(cfg, cfg.data.test_split, rc.test_limit)
        s = score(Translator(model, tok, cfg.decode).translate(test.source), test.target)
        report.update(test_split=cfg.data.test_split, bleu=s.bleu, chrf=s.chrf, bleu_signature=s.bleu_signature)
    return report


def _scope_bytes(model: torch.nn.Module, huffman: bool = False) -> int:
    """Bytes of the compressed layers' tensors (without file headers)."""
    total = 0
    for codec in codecs(model).values():
        tensors, meta = codec.pack()
        if huffman:
            entropy_code(tensors, meta, codec.shape.numel())
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    return total
