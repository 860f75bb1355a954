"""Training: token-count batches, Adam with inverse-sqrt warm-up, label smoothing, validation each
epoch, best/last/averaged checkpoints, early stopping and exact resumption.

Exact resumption rests on three things: the batch order is a function of (seed, epoch); dropout
draws from a generator reseeded from (seed, step, rank) before every step; and ``last.pt`` holds
model, optimizer and progress at an optimizer-step boundary. A run killed at any point and started
again with the same output directory therefore ends with the same weights, bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import RunConfig
from ..data.batching import token_batches
from ..data.splits import Split, read_split
from ..data.tokenizer import Tokenizer
from ..errors import TrainingError
from ..evaluate.bleu import Scores, score
from ..model.transformer import PAD, Transformer
from ..translate import Translator
from ..io import atomic_write
from ..checkpoint import average_checkpoints, load_checkpoint, restore, save_atomic
from .distributed import World
from ..adapters.base import ModelAdapter
from ..adapters.transformer import TransformerAdapter

log = logging.getLogger(__name__)


@dataclass
class Progress:
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # optimizer steps already done in that epoch
    step: int = 0  # optimizer steps done in total
    best_bleu: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    train_seconds: float = 0.0  # optimizer steps only
    wall_seconds: float = 0.0  # steps, validation and checkpointing: what the time budget counts
    target_tokens: int = 0
    finished: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def inverse_sqrt(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then decay with 1/sqrt(step)."""
    step = max(step, 1)
    return peak * min(step / max(warmup, 1), math.sqrt(max(warmup, 1) / step))


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def validate(adapter: ModelAdapter, valid: Split, beam_size: int, batch_tokens: int,
             device: torch.device) -> tuple[float, Scores]:
    """Per-token negative log-likelihood (no smoothing) and BLEU of the decoded validation set."""
    adapter.model.eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for idx in token_batches([max(len(s), len(t)) + 1 for s, t in zip(valid.src, valid.tgt)],
                                 batch_tokens, shuffle=False):
            b = adapter.collate([valid.src[i] for i in idx], [valid.tgt[i] for i in idx], idx).to(device)
            logits = adapter.logits(adapter.model, b)
            nll += float(F.cross_entropy(logits.flatten(0, 1).float(), b.tgt_out.flatten(),
                                         ignore_index=b.pad, reduction="sum"))
            tokens += b.target_tokens
    hyps = adapter.translator(beam_size, device=device).translate(valid.raw.source)
    return nll / max(tokens, 1), score(hyps, valid.raw.target)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      temperature: float, pad: int = PAD) -> torch.Tensor:
    """Summed token-level KL(teacher || student) at ``temperature``, scaled by T^2 (Hinton et al.)."""
    keep = target.ne(pad)
    s = (logits[keep].float() / temperature).log_softmax(-1)
    t = (teacher_logits[keep].float() / temperature).log_softmax(-1)
    return F.kl_div(s, t, log_target=True, reduction="sum") * temperature ** 2


