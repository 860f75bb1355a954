"""BS-Flex's re-assignment as one pass on the CPU: the mask, the upper cluster's size and the two
sums, read and written once. The torch expression in ``primitives.binarize_flex`` takes four passes
and as many dispatches, which on a layer of 65k weights cost 4x this; on other devices it stays."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})  # reassoc: the sums vectorize
def flex_sums(x: np.ndarray, threshold: np.float32, upper: np.ndarray) -> tuple[float, float, int]:
    """Writes ``upper = x > threshold``; returns the sum of all values, of the upper ones (float64)
    and how many are upper."""
    total = above = 0.0
    n_up = 0
    for i in range(x.size):
        v = x[i]
        u = v > threshold
        upper[i] = u
        total += v
        above += v if u else np.float32(0)
        n_up += u
    return total, above, n_up


@numba.njit(cache=True, nogil=True)
def flex_assign(x: np.ndarray, mask: np.ndarray, mids: np.ndarray, index: np.ndarray, sums: np.ndarray,
                counts: np.ndarray) -> None:
    """Flexible k-means' re-assignment in one pass: each value (each unmasked one, where ``mask`` is
    not empty) takes the cluster whose interval between ascending ``mids`` holds it — the count of
    mids below it, as ``torch.bucketize`` — written in order to ``index``; ``sums`` (float64) and
    ``counts`` collect each cluster's members."""
    sums[:] = 0.0
    counts[:] = 0
    masked = mask.size > 0
    j = 0
    for i in range(x.size):
        if masked and not mask[i]:
            continue
        v = x[i]
        if mids.size < 16:  # a branch-free count: mispredicted binary-search branches cost more
            lo = 0
            for m in range(mids.size):
                lo += mids[m] < v
        else:
            lo, hi = 0, mids.size
            while lo < hi:
                m = (lo + hi) >> 1
                if mids[m] < v:
                    lo = m + 1
                else:
                    hi = m
        index[j] = lo
        j += 1
        sums[lo] += v
        counts[lo] += 1
