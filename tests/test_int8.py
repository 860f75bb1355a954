"""The runtime's opt-in int8 mode (csrc/int8.c): 4-bit layers with int8 activations, and its
float16 caches (keys and values, --half-cache). Not exact, so its tests ask what it promises instead: every core (AVX-512 VNNI where the
CPU has it, the portable one in the x86 library and in the portable library) gives the same
translations, at any batch size; a product stays within the quantization's error of the exact one;
embedding rows are read exactly; the float16 rounding is IEEE's; layers it does not serve keep their
kernels; and it is refused in one line where it cannot run."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shrinkformer.errors import UsageError
from shrinkformer.runtime import contract
from shrinkformer.runtime import native as runtime_native
from shrinkformer.runtime.direct import DirectModel
from shrinkformer.runtime.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "multi30k" / "models"
FOUR_BIT = COMMITTED / "kmeans-4bit-all+embeddings.sfz"
LINES = ["A man in an orange hat starring at something.", "A little girl climbing into a wooden playhouse.",
         "Two dogs play in the snow.", "A woman with a red umbrella walks down a busy street at night.",
         "People are standing near a building.", "A boy jumps off a diving board into a pool."]
LUT4, INT8 = contract.LAYER_KINDS[("codebook", 4, False)], contract.LAYER_LUT4_INT8


@pytest.mark.parametrize("half_cache", [False, True], ids=["fp32 caches", "float16 caches"])
def test_every_int8_core_gives_the_same_translations(fresh, half_cache):
    """VNNI (where the CPU has it) against the portable core, in the x86 library and in the portable
    one: the same integers, the same epilogue (and the same float16 rounding), so the same lines, in
    batches and one at a time."""
    lines = LINES * 3
    seen = {}
    for want in ("1", "avx2", "portable"):
        fresh.setenv("SHRINKFORMER_NATIVE", want)
        runtime_native.reset()
        model = DirectModel(FOUR_BIT, int8=True, half_cache=half_cache)
        assert {layer.kind for layer in model.prepared.values()} == {INT8}
        assert all(layer.wide == (want == "1" and runtime_native.vnni()) for layer in model.prepared.values())
        seen[want] = (Translator(model, batch_sentences=8).translate(lines),
                      Translator(DirectModel(FOUR_BIT, int8=True, half_cache=half_cache),
                                 batch_sentences=1).translate(lines[:6]))
    assert seen["1"] == seen["avx2"] == seen["portable"]
    assert seen["1"][0][:6] == seen["1"][1]
    # every row's arithmetic is its own (per-row activation scales, exact integer sums), so a batch
    # past search.c's chunks of 8 sentences per output projection gives the same lines
    assert Translator(DirectModel(FOUR_BIT, int8=True, half_cache=half_cache),
                      batch_sentences=18).translate(lines) == seen["1"][0]


def _product(layer: contract.Layer, x: np.ndarray) -> np.ndarray:
    lib = runtime_native.library()
    y = np.empty((x.shape[0], layer.rows), dtype=np.float32)
    lib.packed_layer_matmul_t(ctypes.byref(layer), x.ctypes.data, x.shape[0], None, y.ctypes.data)
    return y


def test_an_int8_product_is_the_exact_one_to_the_quantization_and_rows_read_exactly():
    exact, int8 = DirectModel(FOUR_BIT), DirectModel(FOUR_BIT, int8=True)
    rng = np.random.default_rng(0)
    for name in ("embed_tokens", "decoder.layers.0.ffn.fc1", "encoder.layers.2.ffn.fc2"):
        a, b = exact.prepared[name], int8.prepared[name]
        assert (a.kind, b.kind) == (LUT4, INT8)
        for m in (1, 5, 37):  # one row, a beam, past the kernels' blocks of 8 rows
            x = rng.standard_normal((m, a.cols)).astype(np.float32)
            want, got = _product(a, x), _product(b, x)
            error = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert 0 < error < 0.02, (name, m, error)  # quantized, and only by the quantization
        lib = runtime_native.library()
        for r in (0, 15, 16, a.rows - 1):  # the first and last lanes of blocks
            row_exact, row_int8 = np.empty(a.cols, np.float32), np.empty(a.cols, np.float32)
            lib.lut_dequant(a.index, 4, r * a.cols, a.cols, a.codebook, row_exact.ctypes.data)
            lib.int8_row(ctypes.byref(b), r, row_int8.ctypes.data)
            assert np.array_equal(row_exact, row_int8), (name, r)


def test_int8_serves_only_4bit_layers_and_its_lines_stay_close():
    model = DirectModel(COMMITTED / "mixed-20x.sfz", int8=True)
    kinds = {layer.kind for layer in model.prepared.values()}
    assert INT8 in kinds and LUT4 not in kinds and kinds - {INT8}  # the 1-bit and pruned layers keep theirs
    exact = Translator.load(FOUR_BIT).translate(LINES)
    quantized = Translator.load(FOUR_BIT, int8=True).translate(LINES)
    assert sum(a == b for a, b in zip(exact, quantized)) >= len(LINES) - 2, (exact, quantized)


def test_int8_without_the_native_library_is_a_one_line_error(fresh):
    fresh.setenv("SHRINKFORMER_NATIVE", "0")
    runtime_native.reset()
    with pytest.warns(RuntimeWarning, match="without its native library"):
        with pytest.raises(UsageError, match="int8 activations need the native library"):
            Translator.load(FOUR_BIT, int8=True)
    run = subprocess.run([sys.executable, "-m", "shrinkformer.runtime.cli", str(FOUR_BIT), "--int8"], input="A dog.\n",
                         capture_output=True, text=True, env={**os.environ, "SHRINKFORMER_NATIVE": "0"})
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1] == \
        "shrinkformer-translate: error: int8 activations need the native library, which is not available here"


def test_the_command_line_translates_with_int8_and_half_caches():
    run = subprocess.run([sys.executable, "-m", "shrinkformer.runtime.cli", str(FOUR_BIT), "--int8", "--half-cache"],
                         input="\n".join(LINES) + "\n", capture_output=True, text=True, check=True)
    assert run.stdout.splitlines() == Translator.load(FOUR_BIT, int8=True, half_cache=True).translate(LINES)


def test_half_precision_caches_round_as_ieee_does_in_every_build(fresh):
    """The int8 mode's keys and values are float16, rounded to nearest even: prepare.c's conversion
    (the portable build's, and every tail) and F16C's (kv_narrow in the x86 build) against numpy's,
    over normal, subnormal, tied, overflowing and special values."""
    rng = np.random.default_rng(1)
    bits = np.concatenate([rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32),
                           # around float16's subnormals and its largest values, and exact ties
                           (rng.integers(0x33000000, 0x38800000, size=50_000)).astype(np.uint32),
                           (rng.integers(0x477f0000, 0x47800000, size=10_000)).astype(np.uint32),
                           np.arange(0x38800000, 0x38802000, 0x1000 // 2, dtype=np.uint32)])
    values = bits.view(np.float32)
    values = values[~np.isnan(values)]  # NaN payloads: numpy keeps more of them than F16C
    values = np.concatenate([values, -values, np.float32([0.0, -0.0, np.inf, -np.inf, 65504, 65520, 65519.996])])
    with np.errstate(over="ignore"):
        want = values.astype(np.float16).view(np.uint16)
    for build in ("1", "portable"):
        fresh.setenv("SHRINKFORMER_NATIVE", build)
        runtime_native.reset()
        lib = runtime_native.library()
        for fn in (lib.float_to_half, lib.kv_narrow):
            got = np.empty(len(values), dtype=np.uint16)
            fn(values.ctypes.data, len(values), got.ctypes.data)
            wrong = np.flatnonzero(got != want)
            assert not len(wrong), (build, fn.__name__, values[wrong[:5]], got[wrong[:5]], want[wrong[:5]])
