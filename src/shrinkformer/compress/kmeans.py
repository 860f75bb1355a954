"""k-means weight sharing (Han et al., Deep Compression): each layer's weights are clustered into
2**bits centroids and replaced by centroid indices; retraining keeps the assignment and updates
each centroid with the summed gradient of its members."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..errors import UsageError
from .base import CodebookCodec, MethodConfig, register, row_scale_field
from .primitives import kmeans_1d


@dataclass(frozen=True)
class KMeansConfig(MethodConfig):
    method: ClassVar[str] = "kmeans"
    bits: int = 4
    init: str = "linear"  # or "density"
    row_scale: bool = row_scale_field()  # a scale per output row (base.RowScaledCodec)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise UsageError(f"k-means bits must be in 1..8, got {self.bits}")
        if self.init not in ("linear", "density"):
            raise UsageError(f"k-means init must be linear or density, got {self.init!r}")


@register(KMeansConfig)
def kmeans_codec(cfg: KMeansConfig, weight: Tensor, mask: Tensor | None = None) -> CodebookCodec:
    values = weight.detach()[mask] if mask is not None else weight.detach().flatten()
    centroids, index = kmeans_1d(values, 2 ** cfg.bits, cfg.init)
    return CodebookCodec(weight.shape, centroids, index, mask)
