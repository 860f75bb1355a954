"""Exact 1-D Lloyd k-means without sorting: a histogram, and the few values near the boundaries.

In one dimension Lloyd's algorithm needs, for each cluster boundary m (the midpoint between
neighbouring centroids), only how many values lie below m and what they sum to. A histogram answers
that exactly for every bin wholly below m; only the bin that m falls in needs its values, sorted.
So: one pass builds the histogram (counts and sums); Lloyd iterates on it, first splitting a
boundary's bin by linear interpolation (nearly free, and it lands next to a fixed point), then
exactly, with the values of the bins the boundaries visit fetched in a pass or a few; a last pass
writes each value's cluster. A handful of passes over the data, compiled with Numba and split
across threads, where sorting costs O(n log n) and scikit-learn a pass per iteration.

A value's bin is the sum of an equal-width index and a logarithmic one (sign and top bits of the
magnitude), so bins are fine both where a uniform spread is dense and near zero where weights
crowd, and a few outliers cannot push every value into a handful of bins. Both indices are
monotone in the value, so a bin below m's holds only values below m and a bin above only values
above it. Ties go right: a value equal to m joins the upper cluster, as
``searchsorted(sorted_values, m)`` counts.
"""

from __future__ import annotations

import types

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)
MAX_FETCHES = 32  # passes gathering boundary bins; Lloyd's max_iter bounds each run between them
PARALLEL_FROM = 1 << 18  # below this many values, waking threads costs more than it saves
LOG_OCTAVES = 16  # magnitudes below max|x| / 2**16 share one logarithmic bin


def _grid(lo: float, hi: float, n: int) -> tuple[float, float, int, int, int, int]:
    """Parameters of ``_bin`` for n values in [lo, hi] (lo < hi): n / 32 equal-width bins (2048 to
    8192) and, over the 16 octaves below max |x| on each side of zero, 32 to 256 logarithmic bins
    per octave. Fewer bins cost less per call; more leave fewer values to sort per bin."""
    n_linear = int(np.clip(n >> 5, 1 << 11, 1 << 13))
    per_octave = 1 << int(np.clip(np.log2(n) - 11, 5, 8))
    top = max(abs(lo), abs(hi))
    u_floor = int(np.array(top * 2.0 ** -LOG_OCTAVES, dtype=np.float32).view(np.uint32))
    shift = 23 - int(np.log2(per_octave))
    u_top = int(np.array(top, dtype=np.float32).view(np.uint32))
    return lo, n_linear / (hi - lo), n_linear, u_floor, shift, (u_top - u_floor) >> shift


@numba.njit(cache=True, nogil=True, inline="always")
def _bin(v, u, grid):
    """The bin of value ``v`` (float64) whose float32 bits are ``u``: an equal-width index plus a
    logarithmic one (sign and top bits of the magnitude above a floor). Both are monotone in v,
    so their sum is, and it is fine wherever either is."""
    lo, scale, n_lin, u_floor, shift, g_max = grid
    linear = min(max(np.int64((np.float64(v) - lo) * scale), 0), n_lin - 1)
    g = (max(np.int64(u) & 0x7FFFFFFF, u_floor) - u_floor) >> shift
    return linear + g_max + g - 2 * (np.int64(u) >> 31) * g  # minus g for negative values, branch-free


# The three passes below split the data into chunks, one thread each when compiled parallel. Each
# thread works on arrays of its own (shared rows of one array stop the threads from scaling) and
# computes bins a block at a time, a loop the compiler vectorizes.
BLOCK = 512


def _histogram(bits, x, grid, n_bins, n_chunks):
    """Per-chunk counts and float64 sums of each bin."""
    n = x.size
    step = (n + n_chunks - 1) // n_chunks
    counts = np.zeros((n_chunks, n_bins), np.int64)
    sums = np.zeros((n_chunks, n_bins), np.float64)
    for t in numba.prange(n_chunks):
        count, total, block = np.zeros(n_bins, np.int64), np.zeros(n_bins), np.empty(BLOCK, np.int64)
        for s in range(t * step, min(n, (t + 1) * step), BLOCK):
            m = min(BLOCK, n - s, (t + 1) * step - s)
            for i in range(m):
                block[i] = _bin(x[s + i], bits[s + i], grid)
            for i in range(m):
                count[block[i]] += 1
                total[block[i]] += x[s + i]
        counts[t], sums[t] = count, total
    return counts, sums


