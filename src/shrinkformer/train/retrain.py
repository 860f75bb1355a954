"""Compress a trained model and retrain it with the compression in the loop.

Pruning follows its schedule (prune, retrain, raise the sparsity, retrain ...); a quantizer given
after pruning then clusters the survivors and retrains once more (Deep Compression's order).

Each of those steps is resumable. A work directory holds ``state.pt`` (the model after the last
finished step, with the history so far), the input of each later stage, and the training loop's
own ``last.pt`` inside the step in progress; a killed run started again with the same work
directory replays the compression structure, loads the saved state and continues, ending with the
same weights as an uninterrupted run. Under torchrun every process compresses identically
(clustering is deterministic) and the training loop runs data parallel.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..compress import PruneConfig, codecs, compress, set_sparsity
from ..config import RunConfig
from ..data.tokenizer import Tokenizer
from ..errors import CheckpointError, UsageError
from ..evaluate.bleu import score
from ..io import write_text_atomic
from ..model.transformer import Transformer
from ..pack.format import entropy_code, fp32_size, save_packed
from ..translate import Translator
from .checkpoint import load_checkpoint, model_fingerprint, save_atomic
from .distributed import World
from .loop import Progress, Split, build_optimizer, fit, load_training_state, read_split

log = logging.getLogger(__name__)


@dataclass
class RetrainConfig:
    epochs: int = 2  # per pruning step, and for the quantization stage
    lr: float = 3e-4
    warmup_steps: int = 100
    distill: float = 0.0  # weight of the KL term to the uncompressed model (0 = off)
    temperature: float = 1.0
    save_every_steps: int = 200  # a killed retraining loses at most this many optimizer steps
    evaluate_test: bool = True
    test_limit: int | None = None  # score only the first N test sentences

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise UsageError(f"retrain epochs must be >= 0, got {self.epochs}")
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"distillation weight must be in [0, 1], got {self.distill}")
        if self.save_every_steps < 0:
            raise UsageError(f"save_every_steps must be >= 0, got {self.save_every_steps}")


@dataclass
class Stage:
    """One compression applied to the model: a method config and where."""

    config: Any
    scopes: list[str] = field(default_factory=lambda: ["all"])
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @property
    def schedule(self) -> list[float | None]:
        return list(self.config.schedule) if isinstance(self.config, PruneConfig) else [None]


def valid_bleu(model: Transformer, tok: Tokenizer, cfg: RunConfig, split: Split, world: World) -> float | None:
    """Greedy validation BLEU, on the main process only (the others would repeat its work)."""
    if not world.is_main:
        return None
    search = dataclasses.replace(cfg.decode, beam_size=1)
    return score(Translator(model, tok, search, device=world.device).translate(split.raw.source),
                 split.raw.target).bleu


def run_key(model: torch.nn.Module, tok: Tokenizer, cfg: RunConfig, stages: list[Stage], rc: RetrainConfig,
            train_limit: int | None) -> str:
    """What a work directory belongs to: the starting model and everything that shapes retraining."""
    settings = {k: v for k, v in dataclasses.asdict(rc).items() if k not in ("evaluate_test", "test_limit")}
    spec = {"stages": [repr(s) for s in stages], "retrain": settings, "train_limit": train_limit,
            "data": dataclasses.asdict(cfg.data), "model": model_fingerprint(cfg, tok, model)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def work_directory(path: Path | None) -> Iterator[Path]:
    """``path`` (kept until the run succeeds, so a killed run can resume), or a throwaway one."""
    if path is None:
        with tempfile.TemporaryDirectory(prefix="shrinkformer-retrain-") as tmp:
            yield Path(tmp)
        return
    path.mkdir(parents=True, exist_ok=True)
    yield path


def read_state(work: Path, key: str) -> dict[str, Any] | None:
    path = work / "state.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: say where, don't guess
        raise CheckpointError(f"{path}: unreadable retraining state ({type(err).__name__}); "
                              "remove the work directory to start over") from None
    if state.get("key") != key:
        raise UsageError(f"{work} holds the state of another retraining run (other model or settings); "
                         "remove it or choose another --work-dir")
    return state


def retrain(model: Transformer, tok: Tokenizer, cfg: RunConfig, stages: list[Stage], rc: RetrainConfig,
            output: Path, train_limit: int | None = None, work_dir: Path | None = None,
            world: World = World()) -> dict[str, Any]:
    """Compress ``model`` in place stage by stage, retraining after each step; write the packed
    file to ``output`` and return the report (on the main process; the others return {})."""
    started = time.perf_counter()
    run_cfg = copy.deepcopy(cfg)
    run_cfg.train = dataclasses.replace(cfg.train, max_epochs=rc.epochs, lr=rc.lr, warmup_steps=rc.warmup_steps,
                                        patience=10**6, average_last=1, save_every_steps=rc.save_every_steps,
                                        max_minutes=None)
    train = Split.encode(read_split(cfg, cfg.data.train_split, train_limit), tok, cfg.data.max_tokens_per_sentence)
    valid = Split.encode(read_split(cfg, cfg.data.valid_split, cfg.data.valid_limit), tok)
    teacher = copy.deepcopy(model).eval() if rc.distill > 0 else None
    key = run_key(model, tok, cfg, stages, rc, train_limit)
    steps = [(si, k, sparsity) for si, stage in enumerate(stages) for k, sparsity in enumerate(stage.schedule)]

    with work_directory(work_dir) as work:
        state = read_state(work, key)
        if state is None:
            state = {"key": key, "done": 0, "retrain_seconds": 0.0, "report": {},
                     "history": [{"stage": "uncompressed", "valid_bleu": valid_bleu(model, tok, cfg, valid, world)}]}
        else:
            log.info("resuming the retraining in %s: %d of %d steps done", work, state["done"], len(steps))
        history, report = state["history"], state["report"]
        resumed_done = state["done"]
        for j, (si, k, sparsity) in enumerate(steps):
            stage = stages[si]
            # Rebuild the structure of finished steps; their weights come from the saved state. A
            # quantizer after pruning must see the pruned model its stage began from (its masks
            # decide how many indices there are), hence the per-stage inputs.
            if j == state["done"] and j > 0:
                model.load_state_dict(state["model"])
            elif k == 0 and si > 0 and j < state["done"]:
                model.load_state_dict(torch.load(work / f"stage{si}.pt", map_location="cpu", weights_only=True))
            if k == 0:
                r = compress(model, stage.config, stage.scopes, stage.include, stage.exclude)
                report.update(modules=r.modules, compressed_params=r.compressed_params,
                              total_params=r.total_params, params_compressed_share=round(r.share, 4))
                stage_codecs = [codecs(model)[n] for n in r.modules]
            else:
                set_sparsity(stage_codecs, sparsity, stage.config.scope)
            if j < state["done"]:
                continue
            name = type(stage.config).__name__ + (f"@{sparsity:.2f}" if sparsity is not None else "")
            step_dir = work / f"step{j}"
            entry_path = step_dir / "compressed.json"
            if entry_path.exists():
                history.append(json.loads(entry_path.read_text()))
            else:
                history.append({"stage": name, "when": "compressed", "valid_bleu": valid_bleu(model, tok, cfg, valid, world)})
                if world.is_main:
                    step_dir.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(entry_path, json.dumps(history[-1]))
            if rc.epochs:
                seconds = _fit_step(model, tok, run_cfg, train, valid, step_dir, world, teacher, rc)
                state["retrain_seconds"] += seconds
                history.append({"stage": name, "when": "retrained", "valid_bleu": valid_bleu(model, tok, cfg, valid, world)})
            if world.is_main:
                log.info("%s: validation BLEU %.2f", name, history[-1]["valid_bleu"])
                snapshot = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if j + 1 < len(steps) and steps[j + 1][1] == 0:
                    save_atomic(snapshot, work / f"stage{steps[j + 1][0]}.pt")
                state.update(done=j + 1, model=snapshot)
                save_atomic(state, work / "state.pt")
                shutil.rmtree(step_dir, ignore_errors=True)
            world.barrier()
        if resumed_done == len(steps) and steps:  # killed after the last step, before the packed file
            model.load_state_dict(state["model"])
        retrain_seconds = state["retrain_seconds"]

    if not world.is_main:
        return {}
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
        s = score(Translator(model, tok, cfg.decode, device=world.device).translate(test.source), test.target)
        report.update(test_split=cfg.data.test_split, bleu=s.bleu, chrf=s.chrf, bleu_signature=s.bleu_signature)
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)  # the packed file now holds everything
    return report


def _fit_step(model: Transformer, tok: Tokenizer, cfg: RunConfig, train: Split, valid: Split, step_dir: Path,
              world: World, teacher: torch.nn.Module | None, rc: RetrainConfig) -> float:
    """Retrain for one step, from the training loop's own ``last.pt`` when a killed run left one;
    returns the step's training wall time (counted across resumptions)."""
    step_dir.mkdir(parents=True, exist_ok=True)
    optimizer, progress = build_optimizer(model, cfg), Progress()
    last = step_dir / "last.pt"
    if last.exists():
        progress = load_training_state(load_checkpoint(last), model, optimizer)
        log.info("resuming this step at epoch %d, step %d", progress.epoch + 1, progress.step)
    if not progress.finished:
        progress = fit(model, tok, cfg, train, valid, step_dir, world, progress, optimizer,
                       teacher=teacher, distill=rc.distill, temperature=rc.temperature)
    return progress.wall_seconds


def _scope_bytes(model: torch.nn.Module, huffman: bool = False) -> int:
    """Bytes of the compressed layers' tensors (without file headers)."""
    total = 0
    for codec in codecs(model).values():
        tensors, meta = codec.pack()
        if huffman:
            entropy_code(tensors, meta, codec.shape.numel())
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    return total
