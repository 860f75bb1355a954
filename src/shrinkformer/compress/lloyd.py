"""Exact 1-D Lloyd k-means without sorting: a histogram, and the few values near the boundaries.

In one dimension Lloyd's algorithm needs, for each cluster boundary m (the midpoint between
neighbouring centroids), only how many values lie below m and what they sum to. A histogram answers
that exactly for every bin wholly below m; only the bin that m falls in needs its values, sorted.
So: one pass builds the histogram (counts and exact sums); Lloyd iterates on it, first splitting a
boundary's bin as a linear density with the bin's count and mean would (nearly free, and it lands
near a fixed point), then exactly, with the values of the bins around the boundaries fetched in a pass (two when Lloyd creeps
far, as on the flat spread of freshly initialised weights); a last pass writes each value's
cluster. Three or four passes over the data, compiled with Numba and split across threads, where
sorting costs O(n log n) and scikit-learn a pass per iteration.

A value's bin is its sign and the top bits of its float32 magnitude: 2**m bins per octave over the
12 octaves below max |x| (smaller magnitudes share one bin per sign). Bins are finest near zero,
where weights crowd, and a few outliers cannot push every value into a handful of bins. Within a bin
every magnitude has the same exponent, so the bin's sum is count * its least magnitude + (the sum of
the low mantissa bits) * the exponent's ulp: integers, counted with one add per value (count and
low-bit sum share an int64), exact. Bins are monotone in the value, so a bin below m's holds only
values below m, and "bin >= b" is "x >= the least value of bin b": the passes that only need to
know which side of a bin edge or boundary a value lies on compare floats (vectorized, 16 lanes)
instead of computing bins. Ties go right: a value equal to m joins the upper cluster, as
``searchsorted(sorted_values, m)`` counts.
"""

from __future__ import annotations

import math
import struct
import types

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)
MAX_FETCHES = 32  # passes gathering boundary bins; Lloyd's max_iter bounds each run between them
PARALLEL_FROM = 1 << 18  # below this many values, waking threads costs more than it saves
OCTAVES = 12  # magnitudes below max|x| / 2**12 share one bin per sign
COMPARED = 16  # up to this many clusters (or runs of bins to fetch), compare each value with every edge
COUNT_SHIFT = 40  # packed histogram entry: count << 40 | sum of low mantissa bits
FLUSH = 1 << 22  # values per packed histogram before it is unpacked: the low-bit sums stay < 2**40


def _grid(lo: float, hi: float, n: int) -> tuple[int, int, int]:
    """Parameters of ``_bin`` for n values in [lo, hi]: ``f0`` (the floor magnitude's float32 bits
    less one bin), the shift ``s`` that keeps 23 - s mantissa bits (2**5 to 2**10 bins per octave,
    more for more values), and ``n_g`` magnitude bins per sign. There are 2 * n_g bins."""
    u_top = _float32_bits(max(abs(lo), abs(hi)))
    floor = max((u_top >> 23) - OCTAVES, 1) << 23  # a power of two: bins never straddle an exponent
    s = 23 - min(max(n.bit_length() - 11, 5), 10)
    return floor - (1 << s), s, ((max(u_top, floor) - floor) >> s) + 2


def _float32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