def _gather_bins(bits, x, grid, wanted, offsets, out):
    """Copy the values whose bin is ``wanted`` into ``out``, chunk t from ``offsets[t]`` on. Every
    value is written and the cursor moves only past wanted ones (no branch to mispredict), so each
    chunk's region ends in one spare slot."""
    n = x.size
    n_chunks = offsets.size
    step = (n + n_chunks - 1) // n_chunks
    for t in numba.prange(n_chunks):
        at, block = offsets[t], np.empty(BLOCK, np.int64)
        for s in range(t * step, min(n, (t + 1) * step), BLOCK):
            m = min(BLOCK, n - s, (t + 1) * step - s)
            for i in range(m):
                block[i] = _bin(x[s + i], bits[s + i], grid)
            for i in range(m):
                out[at] = x[s + i]
                at += wanted[block[i]]


def _assign(bits, x, grid, first, last, mids, n_chunks, index):
    """Each value's cluster: boundaries ``first[b]`` and up lie at or above bin b, below
    ``last[b]`` at or below it; only values in a boundary's bin are compared with it."""
    n = x.size
    step = (n + n_chunks - 1) // n_chunks
    for t in numba.prange(n_chunks):
        block = np.empty(BLOCK, np.int64)
        for s in range(t * step, min(n, (t + 1) * step), BLOCK):
            m = min(BLOCK, n - s, (t + 1) * step - s)
            for i in range(m):
                block[i] = _bin(x[s + i], bits[s + i], grid)
            for i in range(m):
                b = block[i]
                j = first[b]
                while j < last[b] and mids[j] <= x[s + i]:
                    j += 1
                index[s + i] = j


def _compiled(fn, parallel: bool):
    """``fn`` compiled serial or parallel. Each variant gets its own name: Numba's disk cache is
    keyed by name, and two variants under one name would load each other's machine code."""
    variant = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    variant.__qualname__ = f"{fn.__qualname__}_{'parallel' if parallel else 'serial'}"
    return numba.njit(cache=True, nogil=True, parallel=parallel)(variant)


_kernels = {parallel: tuple(_compiled(fn, parallel) for fn in (_histogram, _gather_bins, _assign))
            for parallel in (False, True)}


@_jit
def _boundaries(c, grid, mids, bins, scratch):
    """Midpoints of neighbouring centroids and the bins they fall in (``scratch``: one float32)."""
    bits = scratch.view(np.uint32)
    for j in range(c.size - 1):
        mids[j] = (c[j] + c[j + 1]) * 0.5
        scratch[0] = mids[j]  # rounding to float32 is monotone: the bin order still holds
        bins[j] = _bin(mids[j], bits[0], grid)


@_jit
def _update(c, below_n, below_s, min_size):
    """Centroids = mean of each cluster (clusters with at most ``min_size`` members keep theirs);
    returns how far the centroids moved."""
    shift = 0.0
    for j in range(c.size):
        size = below_n[j + 1] - below_n[j]
        if size > min_size:
            new = (below_s[j + 1] - below_s[j]) / size
            shift = max(shift, abs(new - c[j]))
            c[j] = new
    c.sort()
    return shift


@_jit
def _approx_lloyd(c, grid, counts, sums, count_below, sum_below, edges, max_iter, tol):
    """Lloyd on the histogram alone, a boundary's bin split by linear interpolation between its
    edges: nearly free, and with fine bins it ends next to a fixed point of the exact problem.
    Moves ``c``."""
    k, n_bins = c.size, counts.size
    mids, bins, scratch = np.empty(k - 1), np.empty(k - 1, np.int64), np.empty(1, np.float32)
    below_n, below_s = np.zeros(k + 1), np.zeros(k + 1)
    below_n[k], below_s[k] = count_below[n_bins], sum_below[n_bins]
    for _ in range(max_iter):
        _boundaries(c, grid, mids, bins, scratch)
        for j in range(k - 1):
            b = bins[j]
            width = edges[b + 1] - edges[b]
            share = min(max((mids[j] - edges[b]) / width, 0.0), 1.0) if width > 0 else 0.5
            below_n[j + 1] = count_below[b] + share * counts[b]
            below_s[j + 1] = sum_below[b] + share * sums[b]
        if _update(c, below_n, below_s, 1e-9) <= tol:
            break


