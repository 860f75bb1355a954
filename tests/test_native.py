"""Native kernels for packed layers agree with the pure-PyTorch tile path, and their absence is one
warning, never an error."""

import warnings

import pytest
import torch

from shrinkformer.inference import native
from shrinkformer.compress.base import CodebookCodec
from shrinkformer.inference.layers import PackedWeight
from shrinkformer.compress.primitives import assign


def layer(bits: int, rows: int, cols: int, seed: int = 0) -> PackedWeight:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    centroids = torch.sort(torch.randn(2 ** bits, generator=g)).values
    return PackedWeight.from_codec(CodebookCodec(w.shape, centroids, assign(w.flatten(), centroids).to(torch.uint8)))


@pytest.mark.parametrize("variant", ["best", "avx2", "portable"])
@pytest.mark.parametrize("bits", [1, 4])
def test_kernels_agree_with_the_tile_path(fresh, variant, bits):
    if variant != "best":
        fresh.setenv("SHRINKFORMER_NATIVE", variant)
    if native.library() is None:
        pytest.skip("no native kernels on this machine (the fallback test covers it)")
    for rows, cols in [(64, 512), (37, 96), (37, 48), (3, 16), (8, 8)]:  # K % 32 == 0: byte planes
        w = layer(bits, rows, cols)
        bias = torch.randn(rows)
        assert w._bound() is not None  # the kernel, not the tile path, is under test
        # 1 bit, 2+ rows: lookup tables, 8 rows of x a pass; 4 bits, AVX-512: 1 to 3 rows of x a pass, or
        # 4 to 8 (12: a pass of 8, then of 4); AVX2: byte planes to 5 rows, then 4 or 8 a pass
        for m in (1, 2, 5, 16, *((40,) if bits == 1 else (3, 4, 7, 12))):
            x = torch.randn(m, cols)
            expected = torch.nn.functional.linear(x, w.dense(), bias)
            torch.testing.assert_close(w.matmul_t(x, bias), expected, rtol=1e-5, atol=1e-4)
        batched = torch.randn(2, 3, cols)  # (batch, time, features) as the model calls it
        torch.testing.assert_close(w.matmul_t(batched), torch.nn.functional.linear(batched, w.dense()),
                                   rtol=1e-5, atol=1e-4)


