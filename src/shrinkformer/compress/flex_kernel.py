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
