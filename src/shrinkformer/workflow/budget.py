"""Budgeted compression: from a byte budget (or a target ratio) to per-layer choices to stages.

1. Estimate every candidate layer's sensitivity to every choice (``sensitivity.py``) and price each
   choice in exact packed bytes (``workflow/allocate.py``).
2. Solve the multiple-choice knapsack for the bytes left after what no choice changes.
3. Check the answer by packing the compressed model in memory, exactly as the file will be written
   (headers and metadata included); if it overshoots, tighten and solve again.
4. Hand back an ``Allocation``; ``allocation_stages`` turns it into compression stages (prune,
   then quantize, then one retraining) for the ordinary retraining pipeline.

The allocation is saved in the work directory, so a resumed run does not search again.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from ..compress import BinaryConfig, KMeansConfig, PruneConfig, codecs, compress, count_params
from .allocate import CHOICES, ROW_SCALED, Allocation, Choice, LayerAllocation, choice_bytes, smallest_bytes, solve
from ..compress.kmeans_flex import FlexKMeansConfig
from ..adapters.base import ModelAdapter
from ..data.splits import read_split
from ..errors import UsageError
from ..io import write_text_atomic
from .retrain import Stage, plan
from .sensitivity import METHODS, LossBatch, price

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetConfig:
    """What ``compress --budget-bytes/--target-ratio`` asks for. The budget covers every parameter
    as packed (headers, codebooks, masks, metadata), not the tokenizer."""

    budget_bytes: int | None = None
    target_ratio: float | None = None
    sensitivity: str = "fisher"  # or "loss"
    sentences: int = 500  # training pairs the sensitivity is estimated on
    batch_tokens: int = 1024
    half_dense: bool = True  # biases, norms and dense layers in fp16 (see the README for what it costs)
    flex: bool = False  # retrain the codebooks with flexible k-means (kmeans_flex.py); the search is the same
    staged: bool = False  # retrain after each kind of compression (pruning, k-means, binarization), not once
    gradual: bool = False  # reach high sparsities in retrained steps from 50% (GRADUAL_FROM), not in one cut
    row_scale: bool = False  # offer the 1- and 2-bit choices with a scale per output row too (ROW_SCALED)
    final_epochs: int | None = None  # the last retraining's epochs (after the quantization), if not the others'
    binary_steps: int = 1  # binarize the BS-Flex layers in this many groups, each retrained (most sensitive first)
    choices: tuple[Choice, ...] = field(default=CHOICES, repr=False)

    def __post_init__(self) -> None:
        if (self.budget_bytes is None) == (self.target_ratio is None):
            raise UsageError("give exactly one of --budget-bytes and --target-ratio")
        if self.target_ratio is not None and not self.target_ratio > 1:
            raise UsageError(f"--target-ratio must be above 1, got {self.target_ratio}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise UsageError(f"--budget-bytes must be positive, got {self.budget_bytes}")
        if self.sensitivity not in METHODS:
            raise UsageError(f"unknown sensitivity estimate {self.sensitivity!r} (known: {', '.join(METHODS)})")
        if self.sentences < 1:
            raise UsageError(f"sensitivity sentences must be >= 1, got {self.sentences}")
        if self.final_epochs is not None and self.final_epochs < 1:
            raise UsageError(f"--final-epochs must be >= 1, got {self.final_epochs}")
        if self.binary_steps < 1:
            raise UsageError(f"--binary-steps must be >= 1, got {self.binary_steps}")

    @property
    def candidates(self) -> tuple[Choice, ...]:
        """The choices each layer picks from."""
        return self.choices + (ROW_SCALED if self.row_scale else ())

    def budget(self, params: int) -> int:
        """Bytes allowed for a model of ``params`` parameters."""
        return self.budget_bytes if self.budget_bytes is not None else int(4 * params / self.target_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {"budget_bytes": self.budget_bytes, "target_ratio": self.target_ratio,
                "sensitivity": self.sensitivity, "sentences": self.sentences, "batch_tokens": self.batch_tokens,
                "half_dense": self.half_dense, "choices": [c.label for c in self.candidates],
                **({"flex": True} if self.flex else {}),  # absent when off: keys saved before them stay valid
                **({"staged": True} if self.staged else {}),
                **({"gradual": True} if self.gradual else {}),
                **({"row_scale": True} if self.row_scale else {}),
                **({"final_epochs": self.final_epochs} if self.final_epochs is not None else {}),
                **({"binary_steps": self.binary_steps} if self.binary_steps > 1 else {})}

    def stages(self, choices: dict[str, Choice], sensitivity: dict[str, float] | None = None) -> list[Stage]:
        """The retraining stages that compress a model as ``choices`` say, retrained as asked;
        ``sensitivity`` (each layer's estimate for its choice) orders stepped binarization."""
        stages = allocation_stages(choices, self.flex, self.staged, self.gradual, self.binary_steps, sensitivity)
        if stages and self.final_epochs is not None:
            stages[-1].epochs = self.final_epochs
        return stages


GRADUAL_FROM = 0.5  # ``gradual``: where the sparsity steps start, retraining after each
GRADUAL_ABOVE = 0.8  # ``gradual``: sparsities at or above this are reached in steps
GRADUAL_STEPS = 3


def allocation_stages(choices: dict[str, Choice], flex: bool = False, staged: bool = False,
                      gradual: bool = False, binary_steps: int = 1,
                      sensitivity: dict[str, float] | None = None) -> list[Stage]:
    """Prune (one stage per sparsity), then quantize (one per method), retraining once at the end:
    every layer named by itself, so each layer's record says exactly what made it. ``flex``: the
    codebooks retrain with flexible k-means (``Choice.configs``). ``staged``: retrain after the
    pruning, after the k-means and after the binarization (Deep Compression's prune, retrain,
    quantize, retrain), so that each retraining starts from one kind of damage, not from all of it.
    ``gradual``: a sparsity of 80% or more is reached as iterative magnitude pruning reaches it (the
    study's 50 -> 80%): from 50% in three steps, each retrained; the rest as without it.
    ``binary_steps``: the BS-Flex layers are binarized a group at a time, each group retrained,
    as INQ quantizes a share of the weights at a time: at 25-32x binarizing 24-29 layers at once
    took validation BLEU from 34 to 13 (and from 29 to 2). The most sensitive layers go first, so
    that the layers still in float can compensate for them (INQ's order: the largest weights first);
    without ``sensitivity`` the groups follow the model's order."""
    stages: list[Stage] = []
    by_config: dict[Any, list[str]] = {}
    for name, choice in choices.items():
        for cfg in choice.configs(flex):
            by_config.setdefault(cfg, []).append(name)
    prunes = sorted((c for c in by_config if isinstance(c, PruneConfig)), key=lambda c: c.end)
    quants = sorted((c for c in by_config if isinstance(c, (KMeansConfig, FlexKMeansConfig))),
                    key=lambda c: (c.bits, c.method))
    binaries = [c for c in by_config if isinstance(c, BinaryConfig)]
    for group in (prunes, quants, binaries):
        for cfg in group:
            if isinstance(cfg, BinaryConfig) and binary_steps > 1:
                for names in binary_groups(by_config[cfg], binary_steps, sensitivity or {}):
                    stages.append(Stage(cfg, scopes=[], include=names, retrain=True))
                continue
            steps = gradual and isinstance(cfg, PruneConfig) and cfg.end >= GRADUAL_ABOVE
            stages.append(Stage(replace(cfg, start=GRADUAL_FROM, steps=GRADUAL_STEPS) if steps else cfg, scopes=[],
                                include=by_config[cfg], retrain=steps))
        if staged and group:
            stages[-1].retrain = True
    if stages:
        stages[-1].retrain = True
    return stages


def binary_groups(names: list[str], steps: int, sensitivity: dict[str, float]) -> list[list[str]]:
    """``names`` in ``steps`` groups of near-equal size, the most sensitive first (ties, and layers
    without an estimate, in model order); each group in model order."""
    ranked = sorted(range(len(names)), key=lambda i: (-sensitivity.get(names[i], 0.0), i))
    size, extra = divmod(len(ranked), steps)
    groups, at = [], 0
    for g in range(min(steps, len(ranked))):
        take = size + (g < extra)
        groups.append([names[i] for i in sorted(ranked[at:at + take])])
        at += take
    return [g for g in groups if g]


def history_placeholder(stages: list[Stage]) -> list[dict[str, Any]]:
    """The history a retrained file will carry, with placeholder figures: sizing a file before
    retraining must count its metadata too."""
    entries = [{"stage": "uncompressed", "valid_bleu": 100.0}]
    for step in plan(stages):
        name = step.name(stages)
        entries.append({"stage": name, "when": "compressed", "valid_bleu": 100.0})
        if stages[step.stage].retrain:
            entries.append({"stage": name, "when": "retrained", "valid_bleu": 100.0})
    return entries


def compressed_copy(model: nn.Module, choices: dict[str, Choice], bc: BudgetConfig) -> tuple[nn.Module, list[Stage]]:
    """A copy of ``model`` compressed as ``choices`` say, no retraining (no retraining changes a
    size), and the stages that did it (as ``bc`` retrains them: their retrainings are in the file's
    history). A gradual stage's last step is what counts: its masks are the final ones."""
    trial = copy.deepcopy(model)
    stages = bc.stages(choices)
    logging.disable(logging.INFO)
    try:
        for s in stages:
            cfg = replace(s.config, start=s.config.end, steps=1) if isinstance(s.config, PruneConfig) else s.config
            compress(trial, cfg, s.scopes, s.include, s.exclude)
    finally:
        logging.disable(logging.NOTSET)
    return trial, stages


def packed_model_bytes(adapter: ModelAdapter, choices: dict[str, Choice], bc: BudgetConfig) -> int:
    """The packed file's bytes without the tokenizer, for the model compressed as ``choices`` say."""
    trial, stages = compressed_copy(adapter.model, choices, bc)
    data, _, tokenizer_bytes = adapter.with_model(trial).encode_packed({"history": history_placeholder(stages)},
                                                                       half_dense=bc.half_dense)
    return len(data) - tokenizer_bytes


SLACK_BYTES = 64  # what the history's real numbers may add over the placeholder's
# A gradual stage chooses its last mask after retraining, so its gap-coded positions may need more
# escape bytes (one per gap over 255) than the dry run's mask did: the 13 layers the Multi30k 25x
# allocation prunes to 95% have 4 escape bytes in all, 4 fewer with noise of 0.3 std on the weights.
GRADUAL_SLACK_BYTES = 256


def slack_bytes(bc: BudgetConfig) -> int:
    return SLACK_BYTES + (GRADUAL_SLACK_BYTES if bc.gradual else 0)


def plan_allocation(adapter: ModelAdapter, bc: BudgetConfig, train_limit: int | None = None) -> Allocation:
    """The allocation for a model: its family's candidate weights, the sensitivity estimated on
    the first training pairs."""
    cfg = adapter.cfg

    def batches() -> tuple[list[LossBatch], int]:
        pairs = read_split(cfg, cfg.data.train_split, min(bc.sentences, train_limit or bc.sentences))
        split = adapter.encode(pairs, cfg.data.max_tokens_per_sentence)
        return adapter.loss_batches(split, bc.sentences, bc.batch_tokens), min(bc.sentences, len(split.src))

    return allocate(adapter.model, adapter.candidates(), bc, batches,
                    lambda choices: packed_model_bytes(adapter, choices, bc))


def allocate(model: nn.Module, weights: dict[str, Tensor], bc: BudgetConfig,
             batches: Callable[[], tuple[list[LossBatch], int]],
             packed_bytes: Callable[[dict[str, Choice]], int]) -> Allocation:
    """Price every choice of every candidate weight, check the budget is reachable, estimate
    sensitivities on ``batches()`` (the batches and how many sentences they hold; read only once
    the budget is known to be reachable), solve, and check the answer with ``packed_bytes(choices)``
    (the packed file's bytes without the tokenizer) — steps 1-3 of the module's description."""
    started = time.perf_counter()
    if codecs(model):
        raise UsageError("budgeted compression starts from an uncompressed model; this one is compressed already")
    params = count_params(model)
    budget = bc.budget(params)
    # What no choice changes: the model packed with every candidate dense, less those weights.
    fixed = packed_bytes({}) - sum(choice_bytes(name, w, Choice(), bc.half_dense) for name, w in weights.items())
    log.debug("fixed bytes (biases, norms, headers, metadata): %d", fixed)
    costs, masks = price(weights, bc.candidates, bc.half_dense)
    smallest = smallest_bytes(costs, fixed)
    if budget < smallest:
        raise UsageError(f"a budget of {budget:,} bytes ({4 * params / budget:.1f}x) is below the smallest model "
                         f"these choices reach: {smallest:,} bytes ({4 * params / smallest:.1f}x), of which {fixed:,} "
                         f"are what no choice compresses (biases, norms, headers{uncompressible(model, weights)})")
    sample, sentences = batches()
    sens = METHODS[bc.sensitivity](model, weights, sample, bc.candidates, masks)

    slack = slack_bytes(bc)
    target = budget - fixed - slack
    for attempt in range(6):
        choices = solve(costs, sens, target)
        actual = packed_bytes(choices) + slack
        log.info("allocation try %d: %d bytes packed for a budget of %d", attempt + 1, actual, budget)
        if actual <= budget:
            break
        target -= actual - budget + 16
    else:
        raise UsageError(f"no allocation found within {budget:,} bytes after 6 tries (last {actual:,})")
    layers = [LayerAllocation(name, tuple(weights[name].shape), c, costs[name][c], sens[name][c])
              for name, c in choices.items()]
    return Allocation(layers, budget, actual - slack - sum(costs[n][c] for n, c in choices.items()), params,
                      bc.sensitivity, time.perf_counter() - started,
                      {"checked_bytes": actual - slack, "half_dense": bc.half_dense,
                       "sensitivity_sentences": sentences})


def uncompressible(model: nn.Module, weights: dict[str, Tensor]) -> str:
    """The weight matrices outside the candidates (a Hugging Face model's tied embeddings), named
    with their share of the parameters: what sets a budget's floor besides the small tensors."""
    candidates = {id(w) for w in weights.values()}
    left = [(n, p.numel()) for n, p in model.named_parameters() if p.dim() == 2 and id(p) not in candidates]
    if not left:
        return ""
    share = sum(k for _, k in left) / max(count_params(model), 1)
    return f", and {', '.join(n for n, _ in left[:3])}{' ...' if len(left) > 3 else ''}: {share:.0%} of the parameters"


def load_or_plan(adapter: ModelAdapter, bc: BudgetConfig, work: Path, train_limit: int | None = None) -> Allocation:
    """The allocation saved in ``work`` for these settings, or a new one (then saved there)."""
    path = work / "allocation.json"
    key = json.dumps({"budget": bc.to_dict(), "train_limit": train_limit}, sort_keys=True)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            log.info("allocation taken from %s", path)
            return Allocation.from_dict(saved["allocation"])
    alloc = plan_allocation(adapter, bc, train_limit)
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"key": key, "allocation": alloc.to_dict()}))
    return alloc