@numba.njit(cache=True, nogil=True, inline="always")
def _bin(u, f0, s, n_g):
    """The bin of the value whose float32 bits (as int32) are ``u``: magnitude bin g (0 below the
    floor, else 1 + the magnitude's bits above the floor, shifted), mirrored below n_g for negative
    values. Zero of either sign lands in bin n_g, as -0.0 == 0.0."""
    a = u & 0x7FFFFFFF
    g = (max(a, f0) - f0) >> s
    neg = np.int32(u < 0) & np.int32(a != 0)
    return n_g + g - neg * (2 * g + 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _chunk(t, n, n_chunks):
    """The range of values chunk t of n_chunks covers."""
    step = (n + n_chunks - 1) // n_chunks
    return t * step, min(n, (t + 1) * step)


# The passes split the data into chunks, one thread each when compiled parallel, each with arrays of
# its own (shared rows of one array stop the threads from scaling). A chunk's work is a plain loop
# over array slices, fixed trip counts inside, the shape the compiler vectorizes: the same loop
# indexed from a chunk's start inside the parallel loop runs four times slower.

@_jit
def _histogram_chunk(bits, x, f0, s, n_g, floor_value, counts, lows, tiny):
    """Adds the chunk's values to ``counts`` and ``lows`` (per bin) and ``tiny`` (below the floor,
    negative and positive sums)."""
    low_mask = (1 << s) - 1
    packed = np.zeros(counts.size, np.int64)
    b = np.empty(min(FLUSH, bits.size), np.int32)
    for first in range(0, bits.size, FLUSH):
        _bins(bits[first:first + FLUSH], f0, s, n_g, b)
        _add_packed(b[:min(FLUSH, bits.size - first)], bits[first:first + FLUSH], low_mask, packed)
        for j in range(counts.size):
            counts[j] += packed[j] >> COUNT_SHIFT
            lows[j] += packed[j] & ((1 << COUNT_SHIFT) - 1)
            packed[j] = 0
    tiny[0], tiny[1] = _tiny_sums(x, floor_value)


@_jit
def _bins(bits, f0, s, n_g, out):
    f0, s, n_g = np.int32(f0), np.int32(s), np.int32(n_g)
    for i in range(bits.size):
        out[i] = _bin(bits[i], f0, s, n_g)


@_jit
def _add_packed(b, bits, low_mask, packed):
    for i in range(b.size):
        packed[b[i]] += (1 << COUNT_SHIFT) + (bits[i] & low_mask)


@numba.njit(cache=True, nogil=True, fastmath=True)  # lets the sum vectorize; float64 sums of float32 either way
def _tiny_sums(x, floor_value):
    below = above = 0.0
    for i in range(x.size):
        v = np.float64(x[i]) if abs(x[i]) < floor_value else 0.0
        below += min(v, 0.0)
        above += max(v, 0.0)
    return below, above


def _histogram(bits, x, f0, s, n_g, floor_value, n_chunks):
    """Per-bin counts and low-mantissa-bit sums (int64), and the sums of the values below the
    floor, negative and positive (float64): their low bits are not a bin's."""
    n, n_bins = x.size, 2 * n_g
    counts = np.zeros((n_chunks, n_bins), np.int64)
    lows = np.zeros((n_chunks, n_bins), np.int64)
    tiny = np.zeros((n_chunks, 2))
    for t in numba.prange(n_chunks):
        a, b = _chunk(t, n, n_chunks)
        _histogram_chunk(bits[a:b], x[a:b], f0, s, n_g, floor_value, counts[t], lows[t], tiny[t])
    return counts.sum(0), lows.sum(0), tiny.sum(0)


@_jit
def _in_runs(x, edges, inside):
    """``inside[i]`` = 1 where x[i] lies in a run: an odd count of ``edges`` at or below it."""
    for i in range(x.size):
        v, above = x[i], np.int32(0)
        for j in range(2 * COMPARED):
            above += np.int32(v >= edges[j])
        inside[i] = above & 1
    return inside.sum()  # a loop of its own: counting inside the one above stops it vectorizing


@_jit
def _in_bins(bits, f0, s, n_g, wanted, inside):
    f0, s, n_g = np.int32(f0), np.int32(s), np.int32(n_g)
    total = 0
    for i in range(bits.size):
        w = wanted[_bin(bits[i], f0, s, n_g)]
        inside[i] = w
        total += w
    return total


@_jit
def _copy_inside(x, inside, out):
    at = 0
    for i in range(x.size):
        if inside[i]:  # rare: the branch costs less than writing every value
            out[at] = x[i]
            at += 1


def _gather(bits, x, f0, s, n_g, edges, wanted, n_chunks):
    """The values inside the runs of bins given by ``edges`` (ascending float32, a run's least
    value then its end, padded with +inf to 2 * COMPARED) or, if ``edges`` is empty (more runs than
    that), those whose bin is ``wanted``. Unsorted."""
    n = x.size
    inside = np.empty(n, np.uint8)
    found = np.zeros(n_chunks + 1, np.int64)
    for t in numba.prange(n_chunks):
        a, b = _chunk(t, n, n_chunks)
        if edges.size:
            found[t + 1] = _in_runs(x[a:b], edges, inside[a:b])
        else:
            found[t + 1] = _in_bins(bits[a:b], f0, s, n_g, wanted, inside[a:b])
    offsets = np.cumsum(found)
    out = np.empty(offsets[-1], x.dtype)
    for t in numba.prange(n_chunks):
        a, b = _chunk(t, n, n_chunks)
        _copy_inside(x[a:b], inside[a:b], out[offsets[t]:offsets[t + 1]])
    return out


@_jit
def _assign_compared_chunk(x, thresholds, index):
    for i in range(x.size):
        v, above = x[i], np.int32(0)
        for j in range(COMPARED - 1):
            above += np.int32(v >= thresholds[j])
        index[i] = above


@_jit
def _assign_bins_chunk(bits, x, f0, s, n_g, first, last, mids, index):
    f0, s, n_g = np.int32(f0), np.int32(s), np.int32(n_g)
    for i in range(x.size):
        b = _bin(bits[i], f0, s, n_g)
        j = first[b]
        while j < last[b] and mids[j] <= x[i]:
            j += 1
        index[i] = j


def _assign(bits, x, f0, s, n_g, thresholds, first, last, mids, n_chunks, index):
    """Each value's cluster. Up to COMPARED clusters: how many of the float32 ``thresholds`` (the
    least float32 at or above each boundary, padded with +inf) it reaches. More: boundaries
    ``first[b]`` and up lie at or above bin b, below ``last[b]`` at or below it, and only values in
    a boundary's bin are compared with it."""
    n = x.size
    for t in numba.prange(n_chunks):
        a, b = _chunk(t, n, n_chunks)
        if thresholds.size:
            _assign_compared_chunk(x[a:b], thresholds, index[a:b])
        else:
            _assign_bins_chunk(bits[a:b], x[a:b], f0, s, n_g, first, last, mids, index[a:b])


def _compiled(fn, parallel: bool):
    """``fn`` compiled serial or parallel. Each variant gets its own name: Numba's disk cache is
    keyed by name, and two variants under one name would load each other's machine code."""
    variant = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    variant.__qualname__ = f"{fn.__qualname__}_{'parallel' if parallel else 'serial'}"
    return numba.njit(cache=True, nogil=True, parallel=parallel)(variant)


_kernels = {parallel: types.SimpleNamespace(
    histogram=_compiled(_histogram, parallel), gather=_compiled(_gather, parallel),
    assign=_compiled(_assign, parallel)) for parallel in (False, True)}


@_jit
def _bin_table(counts_i, lows, tiny, f0, s, n_g, lo, hi):
    """From the histogram: counts and exact sums per bin (float64), their running totals with a
    leading 0, each bin's least value ``least`` (float32-exact; -inf and +inf at the ends, so bin b
    holds the x with least[b] <= x < least[b + 1]) and the bin edges clipped to [lo, hi]."""
    n_bins, floor = 2 * n_g, f0 + (1 << s)
    per_octave, exponent = 1 << (23 - s), floor >> 23
    scratch = np.empty(1, np.int32)
    scratch[0] = floor - 1  # the largest magnitude below the floor
    below_floor = np.float64(scratch.view(np.float32)[0])
    least, sums = np.empty(n_bins + 1), np.empty(n_bins)
    least[n_g - 1], least[n_g], sums[n_g - 1], sums[n_g] = -below_floor, 0.0, tiny[0], tiny[1]
    for octave in range((n_g - 2) // per_octave + 1):  # magnitude bin g: [2**(e-127) * (1 + j / per_octave), ...)
        scale = math.ldexp(1.0, exponent + octave - 127)
        ulp, width = math.ldexp(1.0, exponent + octave - 150), scale / per_octave  # ulp: float32's here
        for j in range(min(per_octave, n_g - 1 - octave * per_octave)):
            g = 1 + octave * per_octave + j
            smallest = scale + j * width  # exact: a float32 value
            up, down = n_g + g, n_g - 1 - g
            least[up], least[down] = smallest, -(smallest + width - ulp)
            sums[up] = counts_i[up] * smallest + lows[up] * ulp
            sums[down] = -(counts_i[down] * smallest + lows[down] * ulp)
    least[0], least[n_bins] = -np.inf, np.inf
    counts = np.empty(n_bins)
    count_below, sum_below, edges = np.empty(n_bins + 1), np.empty(n_bins + 1), np.empty(n_bins + 1)
    count_below[0] = sum_below[0] = 0.0
    for b in range(n_bins):
        counts[b] = counts_i[b]
        count_below[b + 1] = count_below[b] + counts[b]
        sum_below[b + 1] = sum_below[b] + sums[b]
        edges[b] = min(max(least[b], lo), hi)
    edges[n_bins] = hi
    return counts, sums, count_below, sum_below, least, edges


@_jit
def _boundaries(c, least, grid, mids, bins):
    """Midpoints of neighbouring centroids and the bins they fall in: the bin of the midpoint
    rounded to float32, moved by one where the rounding crossed a bin edge."""
    f0, s, n_g = grid
    scratch = np.empty(1, np.float32)
    bits = scratch.view(np.int32)
    for j in range(c.size - 1):
        mids[j] = (c[j] + c[j + 1]) * 0.5
        scratch[0] = mids[j]
        b = _bin(bits[0], f0, s, n_g)
        bins[j] = b - 1 if least[b] > mids[j] else b + 1 if least[b + 1] <= mids[j] else b


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
def _split(c, least, grid, edges, counts, sums, count_below, sum_below, mids, bins, below_n, below_s):
    """How many values lie below each boundary of ``c`` and what they sum to, a boundary's bin split
    as the linear density with the bin's count and mean would split it (``below_n``, ``below_s``
    entries 1..k-1)."""
    _boundaries(c, least, grid, mids, bins)
    for j in range(c.size - 1):
        b = bins[j]
        width = edges[b + 1] - edges[b]
        if width > 0 and counts[b] > 0:
            t = min(max((mids[j] - edges[b]) / width, 0.0), 1.0)  # u in [0, 1] across the bin
            slope = min(max(12.0 * ((sums[b] / counts[b] - edges[b]) / width - 0.5), -2.0), 2.0)
            below = t + 0.5 * slope * (t * t - t)
            moment = t * t / 2 + slope * (t * t * t / 3 - t * t / 4)
            below_n[j + 1] = count_below[b] + below * counts[b]
            below_s[j + 1] = sum_below[b] + counts[b] * (edges[b] * below + width * moment)
        else:
            below_n[j + 1] = count_below[b] + 0.5 * counts[b]
            below_s[j + 1] = sum_below[b] + 0.5 * sums[b]


@_jit
def _approx_lloyd(c, least, grid, edges, counts, sums, count_below, sum_below, max_iter, tol):
    """Lloyd on the histogram alone (``_split``): nearly free, and with fine bins it ends next to a
    fixed point of the exact problem (the bins' means make it land nearer than an even spread
    would). Moves ``c``. On flat data Lloyd creeps, so allow it many iterations: each costs
    microseconds, a fetch the exact phase would need instead costs a pass over the data.
    (Aitken's extrapolation of the creep, tried, converged faster but sometimes into a worse fixed
    point: 0.1% to 15% more squared error on heavy-tailed samples, even when each jump had to
    lower the error.)"""
    k, n_bins = c.size, counts.size
    mids, bins = np.empty(k - 1), np.empty(k - 1, np.int64)
    below_n, below_s = np.zeros(k + 1), np.zeros(k + 1)
    below_n[k], below_s[k] = count_below[n_bins], sum_below[n_bins]
    for _ in range(max_iter):
        _split(c, least, grid, edges, counts, sums, count_below, sum_below, mids, bins, below_n, below_s)
        if _update(c, below_n, below_s, 1e-9) <= tol:
            break


@_jit
def _exact_lloyd(c, least, grid, counts, sums, count_below, sum_below, start, values, cumsum, wanted, max_iter):
    """Lloyd until the assignment stops changing, exact wherever the boundary's bin was fetched:
    ``values[start[b]:start[b] + counts[b]]`` are bin b's values, sorted (``start[b] < 0`` if not
    fetched), ``cumsum`` their running sum with a leading 0. A boundary in a bin not fetched takes
    the bin-mean rule and marks the bin in ``wanted``. Returns True when the last iteration was
    exact, i.e. ``c`` is a fixed point of exact Lloyd."""
    k, n_bins = c.size, start.size
    mids, bins = np.empty(k - 1), np.empty(k - 1, np.int64)
    below_n, below_s = np.zeros(k + 1), np.zeros(k + 1)
    below_n[k], below_s[k] = count_below[n_bins], sum_below[n_bins]
    previous = np.full(k + 1, -1.0)
    for _ in range(max_iter):
        _boundaries(c, least, grid, mids, bins)
        exact = True
        for j in range(k - 1):
            b = bins[j]
            s = start[b]
            if s >= 0:
                i = np.searchsorted(values[s:s + np.int64(counts[b])], mids[j])
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


@_jit
def _plan_fetch(wanted, have, reach, least):
    """The bins to fetch next: those ``wanted``, widened by ``reach`` bins either side, not yet
    had; marks them had and clears ``wanted``. Returns them as flags, how many runs of neighbouring
    bins they form, and the runs as ``_gather`` takes them: each run's least value and its end,
    padded with +inf (empty when there are more than COMPARED runs)."""
    n_bins = wanted.size
    new = np.zeros(n_bins, np.uint8)
    reach_end = -1
    for b in range(n_bins):  # forward: up to reach bins after a wanted one
        if wanted[b]:
            reach_end = b + reach
        new[b] = b <= reach_end
    reach_start = n_bins
    for b in range(n_bins - 1, -1, -1):  # backward: up to reach bins before
        if wanted[b]:
            reach_start = b - reach
        new[b] = (new[b] | (b >= reach_start)) & (not have[b])
        wanted[b] = False
    edges = np.full(2 * COMPARED, np.inf, np.float32)
    runs = 0
    for b in range(n_bins):
        if new[b]:
            have[b] = True
            starts = b == 0 or not new[b - 1]
            runs += starts
            if runs <= COMPARED:
                if starts:
                    edges[2 * runs - 2] = least[b]
                edges[2 * runs - 1] = least[b + 1]  # where the run ends, so far
    return new, runs, edges if runs <= COMPARED else edges[:0]


@_jit
def _layout(have, counts_i, values):
    """Where each fetched bin's values start in ``values`` (all fetched values, sorted: bins follow
    the value order, so they lie bin after bin; -1 for bins not fetched), and the values' running
    sum with a leading 0."""
    start = np.full(have.size, -1, np.int64)
    at = 0
    for b in range(have.size):
        if have[b]:
            start[b] = at
            at += counts_i[b]
    cumsum = np.zeros(values.size + 1)
    cumsum[1:] = np.cumsum(values.astype(np.float64))
    return start, cumsum


def lloyd_1d(x: np.ndarray, centroids: np.ndarray, max_iter: int = 300,
             bounds: tuple[float, float] | None = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm on the finite float32 values ``x`` (1-D, contiguous) from ascending
    ``centroids`` (float64), until the assignment stops changing. Returns the centroids (ascending;
    an empty cluster keeps its own) and each value's cluster index (uint8 for k <= 256).
    ``bounds``: min and max of x, when the caller has them already; ``threads``: at most this
    many threads (default: Numba's)."""
    n, k = x.size, centroids.size
    c = np.array(centroids, dtype=np.float64)
    index = np.empty(n, dtype=np.uint8 if k <= 256 else np.int64)  # the last pass writes every entry
    lo, hi = bounds if bounds is not None else (float(x.min()), float(x.max())) if n else (0.0, 0.0)
    if k == 1 or lo == hi:  # one distinct value (or none): nothing to iterate
        if n:
            c[:] = lo if k == 1 else c
            index[:] = np.searchsorted((c[1:] + c[:-1]) * 0.5, lo, side="right")
        return c, index
    grid = f0, s, n_g = _grid(lo, hi, n)
    n_chunks = min(numba.get_num_threads(), threads or numba.get_num_threads()) if n >= PARALLEL_FROM else 1
    kernels = _kernels[n_chunks > 1]
    bits = x.view(np.int32)
    floor_value = np.float32(struct.unpack("<f", struct.pack("<i", f0 + (1 << s)))[0])
    counts_i, lows, tiny = kernels.histogram(bits, x, f0, s, n_g, floor_value, n_chunks)
    counts, sums, count_below, sum_below, least, edges = _bin_table(counts_i, lows, tiny, f0, s, n_g, lo, hi)
    _approx_lloyd(c, least, grid, edges, counts, sums, count_below, sum_below, 10 * max_iter, 1e-9 * (hi - lo))

    # Then exact: fetch the bins around the boundaries until a run of iterations converges without
    # needing a bin it does not have. Lloyd creeps: a boundary that needed a new bin tends to need
    # the next ones too, so each round fetches a wider neighbourhood around the bins asked for.
    n_bins = 2 * n_g
    have, wanted = np.zeros(n_bins, dtype=np.bool_), np.zeros(n_bins, dtype=np.bool_)
    values = np.empty(0, dtype=np.float32)
    mids, mid_bins = np.empty(k - 1), np.empty(k - 1, dtype=np.int64)
    _boundaries(c, least, grid, mids, mid_bins)
    wanted[mid_bins] = True
    for round_ in range(MAX_FETCHES):
        new, runs, run_edges = _plan_fetch(wanted, have, 2 << min(2 * round_, 10), least)
        if runs:
            values = np.sort(np.concatenate([values, kernels.gather(bits, x, f0, s, n_g, run_edges, new, n_chunks)]))
        start, cumsum = _layout(have, counts_i, values)
        if _exact_lloyd(c, least, grid, counts, sums, count_below, sum_below, start, values, cumsum, wanted, max_iter):
            break
    else:  # still creeping after many fetches: finish on sorted values, which is exact too
        return lloyd_sorted(x, c, max_iter)

    _boundaries(c, least, grid, mids, mid_bins)
    thresholds = np.full(COMPARED - 1 if k <= COMPARED else 0, np.inf, dtype=np.float32)
    t = mids.astype(np.float32)[:thresholds.size]  # x >= mid exactly when x >= the least float32 >= mid
    thresholds[:t.size] = np.where(t < mids[:t.size], np.nextafter(t, np.float32(np.inf)), t)
    small = np.uint8 if k <= 256 else np.int64  # small lookup tables stay in the L1 cache
    per_bin = np.bincount(mid_bins, minlength=n_bins) if k > COMPARED else np.zeros(0, np.int64)
    last = np.cumsum(per_bin).astype(small)
    kernels.assign(bits, x, f0, s, n_g, thresholds, (last - per_bin).astype(small), last, mids, n_chunks, index)
    return c, index


def lloyd_sorted(a: np.ndarray, c: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Lloyd on the sorted values with prefix sums: the reference, and the path for small layers."""
    order = np.argsort(a)
    x = a[order]
    prefix = np.empty(x.size + 1)
    prefix[0] = 0.0
    np.cumsum(x, dtype=np.float64, out=prefix[1:])
    k = c.size
    edges = np.full(k + 1, -1, dtype=np.int64)  # cluster j is x[edges[j]:edges[j + 1]]
    edges[0], edges[-1] = 0, x.size
    for _ in range(max_iter):
        bounds = x.searchsorted((c[1:] + c[:-1]) * 0.5)
        if (bounds == edges[1:-1]).all():
            break
        edges[1:-1] = bounds
        counts = edges[1:] - edges[:-1]
        filled = counts > 0
        c[filled] = (prefix[edges[1:]] - prefix[edges[:-1]])[filled] / counts[filled]
    index = np.empty(x.size, dtype=np.uint8 if k <= 256 else np.int64)
    index[order] = np.repeat(np.arange(k), np.diff(edges))
    return c, index
