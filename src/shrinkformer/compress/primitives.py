"""Pure tensor maths behind the compression methods, testable without a model."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def init_centroids(values: Tensor, k: int, init: str = "linear") -> Tensor:
    """Starting centroids: ``linear`` spaces k points evenly over [min, max] (Deep Compression's
    best for accuracy: it keeps the rare large weights); ``density`` takes quantiles."""
    v = values.detach().flatten().double()
    if init == "linear":
        return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    if init == "density":
        return torch.from_numpy(np.quantile(v.numpy(), np.linspace(0, 1, k + 2)[1:-1]))
    raise ValueError(f"unknown k-means init {init!r} (linear or density)")


HISTOGRAM_FROM = 1 << 16  # from this many values on, k-means runs on a histogram (lloyd.py)


def kmeans_1d(values: Tensor, k: int, init: str = "linear", max_iter: int = 300) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm in one dimension, run until the assignment stops changing.

    Small inputs are sorted once, which turns each iteration into k binary searches and k
    prefix-sum differences. Large ones (weight matrices) skip the sort: ``lloyd.lloyd_1d`` works
    on a histogram and the few values near the cluster boundaries, in three or four passes over the
    data.
    Both end at a fixed point of exact Lloyd. Returns centroids (k,) ascending in the values'
    dtype and each value's centroid index (n,), uint8 when k <= 256 (index with ``.long()``).
    Empty clusters keep their centroid.
    """
    flat = values.detach().flatten().cpu().float()
    a = np.ascontiguousarray(flat.numpy())
    lo, hi = (float(v) for v in torch.aminmax(flat)) if a.size else (0.0, 0.0)  # one threaded pass; NaN shows
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("k-means needs finite values (found NaN or infinity)")
    if init == "linear":
        start = np.linspace(lo, hi, k)
    else:
        start = np.sort(init_centroids(flat, k, init).numpy())
    from .lloyd import lloyd_1d, lloyd_sorted  # Numba: imported (and compiled) on first use
    if a.size >= HISTOGRAM_FROM:
        c, index = lloyd_1d(a, start, max_iter, bounds=(lo, hi), threads=torch.get_num_threads())
    else:
        c, index = lloyd_sorted(a, start, max_iter)
    return torch.from_numpy(c).to(values.dtype), torch.from_numpy(index)


def assign(values: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (centroids ascending), as int64 of values' shape."""
    mid = (centroids[1:].double() + centroids[:-1].double()) / 2
    return torch.bucketize(values.double(), mid)


def within_cluster_sse(values: Tensor, centroids: Tensor, index: Tensor) -> float:
    return float(((values.double().flatten() - centroids.double()[index.flatten().long()]) ** 2).sum())


def binarize_flex(latent: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """One BS-Flex re-assignment: weights above ``threshold`` join the upper cluster, the rest the
    lower, and each centroid becomes the mean of its members. Returns the upper-cluster mask and
    centroids (2,) [lower, upper]; an empty cluster sits at the threshold.

    No iterations: one comparison and three sums. On the CPU (float32) a compiled pass does all of
    it at once (``flex_kernel``); elsewhere tensor ops do, the upper cluster's sum taken as
    sum(max(x - t, 0)) + t * count, which equals the sum over x > t without a boolean gather.
    """
    n, t = latent.numel(), float(threshold)
    if latent.device.type == "cpu" and latent.dtype == torch.float32 and latent.is_contiguous():
        from .flex_kernel import flex_sums
        upper = torch.empty(latent.shape, dtype=torch.bool)
        total, up_sum, n_up = flex_sums(latent.detach().numpy().reshape(-1), np.float32(t),
                                        upper.numpy().reshape(-1))
    else:
        upper = latent > threshold
        n_up, total = int(torch.count_nonzero(upper)), float(latent.sum())
        up_sum = float((latent - threshold).clamp(min=0).sum()) + t * n_up
    lo = (total - up_sum) / (n - n_up) if n_up < n else t
    hi = up_sum / n_up if n_up else t
    return upper, torch.tensor([lo, hi], dtype=latent.dtype, device=latent.device)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """True for the weights that survive removing the ``sparsity`` share of smallest magnitudes
    (exactly round(sparsity * n) removed; ties broken by position)."""
    n_prune = round(sparsity * weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if n_prune:
        mask[weight.detach().abs().flatten().argsort(stable=True)[:n_prune]] = False
    return mask.view_as(weight)


def global_magnitude_masks(weights: list[Tensor], sparsity: float) -> list[Tensor]:
    """Masks removing the smallest-magnitude ``sparsity`` share across all ``weights`` together."""
    joint = magnitude_mask(torch.cat([w.detach().flatten() for w in weights]), sparsity)
    return [m.view_as(w) for m, w in zip(joint.split([w.numel() for w in weights]), weights)]


def pack_bits(index: Tensor, bits: int) -> Tensor:
    """(n,) integers in [0, 2**bits) -> ceil(n * bits / 8) bytes, most significant bit first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    idx = index.flatten().to(torch.uint8)
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.uint8, device=idx.device)
    stream = ((idx[:, None] >> shifts) & 1).flatten()
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=idx.device)
    return (stream.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of ``pack_bits``: the first n integers, as int64."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    stream = ((packed[:, None] >> shifts) & 1).flatten()[: n * bits].view(n, bits).long()
    return (stream << torch.arange(bits - 1, -1, -1, device=packed.device)).sum(1)


def encode_positions(mask: Tensor) -> Tensor:
    """Positions of the True entries as uint8 gaps from the previous one; a 0 byte means "skip 255
    and read on" so gaps of any size fit. Smaller than a bitmask when few entries survive."""
    pos = mask.flatten().nonzero().squeeze(1)
    gaps = torch.diff(pos, prepend=pos.new_tensor([-1]))  # >= 1
    n_escape = (gaps - 1) // 255
    rest = gaps - n_escape * 255
    out = torch.zeros(int(n_escape.sum() + gaps.numel()), dtype=torch.uint8)
    ends = torch.cumsum(n_escape + 1, 0) - 1
    out[ends] = rest.to(torch.uint8)
    return out


def decode_positions(codes: Tensor, n: int) -> Tensor:
    """Inverse of ``encode_positions``: a boolean mask of n entries."""
    c = codes.long()
    step = torch.where(c == 0, 255, c)
    pos = torch.cumsum(step, 0) - 1
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pos[c != 0]] = True
    return mask


def pack_mask(mask: Tensor) -> tuple[str, Tensor]:
    """The smaller of a bitmask and gap-coded positions, with the name of the one chosen."""
    bitmask = pack_bits(mask.flatten().to(torch.uint8), 1)
    gaps = encode_positions(mask)
    return ("positions", gaps) if gaps.numel() < bitmask.numel() else ("bitmask", bitmask)


def unpack_mask(kind: str, data: Tensor, n: int) -> Tensor:
    if kind == "bitmask":
        return unpack_bits(data, 1, n).bool()
    if kind == "positions":
        return decode_positions(data, n)
    raise ValueError(f"unknown mask encoding {kind!r}")
