import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shrinkformer.compress.primitives import (assign, binarize_flex, decode_positions, encode_positions,
                                              global_magnitude_masks, kmeans_1d, magnitude_mask, pack_bits,
                                              pack_mask, unpack_bits, unpack_mask, within_cluster_sse)


def lloyd_reference(x, c, iters=500):
    """Textbook O(nk) Lloyd in float64, for comparison."""
    x, c = x.double(), c.double().clone()
    for _ in range(iters):
        idx = (x[:, None] - c[None]).abs().argmin(1)
        new = torch.stack([x[idx == j].mean() if (idx == j).any() else c[j] for j in range(len(c))])
        if torch.equal(new, c):
            break
        c = new
    return c


@pytest.mark.parametrize("k", [2, 4, 16])
@pytest.mark.parametrize("init", ["linear", "density"])
def test_kmeans_1d_matches_textbook_lloyd(k, init):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(k)) ** 3
    from shrinkformer.compress.primitives import init_centroids
    centroids, index = kmeans_1d(x, k, init)
    ref = lloyd_reference(x, init_centroids(x, k, init).sort().values)
    torch.testing.assert_close(centroids.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(index.long(), assign(x, centroids))
    assert within_cluster_sse(x, centroids, index) <= within_cluster_sse(x, ref.float(), assign(x, ref.float())) * (1 + 1e-6)


def test_kmeans_handles_few_distinct_values():
    x = torch.tensor([1.0, 1.0, 1.0, 5.0])
    c, idx = kmeans_1d(x, 16)
    assert torch.equal(c[idx.long()], x)


@given(st.integers(1, 8), st.integers(0, 200), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_pack_bits_round_trip_and_size(bits, n, seed):
    idx = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack_bits(idx, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, n), idx)


@given(st.lists(st.booleans(), min_size=1, max_size=3000), st.integers(0, 600))
@settings(max_examples=60, deadline=None)
def test_mask_encodings_round_trip(bits, gap):
    mask = torch.tensor(bits + [False] * gap + [True])
    assert torch.equal(decode_positions(encode_positions(mask), mask.numel()), mask)
    kind, data = pack_mask(mask)
    assert torch.equal(unpack_mask(kind, data, mask.numel()), mask)


def test_sparse_masks_pick_the_smaller_encoding():
    dense = torch.rand(10_000) < 0.5
    sparse = torch.rand(10_000) < 0.02
    assert pack_mask(dense)[0] == "bitmask" and pack_mask(sparse)[0] == "positions"


def test_magnitude_mask_removes_exactly_the_smallest():
    w = torch.tensor([[0.1, -3.0, 0.2], [-0.05, 2.0, 0.0]])
    assert magnitude_mask(w, 0.5).tolist() == [[False, True, True], [False, True, False]]
    assert magnitude_mask(w, 0.0).all()
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 0.5])
    ma, mb = global_magnitude_masks([a, b], 0.4)
    assert ma.tolist() == [False, True, True] and mb.tolist() == [True, False]


def test_binarize_flex_is_one_lloyd_step():
    w = torch.tensor([-2.0, -1.0, 0.5, 1.0, 3.0])
    upper, c = binarize_flex(w, torch.tensor(0.0))
    assert upper.tolist() == [False, False, True, True, True]
    torch.testing.assert_close(c, torch.tensor([-1.5, 1.5]))
    upper, c = binarize_flex(w, torch.tensor(10.0))  # an empty cluster keeps the threshold
    assert not upper.any() and c[1] == 10.0


@pytest.mark.parametrize("threshold", [0.0, 0.013, -5.0, 5.0])
def test_binarize_flex_compiled_pass_matches_the_tensor_ops(threshold):
    """On the CPU a compiled pass replaces the tensor ops; a float64 copy takes the tensor ops.
    Same mask exactly, same centroids up to float32 summation order."""
    w = torch.randn(300, 257, generator=torch.Generator().manual_seed(1)) * 0.05
    upper, c = binarize_flex(w, torch.tensor(threshold))
    ref_upper, ref_c = binarize_flex(w.double(), torch.tensor(threshold))
    assert upper.dtype == torch.bool and upper.shape == w.shape and torch.equal(upper, ref_upper)
    assert c.dtype == torch.float32
    torch.testing.assert_close(c.double(), ref_c, rtol=1e-5, atol=1e-7)


