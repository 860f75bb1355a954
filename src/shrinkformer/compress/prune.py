"""Iterative magnitude pruning (Han et al.): remove the smallest-magnitude share of weights, retrain
with the mask held, raise the share along a schedule. Per layer, or globally across the scope."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import UsageError
from .base import MethodConfig, SparseCodec, register
from .primitives import global_magnitude_masks, magnitude_mask


@dataclass(frozen=True)
class PruneConfig(MethodConfig):
    method: ClassVar[str] = "prune"
    start: float = 0.5
    end: float = 0.5
    steps: int = 1  # pruning rounds from start to end, each followed by retraining
    scope: str = "layer"  # "layer": each layer loses the same share; "global": smallest across the scope

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"sparsity must be in [0, 1), got {name}={getattr(self, name)}")
        if self.end < self.start:
            raise UsageError(f"final sparsity {self.end} is below the starting {self.start}")
        if self.steps < 1:
            raise UsageError(f"pruning steps must be >= 1, got {self.steps}")
        if self.scope not in ("layer", "global"):
            raise UsageError(f"pruning scope must be layer or global, got {self.scope!r}")

    @property
    def schedule(self) -> list[float]:
        if self.steps == 1:
            return [self.end]
        return [self.start + (self.end - self.start) * i / (self.steps - 1) for i in range(self.steps)]


@register(PruneConfig)
def prune_codec(cfg: PruneConfig, weight: Tensor, mask: Tensor | None = None) -> SparseCodec:
    return SparseCodec(weight, magnitude_mask(weight, cfg.schedule[0]))


def set_sparsity(codecs: list[SparseCodec], sparsity: float, scope: str) -> None:
    """Raise every codec's sparsity: masks are recomputed from the current (masked) weights, so
    a pruned weight never comes back."""
    with torch.no_grad():
        weights = [c() for c in codecs]
        masks = (global_magnitude_masks(weights, sparsity) if scope == "global"
                 else [magnitude_mask(w, sparsity) for w in weights])
        for c, m in zip(codecs, masks):
            c.mask.copy_(m & c.mask)