@dataclass
class _Trainer:
    """What one training run needs at every step: the model (wrapped for data parallel when there
    are several processes) and the family that runs it, its optimizer, and the distillation
    teacher if any."""

    adapter: ModelAdapter
    optimizer: torch.optim.Optimizer
    cfg: RunConfig
    world: World
    teacher: torch.nn.Module | None = None
    distill: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.model = self.adapter.model
        self.ddp = DistributedDataParallel(self.model) if self.world.size > 1 else None
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.world.device.type == "cuda")

    def step(self, train: Split, group: list[list[int]], progress: Progress) -> tuple[float, int]:
        """One optimizer step over the micro-batches ``group``; returns (summed loss, target tokens)."""
        t = self.cfg.train
        torch.manual_seed(step_seed(t.seed, progress.step, self.world.rank))
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = inverse_sqrt(progress.step + 1, t.lr, t.warmup_steps)
        micro = [self.adapter.collate([train.src[i] for i in idx], [train.tgt[i] for i in idx], idx)
                 for idx in group]
        step_tokens = sum(b.target_tokens for b in micro)
        loss_sum = 0.0
        for j, b in enumerate(micro):
            b = b.to(self.world.device)
            sync = self.ddp is None or j == len(micro) - 1  # all-reduce gradients once, after the last
            with self.amp, (self.ddp.no_sync() if not sync else contextlib.nullcontext()):
                loss = self.loss(b)
                (loss / step_tokens).backward()
            loss_sum += float(loss.detach())
        if not math.isfinite(loss_sum):
            raise TrainingError(f"loss became {loss_sum} at step {progress.step + 1} (epoch {progress.epoch + 1}); "
                                "lower train.lr or raise train.warmup_steps")
        if t.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, step_tokens

    def loss(self, b: Any) -> torch.Tensor:
        """Summed label-smoothed cross-entropy, mixed with the distillation term when there is a teacher."""
        logits = self.adapter.logits(self.ddp or self.model, b)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), b.tgt_out.flatten(), ignore_index=b.pad,
                               label_smoothing=self.cfg.train.label_smoothing, reduction="sum")
        if self.teacher is not None and self.distill > 0:
            with torch.no_grad():
                teacher_logits = self.adapter.logits(self.teacher, b)
            loss = (1 - self.distill) * loss + self.distill * distillation_loss(logits, teacher_logits, b.tgt_out,
                                                                                self.temperature, b.pad)
        return loss


