"""Compress a trained model and retrain it with the compression in the loop, resumably.

Pruning follows its schedule (prune, retrain, raise the sparsity, retrain ...); a quantizer given
after pruning then clusters the survivors and retrains once more (Deep Compression's order). Each of
those is a *step*; a stage without a method (the control) is one step of retraining alone.

A work directory holds ``state.pt`` (how many steps are done, the model after the last of them and
the history so far), the input of each later stage, and the training loop's own ``last.pt`` inside
the step in progress. A killed run started again with the same work directory *replays* the
compression structure of the finished steps, loads the saved weights and continues, ending with the
same weights as an uninterrupted run. Under torchrun every process compresses identically
(clustering is deterministic) and the training loop runs data parallel.

Packing the result and scoring it is the pipeline's job (``pipeline.py``), not this module's.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..adapters.base import ModelAdapter
from ..checkpoint import load_checkpoint, save_atomic
from ..compress import PruneConfig, codecs, count_params, set_sparsity
from ..compress.base import Codec, MethodConfig
from ..config import RunConfig
from ..data.splits import Split, read_split
from ..errors import CheckpointError, UsageError
from ..evaluate.bleu import score
from ..io import write_text_atomic
from . import teacher as teacher_data
from ..train.distributed import World
from ..train.loop import Progress, build_optimizer, fit, load_training_state

log = logging.getLogger(__name__)


@dataclass
class RetrainConfig:
    epochs: int = 2  # per pruning step, and for the quantization stage
    lr: float = 3e-4
    warmup_steps: int = 100
    distill: float = 0.0  # weight of the KL term to the uncompressed model (0 = off)
    temperature: float = 1.0
    save_every_steps: int = 200  # a killed retraining loses at most this many optimizer steps
    data: str = "references"  # or "teacher"/"both": sequence-level distillation (teacher.py)
    batch_tokens: int | None = None  # None: the model's own training setting
    keep_best: bool = False  # a retraining that lowers validation BLEU is undone (the step keeps its input)

    def __post_init__(self) -> None:
        teacher_data.check(self.data)
        if self.epochs < 0:
            raise UsageError(f"retrain epochs must be >= 0, got {self.epochs}")
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"distillation weight must be in [0, 1], got {self.distill}")
        if not self.temperature > 0:
            raise UsageError(f"distillation temperature must be positive, got {self.temperature}")
        if self.save_every_steps < 0:
            raise UsageError(f"save_every_steps must be >= 0, got {self.save_every_steps}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise UsageError(f"retraining batch tokens must be >= 1, got {self.batch_tokens}")

    def key(self) -> dict[str, Any]:
        """The settings that shape retraining, for work-directory keys (``data`` and ``batch_tokens``
        only when they are not the default, so directories written before them stay valid)."""
        d = dataclasses.asdict(self)
        if self.data == "references":
            del d["data"]
        for name in ("batch_tokens", "keep_best"):
            if not d[name]:
                del d[name]
        return d


@dataclass
class Stage:
    """One compression applied to the model: a method config and where. ``config=None`` compresses
    nothing: the stage only retrains (the control that separates compression from extra training)."""

    config: MethodConfig | None
    scopes: list[str] = field(default_factory=lambda: ["all"])
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    retrain: bool = True  # False: compress and go straight on to the next stage (one retraining for several)
    epochs: int | None = None  # this stage's retraining epochs, instead of RetrainConfig.epochs

    @property
    def schedule(self) -> list[float | None]:
        return list(self.config.schedule) if isinstance(self.config, PruneConfig) else [None]

    def to_dict(self) -> dict[str, Any]:
        d = {"config": None if self.config is None else self.config.to_dict(), "scopes": self.scopes,
             "include": self.include, "exclude": self.exclude}
        if self.epochs is not None:
            d["epochs"] = self.epochs
        return d if self.retrain else {**d, "retrain": False}  # absent when default: older keys stay valid


@dataclass(frozen=True)
class Step:
    """One compression step of a stage, followed by retraining."""

    stage: int
    position: int  # within the stage: 0 compresses, later ones raise the pruning sparsity
    sparsity: float | None

    def name(self, stages: list[Stage]) -> str:
        config = stages[self.stage].config
        base = "Retrain" if config is None else type(config).__name__
        return base + (f"@{self.sparsity:.2f}" if self.sparsity is not None else "")


def plan(stages: list[Stage]) -> list[Step]:
    return [Step(si, k, sparsity) for si, stage in enumerate(stages) for k, sparsity in enumerate(stage.schedule)]


@dataclass
class RetrainOutcome:
    """What retraining did; the model itself was changed in place."""

    modules: list[str]  # the compressed modules, in model order
    compressed_params: int
    total_params: int
    history: list[dict[str, Any]]  # validation BLEU before, after each compression, after each retraining
    retrain_seconds: float

    @property
    def share(self) -> float:
        return self.compressed_params / max(self.total_params, 1)


def valid_bleu(adapter: ModelAdapter, split: Split, world: World) -> float | None:
    """Greedy validation BLEU, on the main process only (the others would repeat its work)."""
    if not world.is_main:
        return None
    return score(adapter.translator(1, device=world.device).translate(split.raw.source), split.raw.target).bleu


def run_key(adapter: ModelAdapter, stages: list[Stage], rc: RetrainConfig, train_limit: int | None) -> str:
    """What a work directory belongs to: the starting model and everything that shapes retraining."""
    spec = {"stages": [s.to_dict() for s in stages], "retrain": rc.key(), "train_limit": train_limit,
            "data": dataclasses.asdict(adapter.cfg.data), "model": adapter.fingerprint()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def work_directory(path: Path | None) -> Iterator[Path]:
    """``path`` (kept until the caller removes it, so a killed run can resume), or a throwaway one.
    A run that fails before saving anything to resume from leaves no directory behind."""
    if path is None:
        with tempfile.TemporaryDirectory(prefix="shrinkformer-retrain-") as tmp:
            yield Path(tmp)
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created and not any(p.name in ("state.pt", "last.pt") for p in path.rglob("*.pt")):
            shutil.rmtree(path, ignore_errors=True)
        raise


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
        raise _foreign(work)
    return state


def claim(work: Path, key: str, world: World) -> None:
    """Mark ``work`` as this run's before its first step saves anything: a run with other settings
    killed inside its first step leaves only the loop's ``last.pt``, which ``state.pt`` cannot vouch
    for. A directory from before this mark (no ``key`` file) is taken on trust."""
    path = work / "key"
    if path.exists():
        if path.read_text().strip() != key:
            raise _foreign(work)
    elif world.is_main:
        write_text_atomic(path, key + "\n")


def _foreign(work: Path) -> UsageError:
    return UsageError(f"{work} holds the state of another retraining run (other model or settings); "
                      "remove it or choose another --work-dir")


class Compressor:
    """Applies steps to the model, remembering what it compressed (set_sparsity needs the codecs)."""

    def __init__(self, adapter: ModelAdapter, stages: list[Stage]) -> None:
        self.adapter, self.model, self.stages = adapter, adapter.model, stages
        self.modules: list[str] = []
        self.compressed_params = 0
        self._stage_codecs: list[Codec] = []

    def apply(self, step: Step) -> None:
        stage = self.stages[step.stage]
        if stage.config is None:
            return
        if step.position == 0:
            report = self.adapter.compress(stage.config, stage.scopes, stage.include, stage.exclude)
            self.modules = list(codecs(self.model))  # earlier compressions (a packed input's) included
            self.compressed_params = sum(c.shape.numel() for c in codecs(self.model).values())
            self._stage_codecs = [codecs(self.model)[n] for n in report.modules]
        else:
            set_sparsity(self._stage_codecs, step.sparsity, stage.config.scope)


def retrain(adapter: ModelAdapter, stages: list[Stage], rc: RetrainConfig, train_limit: int | None = None,
            work_dir: Path | None = None, world: World = World()) -> RetrainOutcome:
    """Compress ``adapter.model`` in place step by step, retraining after each; resumes from
    ``work_dir``. The same loop for every model family: only the adapter knows which it is."""
    if rc.keep_best and world.size > 1:
        raise UsageError("--keep-best decides on the main process's validation BLEU; run it in one process")
    model, cfg = adapter.model, adapter.cfg
    def run_cfg(epochs: int) -> RunConfig:
        return adapter.retraining_config(
            max_epochs=epochs, lr=rc.lr, warmup_steps=rc.warmup_steps, patience=10**6, average_last=1,
            save_every_steps=rc.save_every_steps, max_minutes=None,
            **({"batch_tokens": rc.batch_tokens} if rc.batch_tokens else {}))

    for stage in stages:  # a scope that matches nothing fails here, before any data is read or written
        if stage.config is not None:
            adapter.check_scopes(stage.scopes, stage.include, stage.exclude)
    key = run_key(adapter, stages, rc, train_limit)
    steps = plan(stages)
    references = read_split(cfg, cfg.data.train_split, train_limit)
    distilled = None if rc.data == "references" else teacher_data.translations(adapter, references.source, world)
    train = adapter.encode(teacher_data.retraining_pairs(rc.data, references, distilled),
                           cfg.data.max_tokens_per_sentence)
    valid = adapter.encode(read_split(cfg, cfg.data.valid_split, adapter.valid_limit))
    teacher = copy.deepcopy(model).eval() if rc.distill > 0 else None
    compressor = Compressor(adapter, stages)
    total_params = count_params(model)

    with work_directory(work_dir) as work:
        state = read_state(work, key)
        claim(work, key, world)
        if state is None:
            state = {"key": key, "done": 0, "retrain_seconds": 0.0,
                     "history": [{"stage": "uncompressed", "valid_bleu": valid_bleu(adapter, valid, world)}]}
        else:
            log.info("resuming the retraining in %s: %d of %d steps done", work, state["done"], len(steps))
            replay(model, compressor, steps, state, work)
        for j in range(state["done"], len(steps)):
            step, name = steps[j], steps[j].name(stages)
            compressor.apply(step)
            step_dir = work / f"step{j}"
            state["history"].append(_compressed_entry(step_dir, name, adapter, valid, world))
            stage = stages[step.stage]
            epochs = rc.epochs if stage.epochs is None else stage.epochs
            if epochs and stage.retrain:
                before = {k: v.detach().clone() for k, v in model.state_dict().items()} if rc.keep_best else None
                state["retrain_seconds"] += fit_step(adapter, run_cfg(epochs), train, valid, step_dir, world, teacher, rc)
                entry = {"stage": name, "when": "retrained", "valid_bleu": valid_bleu(adapter, valid, world)}
                compressed_bleu = state["history"][-1]["valid_bleu"]
                if before is not None and entry["valid_bleu"] < compressed_bleu:
                    log.info("%s: retraining took validation BLEU from %.2f to %.2f; keeping the model before it",
                             name, compressed_bleu, entry["valid_bleu"])
                    model.load_state_dict(before)
                    entry.update(valid_bleu=compressed_bleu, kept="compressed", retrained_bleu=entry["valid_bleu"])
                state["history"].append(entry)
            if world.is_main:
                log.info("%s: validation BLEU %.2f", name, state["history"][-1]["valid_bleu"])
                snapshot = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if j + 1 < len(steps) and steps[j + 1].position == 0:
                    save_atomic(snapshot, work / f"stage{steps[j + 1].stage}.pt")  # what the next stage starts from
                state.update(done=j + 1, model=snapshot)
                save_atomic(state, work / "state.pt")
                shutil.rmtree(step_dir, ignore_errors=True)
            world.barrier()
    return RetrainOutcome(compressor.modules, compressor.compressed_params, total_params, state["history"],
                          round(state["retrain_seconds"], 1))


def replay(model: torch.nn.Module, compressor: Compressor, steps: list[Step], state: dict[str, Any],
            work: Path) -> None:
    """Rebuild the compressed structure of the finished steps, then load their saved weights. A
    quantizer after pruning must see the pruned model its stage began from (its masks decide how
    many indices there are), hence the per-stage inputs."""
    for step in steps[:state["done"]]:
        if step.position == 0 and step.stage > 0:
            model.load_state_dict(torch.load(work / f"stage{step.stage}.pt", map_location="cpu", weights_only=True))
        compressor.apply(step)
    if state["done"]:
        model.load_state_dict(state["model"])


def _compressed_entry(step_dir: Path, name: str, adapter: ModelAdapter, valid: Split,
                      world: World) -> dict[str, Any]:
    """Validation BLEU right after compressing, kept in the step's directory so a resumed step
    does not decode again."""
    path = step_dir / "compressed.json"
    if path.exists():
        return json.loads(path.read_text())
    entry = {"stage": name, "when": "compressed", "valid_bleu": valid_bleu(adapter, valid, world)}
    if world.is_main:
        step_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(entry))
    return entry


def fit_step(adapter: ModelAdapter, cfg: RunConfig, train: Split, valid: Split, step_dir: Path,
             world: World, teacher: torch.nn.Module | None, rc: RetrainConfig) -> float:
    """Retrain for one step, from the training loop's own ``last.pt`` when a killed run left one;
    returns the step's training wall time (counted across resumptions)."""
    step_dir.mkdir(parents=True, exist_ok=True)
    optimizer, progress = build_optimizer(adapter.model, cfg), Progress()
    last = step_dir / "last.pt"
    if last.exists():
        progress = load_training_state(load_checkpoint(last, require=("model", "optimizer", "progress")),
                                       adapter.model, optimizer)
        log.info("resuming this step at epoch %d, step %d", progress.epoch + 1, progress.step)
    if not progress.finished:
        progress = fit(adapter, cfg, train, valid, step_dir, world, progress, optimizer, teacher=teacher,
                       distill=rc.distill, temperature=rc.temperature)
    return progress.wall_seconds