@_jit
def _exact_lloyd(c, grid, counts, sums, count_below, sum_below, start, stop, values, cumsum, wanted, max_iter):
    """Lloyd until the assignment stops changing, exact wherever the boundary's bin was fetched:
    ``values[start[b]:stop[b]]`` are the sorted values of bin b (``start[b] < 0`` if not fetched),
    ``cumsum`` their running sum with a leading 0. A boundary in a bin not fetched takes the
    bin-mean rule and marks the bin in ``wanted``. Returns True when the last iteration was exact,
    i.e. ``c`` is a fixed point of exact Lloyd."""
    k, n_bins = c.size, start.size
    mids, bins, scratch = np.empty(k - 1), np.empty(k - 1, np.int64), np.empty(1, np.float32)
    below_n, below_s = np.zeros(k + 1), np.zeros(k + 1)
    below_n[k], below_s[k] = count_below[n_bins], sum_below[n_bins]
    previous = np.full(k + 1, -1.0)
    for _ in range(max_iter):
        _boundaries(c, grid, mids, bins, scratch)
        exact = True
        for j in range(k - 1):
            b = bins[j]
            s = start[b]
            if s >= 0:
                i = np.searchsorted(values[s:stop[b]], mids[j])
                below_n[j + 1] = count_below[b] + i
                below_s[j + 1] = sum_below[b] + cumsum[s + i] - cumsum[s]
            else:
                exact = False
                wanted[b] = True
                whole = counts[b] > 0 and sums[b] < mids[j] * counts[b]
                below_n[j + 1] = count_below[b] + (counts[b] if whole else 0.0)
                below_s[j + 1] = sum_below[b] + (sums[b] if whole else 0.0)
        if np.array_equal(below_n, previous):
            return exact
        previous[:] = below_n
        _update(c, below_n, below_s, 0.5)
    return False


def _edges(grid: tuple) -> np.ndarray:
    """Where the bin index steps up, about: the linear grid's steps and the logarithmic ones on
    either side of zero, merged (n_bins + 1 values, bounds included; for interpolation only)."""
    lo, scale, n_lin, u_floor, shift, g_max = grid
    linear = lo + np.arange(1, n_lin) / scale
    mags = (u_floor + (np.arange(1, g_max + 1, dtype=np.int64) << shift)).astype(np.uint32).view(np.float32)
    top = float(np.array(u_floor + (g_max << shift), dtype=np.uint32).view(np.float32))
    hi = lo + n_lin / scale
    inner = np.concatenate([linear, mags, -mags]).astype(np.float64)
    return np.concatenate([[min(lo, -top)], np.sort(inner), [max(hi, top)]])