def fit(adapter: ModelAdapter, cfg: RunConfig, train: Split, valid: Split, output: Path, world: World,
        progress: Progress, optimizer: torch.optim.Optimizer, teacher: torch.nn.Module | None = None,
        distill: float = 0.0, temperature: float = 1.0) -> Progress:
    """The epoch loop over ``adapter.model``, from wherever ``progress`` says the run is; ``cfg.train``
    says how. With a ``teacher``, the loss is (1 - distill) * label-smoothed cross-entropy + distill
    * KL to the teacher's distribution."""
    t = cfg.train
    model = adapter.model
    trainer = _Trainer(adapter, optimizer, cfg, world, teacher, distill, temperature)
    lengths = [max(len(s), len(tg)) + 1 for s, tg in zip(train.src, train.tgt)]

    def checkpoint(**extra: Any) -> dict[str, Any]:
        return adapter.checkpoint(cfg, optimizer=optimizer.state_dict(), progress=asdict(progress), **extra)

    while progress.epoch < t.max_epochs and not progress.finished:
        batches = token_batches(lengths, t.batch_tokens, shuffle=True, seed=t.seed, epoch=progress.epoch)
        per_rank = len(batches) // world.size  # equal step counts keep the processes in lockstep
        mine = batches[world.rank * per_rank:(world.rank + 1) * per_rank]
        steps = [mine[i:i + t.accum_steps] for i in range(0, len(mine), t.accum_steps)]
        bar = tqdm(total=len(steps), initial=progress.batch, desc=f"epoch {progress.epoch + 1}",
                   disable=not world.is_main or None, unit="step", dynamic_ncols=True)
        model.train()
        wall_start = time.perf_counter()
        epoch_start, epoch_tokens = wall_start, 0
        while progress.batch < len(steps):
            loss_sum, step_tokens = trainer.step(train, steps[progress.batch], progress)
            progress.step += 1
            progress.batch += 1
            progress.target_tokens += step_tokens * world.size
            epoch_tokens += step_tokens * world.size
            rate = epoch_tokens / max(time.perf_counter() - epoch_start, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / step_tokens:.3f}", tok_s=f"{rate:,.0f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            bar.update()
            if world.is_main and t.log_every_steps and progress.step % t.log_every_steps == 0:
                log.info("epoch %d step %d loss %.3f tok/s %.0f", progress.epoch + 1, progress.step,
                         loss_sum / step_tokens, rate)
            if t.save_every_steps and progress.step % t.save_every_steps == 0 and progress.batch < len(steps):
                now = time.perf_counter()
                progress.train_seconds += now - epoch_start
                progress.wall_seconds += now - wall_start
                epoch_start = wall_start = now
                if world.is_main:
                    save_atomic(checkpoint(), output / "last.pt")
        bar.close()
        progress.train_seconds += time.perf_counter() - epoch_start
        improved = _end_epoch(adapter, cfg, valid, progress, world, wall_start)
        if world.is_main:
            save_atomic(adapter.checkpoint(cfg), output / f"epoch{progress.epoch:03d}.pt")
            for old in sorted(output.glob("epoch*.pt"))[:-max(t.average_last, 1)]:
                old.unlink()
            if improved:
                save_atomic(adapter.checkpoint(cfg), output / "best.pt")
            save_atomic(checkpoint(), output / "last.pt")  # last: it marks the epoch as done
        world.barrier()
    progress.finished = True
    return progress


def _end_epoch(adapter: ModelAdapter, cfg: RunConfig, valid: Split, progress: Progress, world: World,
               wall_start: float) -> bool:
    """Validate, record the epoch, and decide whether training stops (patience or time budget);
    returns whether validation BLEU improved. ``progress`` moves to the next epoch."""
    t = cfg.train
    valid_nll, valid_scores = validate(adapter, valid, t.valid_beam_size, t.batch_tokens, world.device)
    improved = valid_scores.bleu > progress.best_bleu
    if improved:
        progress.best_bleu, progress.best_epoch, progress.bad_epochs = valid_scores.bleu, progress.epoch, 0
    else:
        progress.bad_epochs += 1
    progress.history.append({"epoch": progress.epoch + 1, "step": progress.step, "valid_nll": round(valid_nll, 4),
                             "valid_bleu": valid_scores.bleu, "train_seconds": round(progress.train_seconds, 1)})
    log.info("epoch %d: valid nll %.3f, BLEU %.2f%s", progress.epoch + 1, valid_nll, valid_scores.bleu,
             " (best)" if improved else f" (best {progress.best_bleu:.2f} at epoch {progress.best_epoch + 1})")
    progress.wall_seconds += time.perf_counter() - wall_start
    epoch_seconds = progress.wall_seconds - progress.history[-2]["wall_seconds"] if len(progress.history) > 1 \
        else progress.wall_seconds
    progress.history[-1]["wall_seconds"] = round(progress.wall_seconds, 1)
    progress.epoch, progress.batch = progress.epoch + 1, 0
    if progress.bad_epochs >= t.patience:
        log.info("no better validation BLEU for %d epochs: stopping", t.patience)
        progress.finished = True
    elif t.max_minutes is not None and progress.wall_seconds + epoch_seconds > t.max_minutes * 60:
        log.info("another epoch would pass the %.0f-minute budget: stopping", t.max_minutes)
        progress.finished = True
    return improved


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=cfg.train.adam_betas,
                            eps=1e-9, weight_decay=cfg.train.weight_decay)