def test_large_layers_split_across_threads_give_the_same_result(fresh):
    if native.library() is None:
        pytest.skip("no native kernels on this machine")
    w, x = layer(4, 4096, 256), torch.randn(3, 256)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.testing.assert_close(w.matmul_t(x), torch.nn.functional.linear(x, w.dense()), rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("how", ["disabled", "no-compiler"])
def test_without_kernels_the_tile_path_runs_after_one_warning(fresh, how):
    if how == "disabled":
        fresh.setenv("SHRINKFORMER_NATIVE", "0")
    else:  # nothing was built at install, and nothing can be built now
        from shrinkformer.runtime import native as runtime_native
        fresh.setattr(runtime_native, "LIB_DIR", fresh.tmp / "none")
        fresh.setenv("CC", "/nonexistent/cc")
    w, x = layer(4, 32, 64), torch.randn(2, 64)
    with pytest.warns(RuntimeWarning, match="without its native library"):
        first = w.matmul_t(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        second = w.matmul_t(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, torch.nn.functional.linear(x, w.dense()))


@pytest.mark.parametrize("variant", ["best", "avx2", "portable"])
@pytest.mark.parametrize("encoding", ["sparse", "codebook"])
@pytest.mark.parametrize("sparsity", [0.3, 0.8, 0.97])
def test_pruned_layer_kernels_agree_with_the_tile_path(fresh, variant, encoding, sparsity):
    from shrinkformer.compress.base import SparseCodec
    from shrinkformer.compress.primitives import magnitude_mask

    if variant != "best":
        fresh.setenv("SHRINKFORMER_NATIVE", variant)
    if native.library() is None:
        pytest.skip("no native kernels on this machine (the fallback test covers it)")
    g = torch.Generator().manual_seed(1)
    for rows, cols in [(64, 512), (33, 48), (5, 16), (7, 24)]:
        w = torch.randn(rows, cols, generator=g)
        mask = magnitude_mask(w, sparsity)
        if encoding == "sparse":
            packed = PackedWeight.from_codec(SparseCodec(w, mask))
        else:
            centroids = torch.sort(torch.randn(16, generator=g)).values
            packed = PackedWeight.from_codec(CodebookCodec(w.shape, centroids, assign(w[mask], centroids)
                                                           .to(torch.uint8), mask))
        assert packed._bound() is not None  # the kernel, not the tile path, is under test
        bias = torch.randn(rows)
        for m in (1, 5, 7, 8):  # up to MAX_MASKED_ROWS: the kernels' row blocks of 4, 1 and 3 left over
            x = torch.randn(m, cols)
            torch.testing.assert_close(packed.matmul_t(x, bias), torch.nn.functional.linear(x, packed.dense(), bias),
                                       rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_narrow_and_pruned_codebooks_keep_their_values_and_run_natively(fresh, bits, sparsity):
    """Dense 2- and 3-bit layers load as 4-bit indices; pruned 1- to 4-bit layers keep their mask
    and their b-bit survivors (resident bytes as in the file), and both reach a kernel."""
    from shrinkformer.compress.primitives import magnitude_mask

    g = torch.Generator().manual_seed(bits)
    w = torch.randn(40, 48, generator=g)
    mask = magnitude_mask(w, sparsity) if sparsity else None
    centroids = torch.sort(torch.randn(2 ** bits, generator=g)).values
    values = w[mask] if mask is not None else w.flatten()
    codec = CodebookCodec(w.shape, centroids, assign(values, centroids).to(torch.uint8), mask)
    packed = PackedWeight.from_codec(codec)
    if mask is not None:
        assert packed.bits == bits and packed.mask is not None
        assert packed.index.numel() == -(-int(mask.sum()) * bits // 8) + 16  # survivors at b bits, and the slack
    else:
        assert packed.bits == (1 if bits == 1 else 4) and packed.mask is None
    assert torch.equal(packed.tile_reference(0, 40), codec())
    if native.library() is not None:
        assert packed._bound() is not None
        assert torch.equal(packed.dense(), codec())
    for m in (1, 5, 8, 20):  # the kernels, and above their rows the tile path
        x = torch.randn(m, 48, generator=g)
        torch.testing.assert_close(packed.matmul_t(x), torch.nn.functional.linear(x, codec()), rtol=1e-5, atol=1e-4)


def test_pruned_4bit_codebooks_keep_their_mask(fresh):
    from shrinkformer.compress.primitives import magnitude_mask

    w = torch.randn(16, 32)
    mask = magnitude_mask(w, 0.5)
    centroids = torch.sort(torch.randn(16)).values
    packed = PackedWeight.from_codec(CodebookCodec(w.shape, centroids, assign(w[mask], centroids).to(torch.uint8),
                                                   mask))
    assert packed.mask is not None and packed.bits == 4  # 17 values do not fit 4 bits


def test_without_openmp_the_kernels_run_on_one_thread_with_the_same_results(fresh):
    if native.library() is None:
        pytest.skip("no native kernels on this machine")
    layers = [layer(4, 300, 256), layer(1, 300, 256), pruned("codebook", 300, 256, 0.8), pruned("sparse", 300, 256, 0.8)]
    x, bias = torch.randn(5, 256), torch.randn(300)
    threaded = [w.matmul_t(x, bias) for w in layers]
    native.reset()
    from shrinkformer.runtime import build, native as runtime_native
    fresh.setattr(runtime_native, "LIB_DIR", fresh.tmp / "none")  # built anew, into the test's cache
    fresh.setattr(build, "OPENMP_FLAG", "-fno-such-flag")  # the compiler refuses it: built without OpenMP
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert native.library() is not None and not native.threaded()
        for w, expected in zip(layers, threaded):
            assert torch.equal(w.matmul_t(x, bias), expected)  # split across threads or not, each row sums alike
    finally:
        torch.set_num_threads(threads)


def pruned(encoding: str, rows: int, cols: int, sparsity: float, seed: int = 1) -> PackedWeight:
    from shrinkformer.compress.base import SparseCodec
    from shrinkformer.compress.primitives import magnitude_mask

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mask = magnitude_mask(w, sparsity)
    if encoding == "sparse":
        return PackedWeight.from_codec(SparseCodec(w, mask))
    centroids = torch.sort(torch.randn(16, generator=g)).values
    return PackedWeight.from_codec(CodebookCodec(w.shape, centroids, assign(w[mask], centroids).to(torch.uint8), mask))


@pytest.mark.parametrize("kind", ["1-bit", "4-bit", "8-bit", "sparse", "pruned 4-bit"])
def test_native_tiles_equal_the_pytorch_tiles_exactly(fresh, kind):
    if native.library() is None:
        pytest.skip("no native kernels on this machine")
    for rows, cols in [(64, 512), (37, 48), (5, 16), (9, 3)]:
        if kind.endswith("bit") and not kind.startswith("pruned"):
            w = layer(int(kind.split("-")[0]), rows, cols)
        elif cols % 8:
            continue  # pruned layers need whole mask bytes per row for the native tiles
        else:
            w = pruned("sparse" if kind == "sparse" else "codebook", rows, cols, 0.7)
        for r0, r1 in [(0, rows), (1, rows), (rows // 2, rows - 1), (3, 3)]:
            expected = w.tile_reference(r0, r1)
            assert torch.equal(w.tile(r0, r1), expected), (rows, cols, r0, r1)
            out = torch.full((r1 - r0, cols), float("nan"))
            assert w.tile(r0, r1, out) is out and torch.equal(out, expected)


def test_many_rows_go_through_reused_tiles_with_the_same_products(fresh):
    """Above MAX_ROWS rows of x each layer dequantizes into one scratch buffer per thread: layers
    used one after another must not see each other's weights, and autograd gets its own tile."""
    if native.library() is None:
        pytest.skip("no native kernels on this machine")
    layers = [layer(4, 300, 256, seed=1), layer(1, 40, 256, seed=2), pruned("sparse", 64, 256, 0.8),
              pruned("codebook", 5000, 256, 0.5)]  # the last takes several tiles
    x = torch.randn(40, 256)
    for _ in range(2):
        for w in layers:
            torch.testing.assert_close(w.matmul_t(x), torch.nn.functional.linear(x, w.tile_reference(0, w.shape[0])),
                                       rtol=1e-5, atol=1e-4)
    xg = x.clone().requires_grad_()
    y = layers[0].matmul_t(xg)
    layers[1].matmul_t(x)  # would overwrite a shared tile before backward reads the saved weight
    y.sum().backward()
    torch.testing.assert_close(xg.grad, layers[0].tile_reference(0, 300).sum(0).expand(40, 256), rtol=1e-4, atol=1e-4)


def test_a_layer_whose_buffers_are_replaced_binds_its_kernel_again(fresh):
    if native.library() is None:
        pytest.skip("no native kernels on this machine")
    w, x = layer(4, 32, 64), torch.randn(2, 64)
    before = w.matmul_t(x)
    w.centroids = w.centroids * 2  # a new tensor: the bound addresses would be stale
    torch.testing.assert_close(w.matmul_t(x), 2 * before, rtol=1e-5, atol=1e-4)
    w.index = w.index.clone()
    torch.testing.assert_close(w.matmul_t(x), 2 * before, rtol=1e-5, atol=1e-4)
