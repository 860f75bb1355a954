"""Layers of at most 5 distinct values through lookup tables over the activations (csrc/grouped.c):
the AVX-512 code and the portable code give the same floats, in the x86 library and in the portable
one, at every number of rows; the product is x @ W.T + b to float rounding; layers it cannot serve
keep the 4-bit kernel; the runtime and the torch path both lay such layers out, so they translate
alike; and SHRINKFORMER_GROUPED=0 turns it off."""

import ctypes
from pathlib import Path

import numpy as np
import pytest

from shrinkformer.runtime import native as runtime_native
from shrinkformer.runtime.direct import DirectModel
from shrinkformer.runtime.layers import LayerArrays, pack_bits
from tests.kernel_cases import grouped_layers

ROOT = Path(__file__).resolve().parents[1]
MIXED = ROOT / "results" / "multi30k" / "models" / "mixed-20x.sfz"


def _grouped_product(layer: LayerArrays, x: np.ndarray, bias: np.ndarray, wide: bool) -> np.ndarray:
    lib = runtime_native.library()
    d = layer.descriptor(wide)
    assert lib.layer_to_grouped(ctypes.byref(d)) == 0 and d.gindex and d.gcols in (2, 3, 5)
    y = np.empty((x.shape[0], layer.rows), dtype=np.float32)
    lib.packed_layer_matmul_t(ctypes.byref(d), x.ctypes.data, x.shape[0], bias.ctypes.data, y.ctypes.data)
    lib.layer_release_grouped(ctypes.byref(d))
    assert not d.gindex
    return y


@pytest.mark.skipif(runtime_native.library() is None, reason="no native library here")
def test_every_build_gives_the_same_floats_and_the_product(fresh):
    rng = np.random.default_rng(3)
    layers = grouped_layers(rng)
    cases = [(name, layer, rng.standard_normal((m, layer.cols)).astype(np.float32),
              rng.standard_normal(layer.rows).astype(np.float32)) for name, layer in layers.items() for m in (1, 5, 8, 13)]
    seen = {}
    for want in ("1", "portable"):
        fresh.setenv("SHRINKFORMER_NATIVE", want)
        runtime_native.reset()
        for wide in ((True, False) if want == "1" and runtime_native.wide() else (False,)):
            seen[want, wide] = [_grouped_product(layer, x, bias, wide) for _, layer, x, bias in cases]
    first = next(iter(seen.values()))
    for key, outputs in seen.items():
        for (name, layer, x, _), a, b in zip(cases, first, outputs):
            assert a.tobytes() == b.tobytes(), (key, name, x.shape[0])
    for (name, layer, x, bias), y in zip(cases, first):
        np.testing.assert_allclose(y, x @ layer.dequantize(0, layer.rows).T + bias, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.skipif(runtime_native.library() is None, reason="no native library here")
def test_layers_it_cannot_serve_are_refused_and_keep_their_index():
    lib = runtime_native.library()
    rng = np.random.default_rng(4)
    six = LayerArrays.codebook_layer(32, 64, 4, rng.standard_normal(16).astype(np.float32),
                                     pack_bits(np.arange(32 * 64) % 6, 4), None)
    rows24 = LayerArrays.codebook_layer(24, 64, 4, rng.standard_normal(16).astype(np.float32),
                                        pack_bits(np.arange(24 * 64) % 2, 4), None)
    for layer in (six, rows24):
        d = layer.descriptor(True)
        assert lib.layer_to_grouped(ctypes.byref(d)) == -1 and not d.gindex and d.index


@pytest.mark.skipif(not MIXED.is_file(), reason="no committed mixed-20x model")
def test_the_runtime_groups_few_valued_layers_and_the_switch_turns_it_off(fresh):
    model = DirectModel(MIXED)
    grouped = {name for name, layer in model.prepared.items() if layer.gindex}
    if runtime_native.grouped():  # its 1-bit, 2-bit and 50%-pruned 1-bit layers: 2 to 5 values
        assert "embed_tokens" in grouped and len(grouped) > 20
        assert {model.prepared[n].gcols for n in grouped} == {2, 3, 5}
    else:
        assert not grouped
    model.close()
    fresh.setenv("SHRINKFORMER_GROUPED", "0")
    assert not any(layer.gindex for layer in DirectModel(MIXED).prepared.values())
