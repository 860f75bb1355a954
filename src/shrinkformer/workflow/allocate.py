"""Per-layer choices under a byte budget: which sparsity and how many bits each Linear/Embedding
layer gets, so that the packed model fits the budget with the least estimated damage.

Pure tensor and bookkeeping code; where the sensitivities come from (gradients on data) is
``workflow/sensitivity.py``, and turning an allocation into compression stages is ``workflow/budget.py``.

Each layer picks one ``Choice``; its cost is the exact number of bytes its packed tensors take
(indices, codebook, mask, values — what ``Codec.pack`` emits) plus their header entries. Picking
one choice per layer to minimise the summed sensitivity under a total byte budget is a
multiple-choice knapsack, solved exactly on a byte grid by dynamic programming (costs are rounded
*up* to the grid, so a solution on the grid never exceeds the real budget).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from ..compress.base import Codec, SparseCodec, build_codec
from ..compress.binary import BinaryConfig
from ..compress.kmeans import KMeansConfig
from ..compress.kmeans_flex import FlexKMeansConfig
from ..compress.primitives import encode_positions, magnitude_mask
from ..compress.prune import PruneConfig


@dataclass(frozen=True, order=True)
class Choice:
    """What one layer becomes: pruned to ``sparsity`` (0: not pruned), its (surviving) weights
    quantized to ``bits`` (None: kept at full precision). One bit on an unpruned layer is BS-Flex,
    which retrained better than 1-bit k-means in the Multi30k sweep (bsflex-all vs kmeans-1bit-all);
    on a pruned layer it is 1-bit k-means over the survivors (BS-Flex takes no mask). ``row_scale``:
    the codebook is shared over row-normalized weights and each output row keeps a float16 scale
    (``compress.base.RowScaledCodec``), 2 bytes a row."""

    sparsity: float = 0.0
    bits: int | None = None
    row_scale: bool = False

    @property
    def flex(self) -> bool:
        return self.bits == 1 and self.sparsity == 0

    @property
    def label(self) -> str:
        parts = [f"p{round(self.sparsity * 100)}"] if self.sparsity else []
        if self.bits is not None:
            parts.append(("1b-flex" if self.flex else f"{self.bits}b") + ("-rs" if self.row_scale else ""))
        return "+".join(parts) or "dense"

    @property
    def dense(self) -> bool:
        return self.sparsity == 0 and self.bits is None

    def configs(self, flex: bool = False) -> list[Any]:
        """The method configs that make it, in order (prune before quantize). ``flex``: every
        codebook retrains with flexible k-means (re-assigned at each step) instead of frozen
        assignments; an unpruned 1-bit layer is BS-Flex either way."""
        out: list[Any] = [PruneConfig(self.sparsity, self.sparsity, 1)] if self.sparsity else []
        if self.flex:
            out.append(BinaryConfig("flex", self.row_scale))
        elif self.bits is not None:
            out.append(FlexKMeansConfig(self.bits, self.row_scale) if flex
                       else KMeansConfig(self.bits, row_scale=self.row_scale))
        return out

    def codec(self, weight: Tensor, mask: Tensor | None = None) -> Codec | None:
        """The layer's codec (training form) right after compression; None for ``dense``. ``mask``:
        the pruning mask of this sparsity when the caller has it already."""
        codec = None
        for cfg in self.configs():
            if isinstance(cfg, PruneConfig):
                mask = magnitude_mask(weight, cfg.end) if mask is None else mask
                codec = SparseCodec(weight, mask)
            else:
                codec = build_codec(cfg, weight, mask if self.sparsity else None)
        return codec


SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
BITS: tuple[int | None, ...] = (None, 1, 2, 3, 4, 8)
CHOICES = tuple(Choice(s, b) for s in SPARSITIES for b in BITS)
# What ``BudgetConfig(row_scale=True)`` adds: the 1- and 2-bit choices with a scale per row.
ROW_SCALED = tuple(Choice(s, b, True) for s in SPARSITIES for b in (1, 2))


def header_bytes(name: str, tensor: Tensor) -> int:
    """What one tensor adds to the safetensors header, about (offsets written at full width)."""
    entry = {name: {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [10**8, 10**8]}}
    return len(json.dumps(entry, separators=(",", ":")))


def layer_meta_bytes(name: str, meta: dict[str, Any], shape: Sequence[int]) -> int:
    """The layer's entry in the file's JSON metadata (itself a JSON string inside the header, so
    its quotes are escaped: hence the double encoding)."""
    entry = {name: {"shape": list(shape), "kind": "linear", **meta,
                    "made_by": [{"config": {"method": "kmeans", "bits": 8, "init": "linear"},
                                 "scopes": [], "include": [name], "exclude": []}]}}
    return len(json.dumps(json.dumps(entry))) - 2


def survivors_and_mask_bytes(mask: Tensor) -> tuple[int, str, int]:
    """How many weights survive, the encoding ``pack_mask`` picks for ``mask`` and its bytes."""
    bitmask = -(-mask.numel() // 8)
    positions = encode_positions(mask).numel()
    return int(mask.sum()), *(("positions", positions) if positions < bitmask else ("bitmask", bitmask))


def packed_layout(weight: Tensor, choice: Choice, mask: Tensor | None = None,
                  mask_cost: tuple[int, str, int] | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The metadata and the bytes of each tensor that ``Codec.pack`` emits for ``weight`` under a
    compressing ``choice``, worked out from the shapes without packing anything (a test holds the
    two together). ``mask``: the choice's pruning mask when the caller has it, ``mask_cost`` its
    ``survivors_and_mask_bytes``."""
    meta: dict[str, Any] = {}
    parts: dict[str, int] = {}
    count = weight.numel()
    if choice.sparsity:
        if mask_cost is None:
            mask_cost = survivors_and_mask_bytes(magnitude_mask(weight, choice.sparsity) if mask is None else mask)
        count, meta["mask"], parts["mask"] = mask_cost
    if choice.bits is None:
        return {"encoding": "sparse", **meta}, {"values": 4 * count, **parts}
    parts = {"centroids": 4 * 2 ** choice.bits, "index": -(-count * choice.bits // 8), **parts}
    if choice.row_scale:
        parts["row_scale"] = 2 * weight.shape[0]
        meta["row_scale"] = "f16"
    return {"encoding": "codebook", "bits": choice.bits, "count": count, **meta}, parts


def choice_bytes(name: str, weight: Tensor, choice: Choice, half_dense: bool = False,
                 mask: Tensor | None = None, mask_cost: tuple[int, str, int] | None = None) -> int:
    """Bytes the layer's weight takes in the packed file under ``choice``: its tensors, their header
    entries and the layer's metadata (a bias stays what it was and is not counted here)."""
    if choice.dense:
        return weight.numel() * (2 if half_dense else 4) + header_bytes(f"{name}.weight", weight)
    meta, parts = packed_layout(weight, choice, mask, mask_cost)
    steps = len(choice.configs())  # each adds a record to the layer's made_by
    return (sum(b + header_bytes(f"{name}.{k}", torch.empty(b, dtype=torch.uint8)) for k, b in parts.items())
            + layer_meta_bytes(name, meta, weight.shape) + 120 * (steps - 1))


@dataclass
class LayerAllocation:
    name: str
    shape: tuple[int, ...]
    choice: Choice
    bytes: int  # packed bytes of this layer's weight under the choice
    sensitivity: float  # estimated loss increase of the choice alone

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / max(int(np.prod(self.shape)), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "choice": self.choice.label,
                "sparsity": self.choice.sparsity, "bits": self.choice.bits,
                **({"row_scale": True} if self.choice.row_scale else {}), "bytes": self.bytes,
                "bits_per_weight": round(self.bits_per_weight, 3), "sensitivity": self.sensitivity}


@dataclass
class Allocation:
    """The chosen setting of every candidate layer, and the bytes it adds up to."""

    layers: list[LayerAllocation]
    budget_bytes: int  # for the whole packed model without its tokenizer
    fixed_bytes: int  # what no choice changes: biases, norms, headers, metadata
    params: int  # every parameter of the model
    sensitivity_method: str
    search_seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def estimated_bytes(self) -> int:
        return self.fixed_bytes + sum(layer.bytes for layer in self.layers)

    @property
    def estimated_ratio(self) -> float:
        return 4 * self.params / self.estimated_bytes

    def choices(self) -> dict[str, Choice]:
        return {layer.name: layer.choice for layer in self.layers}

    def sensitivities(self) -> dict[str, float]:
        return {layer.name: layer.sensitivity for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {"budget_bytes": self.budget_bytes, "fixed_bytes": self.fixed_bytes, "params": self.params,
                "estimated_bytes": self.estimated_bytes, "estimated_ratio": round(self.estimated_ratio, 3),
                "target_ratio": round(4 * self.params / self.budget_bytes, 3),
                "sensitivity_method": self.sensitivity_method, "search_seconds": round(self.search_seconds, 1),
                **self.notes, "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Allocation":
        layers = [LayerAllocation(x["name"], tuple(x["shape"]), Choice(x["sparsity"], x["bits"], x.get("row_scale", False)),
                                  x["bytes"], x["sensitivity"]) for x in d["layers"]]
        known = {"budget_bytes", "fixed_bytes", "params", "estimated_bytes", "estimated_ratio", "target_ratio",
                 "sensitivity_method", "search_seconds", "layers"}
        return cls(layers, d["budget_bytes"], d["fixed_bytes"], d["params"], d["sensitivity_method"],
                   d.get("search_seconds", 0.0), {k: v for k, v in d.items() if k not in known})

    def table(self) -> str:
        """A plain-text table, one line per layer."""
        width = max(len(layer.name) for layer in self.layers)
        lines = [f"{'layer':<{width}}  {'choice':>9}  {'bits/w':>6}  {'bytes':>9}  sensitivity"]
        for layer in self.layers:
            lines.append(f"{layer.name:<{width}}  {layer.choice.label:>9}  {layer.bits_per_weight:6.2f}  "
                         f"{layer.bytes:9,}  {layer.sensitivity:.3g}")
        lines.append(f"{'fixed (biases, norms, headers)':<{width}}  {'':>9}  {'':>6}  {self.fixed_bytes:9,}")
        lines.append(f"{'total':<{width}}  {'':>9}  {'':>6}  {self.estimated_bytes:9,}  "
                     f"(budget {self.budget_bytes:,}; {self.estimated_ratio:.2f}x)")
        return "\n".join(lines)


def smallest_bytes(costs: dict[str, dict[Choice, int]], fixed: int) -> int:
    return fixed + sum(min(c.values()) for c in costs.values())


def solve(costs: dict[str, dict[Choice, int]], sensitivity: dict[str, dict[Choice, float]], budget: int,
          grid: int = 8000) -> dict[str, Choice]:
    """One choice per layer minimising the summed sensitivity with summed cost <= ``budget``.

    Exact on a grid of ``budget / grid`` bytes: costs are rounded up to it, so the answer always
    fits, and loses at most one grid step per layer (~0.6% of the budget for 49 layers at the
    default). A budget that fits only without that loss is solved again on finer grids, down to
    single bytes."""
    while True:
        found = _solve_on_grid(costs, sensitivity, budget, grid)
        if found is not None:
            return found
        if grid >= budget:
            raise UsageError("no allocation fits the budget")  # callers check the smallest size first
        grid = min(budget, grid * 8)


def _solve_on_grid(costs: dict[str, dict[Choice, int]], sensitivity: dict[str, dict[Choice, float]], budget: int,
                   grid: int) -> dict[str, Choice] | None:
    names = list(costs)
    unit = max(1, -(-budget // grid))
    cap = budget // unit
    best = np.zeros(cap + 1)  # best[b]: least summed sensitivity of the layers so far within b units
    picks: list[np.ndarray] = []
    for name in names:
        new = np.full(cap + 1, np.inf)
        pick = np.full(cap + 1, -1, dtype=np.int8)
        for i, choice in enumerate(costs[name]):
            c = -(-costs[name][choice] // unit)
            if c > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c:] = best[:cap + 1 - c] + sensitivity[name][choice]
            better = cand < new
            new[better], pick[better] = cand[better], i
        best = new
        picks.append(pick)
    if not np.isfinite(best[cap]):
        return None
    out: dict[str, Choice] = {}
    b = cap
    for name, pick in zip(reversed(names), reversed(picks)):
        choice = list(costs[name])[int(pick[b])]
        out[name] = choice
        b -= -(-costs[name][choice] // unit)
    return {name: out[name] for name in names}


def describe(choices: dict[str, Choice]) -> dict[str, int]:
    """How many layers took each choice, most common first."""
    counts: dict[str, int] = {}
    for c in choices.values():
        counts[c.label] = counts.get(c.label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
