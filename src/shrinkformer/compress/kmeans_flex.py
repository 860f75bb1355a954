"""Flexible k-means: BS-Flex's rule at any bit width, with or without a pruning mask.

Deep Compression retrains with the k-means assignment frozen: each weight keeps its cluster, only
the centroids move. BS-Flex (the study's flexible binary scheme) instead keeps full-precision
latent weights, re-assigns every weight to its nearest centroid at each step and sets each
centroid to the mean of its members; on Multi30k that retrained 1-bit models 3 BLEU higher than
frozen 1-bit k-means (bsflex-all vs kmeans-1bit-all). Here the same rule holds for 2**bits
centroids — one Lloyd step per training step, on the latent weights, with gradients reaching them
straight through the rounding — and over the survivors of a pruned layer, where a pruned weight
stays exactly zero (1 bit over the survivors of a pruned layer is a ternary code). It packs as an
ordinary codebook: the file format does not know how a codebook was retrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UsageError
from .base import CodebookCodec, Codec, MethodConfig, register, row_scale_field
from .primitives import kmeans_1d


@dataclass(frozen=True)
class FlexKMeansConfig(MethodConfig):
    method: ClassVar[str] = "kmeans-flex"
    bits: int = 2
    row_scale: bool = row_scale_field()  # a scale per output row (base.RowScaledCodec)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise UsageError(f"flexible k-means bits must be in 1..8, got {self.bits}")


def flex_step(values: Tensor, centroids: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One Lloyd step: each value (each masked-in one) takes the nearest of the ascending
    ``centroids``; returns the members' cluster index (uint8, in order) and the new centroids, each
    its members' mean (an empty cluster keeps its centroid). A compiled single pass on the CPU,
    tensor operations elsewhere."""
    k = centroids.numel()
    mids = (centroids[1:] + centroids[:-1]) / 2
    if values.device.type == "cpu" and values.dtype == torch.float32 and values.is_contiguous():
        from .flex_kernel import flex_assign
        n = values.numel() if mask is None else int(mask.sum())
        index = torch.empty(n, dtype=torch.uint8)
        sums, counts = np.empty(k, dtype=np.float64), np.empty(k, dtype=np.int64)
        flex_assign(values.numpy().reshape(-1), np.empty(0, np.bool_) if mask is None else mask.numpy().reshape(-1),
                    mids.numpy(), index.numpy(), sums, counts)
        sums_t, counts_t = torch.from_numpy(sums), torch.from_numpy(counts)
    else:
        members = values.flatten() if mask is None else values[mask]
        index = torch.bucketize(members, mids)
        counts_t = torch.bincount(index, minlength=k).cpu()
        sums_t = torch.zeros(k, dtype=torch.float64, device=values.device).index_add_(0, index, members.double()).cpu()
        index = index.to(torch.uint8)
    # Still ascending: a cluster's members lie between its midpoints, and so does an empty cluster's
    # centroid, kept where it was.
    new = torch.where(counts_t > 0, sums_t / counts_t.clamp(min=1), centroids.double().cpu()).to(centroids)
    return index, new


class FlexCodebookCodec(Codec):
    method = "kmeans-flex"

    def __init__(self, weight: Tensor, bits: int, mask: Tensor | None = None) -> None:
        super().__init__(weight.shape)
        self.latent = nn.Parameter(weight.detach().clone())
        self.register_buffer("mask", None if mask is None else mask.reshape(self.shape).bool())
        members = weight.detach().flatten() if mask is None else weight.detach()[self.mask]
        centroids, _ = kmeans_1d(members, 2 ** bits)
        self.register_buffer("centroids", centroids)

    def quantize(self) -> tuple[Tensor, Tensor]:
        """Cluster index of every (surviving) weight and the centroids, from the latent weights."""
        return flex_step(self.latent.detach(), self.centroids, self.mask)

    def forward(self) -> Tensor:
        index, centroids = self.quantize()
        if self.training:
            self.centroids.copy_(centroids)  # the next step's assignment starts from these
        values = centroids.index_select(0, index.long())  # deterministic backward (CodebookCodec.forward)
        if self.mask is None:
            q = values.view(self.shape)
        else:
            q = torch.zeros(self.shape, dtype=values.dtype, device=values.device).masked_scatter(self.mask, values)
        if not self.training:
            return q
        st = self.latent + (q - self.latent).detach()  # straight-through: gradients reach the latent weights
        return st if self.mask is None else torch.where(self.mask, st, torch.zeros((), dtype=st.dtype))

    def frozen(self) -> CodebookCodec:
        index, centroids = self.quantize()
        return CodebookCodec(self.shape, centroids, index, self.mask)

    def pack(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return self.frozen().pack()


@register(FlexKMeansConfig)
def flex_kmeans_codec(cfg: FlexKMeansConfig, weight: Tensor, mask: Tensor | None = None) -> FlexCodebookCodec:
    return FlexCodebookCodec(weight, cfg.bits, mask)
