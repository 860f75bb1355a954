"""The runtime's native kernels (``runtime/native.py``, ``runtime/csrc/``) called on torch tensors:
a packed layer's product and its dequantized tiles, for the PyTorch paths that use packed layers
outside the runtime's own search (the reference search, the attention analysis, evaluation of a
layer by itself). The library, its variants and its loading are the runtime's; this module only
hands it tensors' addresses.

No library (``SHRINKFORMER_NATIVE=0``, no compiler at install): the pure-PyTorch tile path does the
work, after one warning; the kernels and the tile path compute the same products up to the order
of float additions (tests compare them).
"""

from __future__ import annotations

import ctypes
from typing import Callable

import torch
from torch import Tensor

from ..runtime import contract
from ..runtime import native as runtime_native
from ..runtime.layers import LayerArrays
from ..runtime.native import MAX_1BIT_ROWS, MAX_DENSE_ROWS, MAX_MASKED_ROWS, MAX_ROWS  # noqa: F401 (re-exported)

library = runtime_native.library
has_blas = runtime_native.has_blas
reset = runtime_native.reset
LAYER_KINDS, LAYER_DENSE = contract.LAYER_KINDS, contract.LAYER_DENSE
DEQUANT_BITS = (1, 4, 8)


def generation() -> int:
    """Moves on each ``reset()``: kernels bound to a layer before it are bound again."""
    return runtime_native.generation


def threaded() -> bool:
    """Whether the kernels split their rows across OpenMP threads themselves."""
    lib = library()
    return lib is not None and bool(lib.packed_kernels_threaded())


def arrays(encoding: str, bits: int, rows: int, cols: int, *, index: Tensor | None = None,
           codebook: Tensor | None = None, values: Tensor | None = None, mask: Tensor | None = None,
           row_start: Tensor | None = None, row_scale: Tensor | None = None) -> LayerArrays:
    """A layer's tensors as the runtime's arrays: numpy views of the same memory, no copies."""
    def view(t: Tensor | None):
        return None if t is None else t.detach().numpy()
    return LayerArrays(rows, cols, encoding, bits, index=view(index), codebook=view(codebook), values=view(values),
                       mask=view(mask), row_start=view(row_start), row_scale=view(row_scale))


def dequantize(index: Tensor, bits: int, start: int, table: Tensor, out: Tensor) -> bool:
    """Fill ``out`` with the centroid values of b-bit indices start..start + out.numel() (``table``
    padded to 2**bits entries); False, untouched, where no kernel serves it."""
    lib = library()
    if lib is None or bits not in DEQUANT_BITS:
        return False
    lib.lut_dequant(index.data_ptr(), bits, start, out.numel(), table.data_ptr(), out.data_ptr())
    return True


def dequantize_masked(layer: LayerArrays, r0: int, out: Tensor) -> bool:
    """Fill ``out`` with rows r0.. of a pruned layer (zeros where pruned); False, untouched, where
    no kernel serves it."""
    lib = library()
    if lib is None or layer.kind() is None:
        return False
    desc = layer.descriptor(False)
    lib.masked_dequant(ctypes.addressof(desc), r0, r0 + out.shape[0], out.data_ptr())
    return True


def bind(layer: LayerArrays, held: list[Tensor]) -> Callable[[Tensor, Tensor | None], Tensor] | None:
    """One layer's kernel, its addresses set once: ``call(x, bias)`` for a contiguous fp32 x
    (..., cols) of at most ``call.max_rows`` rows, or None where no kernel serves the layer. The
    closure holds ``held`` (the tensors ``layer`` views), so the addresses stay valid while it lives."""
    lib = library()
    if lib is None or layer.kind() is None:
        return None
    desc = layer.descriptor(runtime_native.wide())
    address, fn, rows, cols = ctypes.addressof(desc), lib.packed_layer_matmul_t, layer.rows, layer.cols

    def call(x: Tensor, bias: Tensor | None) -> Tensor:
        out = torch.empty(*x.shape[:-1], rows)
        fn(address, x.data_ptr(), x.numel() // cols, None if bias is None else bias.data_ptr(), out.data_ptr())
        return out

    call.max_rows = MAX_MASKED_ROWS if layer.mask is not None else MAX_1BIT_ROWS if layer.bits == 1 \
        else MAX_DENSE_ROWS if layer.encoding == "dense" else MAX_ROWS  # type: ignore[attr-defined]
    call.held = [*held, layer, desc]  # type: ignore[attr-defined]
    return call