def large_sample(kind, n=1 << 17, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"normal": lambda: torch.randn(n, generator=g) * 0.05,
         # Student's t with 3 degrees of freedom, from the seeded generator
         "heavy": lambda: torch.randn(n, generator=g) / (torch.randn(n, 3, generator=g).pow(2).mean(1)).sqrt(),
         "uniform": lambda: torch.rand(n, generator=g) * 2 - 1,
         "mixture": lambda: torch.cat([torch.randn(n // 2, generator=g) * 0.01, torch.randn(n - n // 2, generator=g) + 3]),
         "few-values": lambda: torch.randint(0, 5, (n,), generator=g).float() / 7,
         # signed zeros, subnormals and magnitudes near the float32 limit: the bins are built from
         # the float32 bit patterns, so these are where they could go wrong
         "edge-values": lambda: torch.cat([torch.zeros(n // 8), -torch.zeros(n // 8),
                                           torch.randn(n // 4, generator=g) * 1e-40,
                                           torch.randn(n - n // 2, generator=g) * 1e-3]),
         "huge": lambda: torch.randn(n, generator=g) * 1e37}[kind]()
    return x.float()


@pytest.mark.parametrize("kind, n", [("normal", 1 << 17), ("heavy", 1 << 17), ("uniform", 1 << 17),
                                     ("mixture", 1 << 17), ("few-values", 1 << 17), ("edge-values", 1 << 17),
                                     ("huge", 1 << 17), ("normal", 1 << 19), ("uniform", 1 << 20)],
                         ids=["normal", "heavy", "uniform", "mixture", "few-values", "edge-values", "huge",
                              "normal-threaded", "uniform-threaded"])
@pytest.mark.parametrize("k", [2, 16, 256])
def test_histogram_kmeans_ends_at_an_exact_lloyd_fixed_point(kind, n, k):
    """Large inputs take the histogram path: every value must sit with its nearest centroid (ties
    go up), every centroid must be the mean of its members, and the error must be no worse than
    exact Lloyd on sorted values from the same start."""
    import numpy as np

    from shrinkformer.compress.lloyd import lloyd_1d, lloyd_sorted
    from shrinkformer.compress.primitives import HISTOGRAM_FROM
    x = large_sample(kind, n)  # from 2**18 values on, the passes run on several threads
    assert x.numel() >= HISTOGRAM_FROM
    xd = x.double().numpy()
    start = np.linspace(xd.min(), xd.max(), k)
    c, idx = lloyd_1d(x.numpy(), start.copy())
    assert idx.dtype == np.uint8 and idx.shape == xd.shape and np.all(np.diff(c) >= 0)
    assert np.array_equal(idx, np.searchsorted((c[1:] + c[:-1]) / 2, xd, side="right"))
    sizes = np.bincount(idx, minlength=k)
    means = np.bincount(idx, weights=xd, minlength=k)[sizes > 0] / sizes[sizes > 0]
    np.testing.assert_allclose(c[sizes > 0], means, rtol=1e-9, atol=1e-12)
    ref_c, ref_idx = lloyd_sorted(x.numpy(), start.copy(), 300)
    sse = lambda c, i: float(((xd - c[i.astype(np.int64)]) ** 2).sum())  # noqa: E731
    assert sse(c, idx) <= sse(ref_c, ref_idx) * (1 + 1e-6)
    c2, idx2 = lloyd_1d(x.numpy(), start.copy())
    assert np.array_equal(c, c2) and np.array_equal(idx, idx2)
    tc, tidx = kmeans_1d(x, k)  # the public entry point takes this path and hands back tensors
    assert tc.dtype == torch.float32 and torch.equal(tidx, torch.from_numpy(idx))


def test_kmeans_rejects_non_finite_values():
    x = torch.randn(1 << 17)
    x[123] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        kmeans_1d(x, 16)