def lloyd_1d(x: np.ndarray, centroids: np.ndarray, max_iter: int = 300,
             bounds: tuple[float, float] | None = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm on the finite float32 values ``x`` (1-D, contiguous) from ascending
    ``centroids`` (float64), until the assignment stops changing. Returns the centroids (ascending;
    an empty cluster keeps its own) and each value's cluster index (uint8 for k <= 256).
    ``bounds``: min and max of x, when the caller has them already; ``threads``: at most this
    many threads (default: Numba's)."""
    n, k = x.size, centroids.size
    c = np.array(centroids, dtype=np.float64)
    index = np.zeros(n, dtype=np.uint8 if k <= 256 else np.int64)
    lo, hi = bounds if bounds is not None else (float(x.min()), float(x.max())) if n else (0.0, 0.0)
    if k == 1 or lo == hi:  # one distinct value (or none): nothing to iterate
        if n:
            c[:] = lo if k == 1 else c
            index[:] = np.searchsorted((c[1:] + c[:-1]) * 0.5, lo, side="right")
        return c, index
    grid = _grid(lo, hi, n)
    n_bins = grid[2] + 2 * grid[5]
    n_chunks = min(numba.get_num_threads(), threads or numba.get_num_threads()) if n >= PARALLEL_FROM else 1
    histogram, gather_bins, assign = _kernels[n_chunks > 1]
    bits = x.view(np.uint32)
    chunk_counts, chunk_sums = histogram(bits, x, grid, n_bins, n_chunks)
    counts, sums = chunk_counts.sum(0), chunk_sums.sum(0)
    count_below = np.concatenate([[0], np.cumsum(counts)])
    sum_below = np.concatenate([[0.0], np.cumsum(sums)])
    counts_f, count_below_f = counts.astype(np.float64), count_below.astype(np.float64)
    _approx_lloyd(c, grid, counts_f, sums, count_below_f, sum_below, _edges(grid), max_iter, 1e-9 * (hi - lo))

    # Then exact: fetch the bins the boundaries visit (and their neighbours) until a run of
    # iterations converges without needing a bin it does not have. Bins follow the value order,
    # so the fetched values sorted together lie bin after bin.
    have, wanted = np.zeros(n_bins, dtype=np.bool_), np.zeros(n_bins, dtype=np.bool_)
    values = np.empty(0, dtype=np.float32)
    mids, mid_bins = np.empty(k - 1), np.empty(k - 1, dtype=np.int64)
    _boundaries(c, grid, mids, mid_bins, np.empty(1, np.float32))
    wanted[mid_bins] = True
    for round_ in range(MAX_FETCHES):
        # Lloyd creeps: a boundary that needed a new bin tends to need the next ones too, so each
        # round fetches a wider neighbourhood around the bins asked for.
        new = _widen(wanted, 8 << min(2 * round_, 8)) & ~have
        if new.any():
            values = np.sort(np.concatenate([values, _gather(gather_bins, bits, x, grid, chunk_counts, new)]))
            have |= new
        wanted[:] = False
        sizes = np.where(have, counts, 0)
        stop = np.cumsum(sizes)
        start = np.where(have, stop - sizes, -1)
        cumsum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
        if _exact_lloyd(c, grid, counts_f, sums, count_below_f, sum_below, start, stop, values, cumsum, wanted,
                        max_iter):
            break
    else:  # still creeping after many fetches: finish on sorted values, which is exact too
        from .primitives import _lloyd_sorted
        return _lloyd_sorted(x, c, max_iter)

    mids, mid_bins = np.empty(k - 1), np.empty(k - 1, dtype=np.int64)
    _boundaries(c, grid, mids, mid_bins, np.empty(1, np.float32))
    small = np.uint8 if k <= 256 else np.int64  # small lookup tables stay in the L1 cache
    last = np.cumsum(np.bincount(mid_bins, minlength=n_bins)).astype(small)
    first = (last - np.bincount(mid_bins, minlength=n_bins)).astype(small)
    assign(bits, x, grid, first, last, mids, n_chunks, index)
    return c, index


def _widen(flags: np.ndarray, reach: int) -> np.ndarray:
    """``flags`` with every set entry spread to ``reach`` entries on either side."""
    running = np.concatenate([[0], np.cumsum(flags)])
    i = np.arange(flags.size)
    return running[np.minimum(i + reach + 1, flags.size)] > running[np.maximum(i - reach, 0)]


def _gather(gather_bins, bits: np.ndarray, x: np.ndarray, grid: tuple, chunk_counts: np.ndarray,
            wanted: np.ndarray) -> np.ndarray:
    """The values of the ``wanted`` bins (unsorted), read in one pass over the data."""
    per_chunk = chunk_counts[:, wanted].sum(1)
    offsets = np.concatenate([[0], np.cumsum(per_chunk + 1)[:-1]]).astype(np.int64)
    out = np.empty(int(per_chunk.sum()) + per_chunk.size, dtype=x.dtype)
    gather_bins(bits, x, grid, wanted.astype(np.uint8), offsets, out)
    keep = np.ones(out.size, dtype=np.bool_)
    keep[offsets + per_chunk] = False  # the spare slots
    return out[keep]