def load_training_state(payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    """Puts a ``last.pt`` payload's weights and optimizer state into ``model`` and ``optimizer``;
    returns where training stood."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    return Progress(**payload["progress"])


def start_or_resume(cfg: RunConfig, output: Path, world: World) -> tuple[RunConfig, Tokenizer, Transformer,
                                                                        torch.optim.Optimizer, Progress]:
    """A fresh run, or the state in ``output/last.pt`` when there is one."""
    last = output / "last.pt"
    if last.exists():
        payload = load_checkpoint(last)
        saved_cfg, tokenizer, model = restore(payload, last)
        cfg.model.vocab_size = saved_cfg.model.vocab_size  # set from the tokenizer at the start
        if saved_cfg.to_dict() != cfg.to_dict():
            log.warning("%s was written with another configuration; resuming with the saved one", last)
        model.to(world.device)
        optimizer = build_optimizer(model, saved_cfg)
        progress = load_training_state(payload, model, optimizer)
        log.info("resuming from %s at epoch %d, step %d", last, progress.epoch + 1, progress.step)
        return saved_cfg, tokenizer, model, optimizer, progress

    torch.manual_seed(cfg.train.seed)
    spm_path = output / "tokenizer.model"
    if world.is_main:
        raw = read_split(cfg, cfg.data.train_split, cfg.data.train_limit)
        tokenizer = Tokenizer.train(raw.source + raw.target, cfg.data.vocab_size)
        with atomic_write(spm_path) as f:
            f.write(tokenizer.model_proto)
    world.barrier()
    tokenizer = Tokenizer(spm_path.read_bytes())
    cfg.model.vocab_size = len(tokenizer)
    model = Transformer(cfg.model).to(world.device)
    return cfg, tokenizer, model, build_optimizer(model, cfg), Progress()


def train(cfg: RunConfig, output: Path, world: World = World()) -> dict[str, Any]:
    """Train (or resume) into ``output``; returns the metrics also written to metrics.json."""
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    cfg, tokenizer, model, optimizer, progress = start_or_resume(cfg, output, world)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s preset, %.2fM parameters, vocabulary %d", cfg.preset, n_params / 1e6, len(tokenizer))
    train_split = Split.encode(read_split(cfg, cfg.data.train_split, cfg.data.train_limit), tokenizer,
                               cfg.data.max_tokens_per_sentence)
    valid = Split.encode(read_split(cfg, cfg.data.valid_split, cfg.data.valid_limit), tokenizer)
    if not progress.finished:
        progress = fit(TransformerAdapter(model, tokenizer, cfg), cfg, train_split, valid, output, world, progress,
                       optimizer)
    metrics = finish(cfg, tokenizer, valid, output, world) if world.is_main else {}
    metrics.update(train_seconds=round(progress.train_seconds, 1), steps=progress.step, epochs=progress.epoch,
                   target_tokens_per_second=round(progress.target_tokens / max(progress.train_seconds, 1e-9), 1),
                   parameters=n_params, history=progress.history,
                   session_wall_seconds=round(time.perf_counter() - started, 1))
    return metrics


def finish(cfg: RunConfig, tokenizer: Tokenizer, valid: Split, output: Path, world: World) -> dict[str, Any]:
    """Choose between the best and the averaged checkpoint on validation BLEU (beam search), write it
    as model.pt, and score it on the test split."""
    candidates = {"best": load_checkpoint(output / "best.pt")}
    epochs = sorted(output.glob("epoch*.pt"))[-cfg.train.average_last:]
    if len(epochs) > 1:
        averaged = load_checkpoint(epochs[-1])
        averaged["model"] = average_checkpoints(epochs)
        candidates[f"average of last {len(epochs)}"] = averaged
    chosen, chosen_bleu, valid_scores = None, -1.0, {}
    for name, payload in candidates.items():
        _, _, model = restore(payload)
        hyps = Translator(model, tokenizer, cfg.decode, device=world.device).translate(valid.raw.source)
        valid_scores[name] = score(hyps, valid.raw.target).bleu
        log.info("validation BLEU of %s checkpoint: %.2f (beam %d)", name, valid_scores[name], cfg.decode.beam_size)
        if valid_scores[name] > chosen_bleu:
            chosen, chosen_bleu = name, valid_scores[name]
    save_atomic(candidates[chosen], output / "model.pt")
    _, _, model = restore(candidates[chosen])
    test = read_split(cfg, cfg.data.test_split)
    test_scores = score(Translator(model, tokenizer, cfg.decode, device=world.device).translate(test.source),
                        test.target)
    log.info("%s %s: %s", cfg.data.test_split, chosen, test_scores)
    return {"test_split": cfg.data.test_split, "bleu": test_scores.bleu, "chrf": test_scores.chrf,
            "bleu_signature": test_scores.bleu_signature, "chrf_signature": test_scores.chrf_signature,
            "beam_size": cfg.decode.beam_size, "checkpoint": chosen, "valid_bleu": valid_scores}
