"""Binarization: two values per layer.

``fixed`` is the original 1-bit scheme: two centroids chosen once (1-bit k-means) and fixed;
full-precision latent weights keep training through a straight-through gradient and each weight
takes the nearer fixed centroid. ``flex`` is BS-Flex: the same latent weights, but at every step
the weights are re-assigned to the cluster whose centroid is nearer and each centroid becomes the
mean of its current members, so weights move between clusters and centroids follow them. Both are
a boolean comparison and two masked means, with no clustering iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .base import CodebookCodec, Codec, MethodConfig, register, row_scale_field
from .primitives import binarize_flex, kmeans_1d


@dataclass(frozen=True)
class BinaryConfig(MethodConfig):
    method: ClassVar[str] = "binary"
    centroids: str = "flex"  # "flex" (BS-Flex) or "fixed"
    row_scale: bool = row_scale_field()  # a scale per output row (base.RowScaledCodec)

    def __post_init__(self) -> None:
        if self.centroids not in ("flex", "fixed"):
            raise UsageError(f"binary centroids must be flex or fixed, got {self.centroids!r}")


class BinaryCodec(Codec):
    method = "binary"

    def __init__(self, weight: Tensor, flex: bool) -> None:
        super().__init__(weight.shape)
        self.flex = flex
        self.latent = nn.Parameter(weight.detach().clone())
        centroids, _ = kmeans_1d(weight, 2)
        self.register_buffer("centroids", centroids)

    def quantize(self) -> tuple[Tensor, Tensor]:
        """Upper-cluster mask and centroids [lower, upper] for the current latent weights."""
        threshold = self.centroids.mean()
        latent = self.latent.detach()
        if self.flex:
            return binarize_flex(latent, threshold)
        return latent > threshold, self.centroids

    def forward(self) -> Tensor:
        upper, centroids = self.quantize()
        if self.flex and self.training:
            self.centroids.copy_(centroids)  # the next step's assignment starts from these
        q = torch.where(upper, centroids[1], centroids[0])
        if not self.training:
            return q
        return self.latent + (q - self.latent).detach()  # straight-through: gradients reach the latent weights

    def frozen(self) -> CodebookCodec:
        upper, centroids = self.quantize()
        return CodebookCodec(self.shape, centroids, upper.flatten().long())

    def pack(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return self.frozen().pack()


@register(BinaryConfig)
def binary_codec(cfg: BinaryConfig, weight: Tensor, mask: Tensor | None = None) -> BinaryCodec:
    if mask is not None:
        raise UsageError("binarization of a pruned layer is not supported; use k-means after pruning")
    return BinaryCodec(weight, flex=cfg.centroids == "flex")
