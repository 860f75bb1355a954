"""The inference form of a compressed layer: the packed bytes stay packed in memory, and
``x @ W.T`` is computed a cache-sized tile of rows at a time, so the whole dense ``W`` never exists.

This is the always-available reference path (plain PyTorch): each tile is dequantized with a
byte-wide lookup table (one gather turns a byte of 1-, 2-, 4- or 8-bit indices into its 8, 4, 2 or
1 centroid values) and multiplied with BLAS. Native kernels, where they exist, must agree with it.

Layouts, chosen so that resident bytes match the packed file's, but where speed says otherwise:
- codebook: the bit-packed index stream (most significant bit first, as in the file), the
  centroids, and for a pruned layer the survivors' mask as a bitmask with each row's first survivor
  (the pruned-layer kernels read survivors of 1 to 4 bits as they are stored); a dense 2- or 3-bit
  layer loads as 4-bit indices, the same values run by the 4-bit kernels, at the cost of 4 bits
  per weight resident where the file keeps 2 or 3: the budgeted allocations hold many such layers,
  and the odd-width tile path decoded them several times slower than fp32;
- sparse: the surviving fp32 values, the bitmask and each row's first survivor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from ..runtime.layers import LayerArrays
from ..compress.api import replace_module
from ..compress.base import Codec, CompressedEmbedding, CompressedLinear
from ..compress.primitives import unpack_bits

TILE_FLOATS = 1 << 18  # 1 MiB of fp32 per dequantized tile: stays in a core's L2 on most CPUs


# Byte -> its 8 bits, most significant first: unpacks a bitmask with one gather.
_BITS = ((torch.arange(256)[:, None] >> torch.arange(7, -1, -1)) & 1).bool()


_KERNEL_READS = ("index", "values", "centroids", "mask")  # the buffers a bound kernel points into


@dataclass(frozen=True)
class _Bound:
    """A layer's native kernel and what it was bound to: the library's generation and the buffers."""

    generation: int
    buffers: tuple
    call: Any


class PackedWeight(nn.Module):
    """One layer's weight in its packed form; ``tile(r0, r1)`` dequantizes rows r0..r1. Its buffers
    are the runtime's layout (``runtime/layers.py``: built there, viewed here as tensors), so the
    native kernels read them in place."""

    def __init__(self, arrays: LayerArrays, centroids: Tensor | None, made_by: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.shape, self.encoding, self.bits = torch.Size((arrays.rows, arrays.cols)), arrays.encoding, arrays.bits
        self.made_by = made_by or []

        def tensor(a):
            return None if a is None else torch.from_numpy(a)
        self.register_buffer("centroids", None if centroids is None else centroids.float().contiguous())
        for name in ("index", "values", "mask", "row_start", "row_scale"):
            self.register_buffer(name, tensor(getattr(arrays, name)))
        self._lut: Tensor | None = None
        self._padded: tuple[Tensor, Tensor] | None = None  # (the centroids it pads, padded)
        self._kernel: tuple | None = None  # (what it was bound to, ..., bound kernel or None)

    @classmethod
    def from_codec(cls, codec: Codec) -> "PackedWeight":
        parts, meta = codec.pack()
        return cls.from_parts(codec.shape, parts, meta, getattr(codec, "made_by", []))

    @classmethod
    def from_parts(cls, shape: torch.Size, parts: dict[str, Tensor], meta: dict[str, Any],
                   made_by: list[dict[str, Any]] | None = None) -> "PackedWeight":
        """From a packed file's tensors and metadata (entropy coding already undone)."""
        arrays = LayerArrays.from_parts(tuple(shape), {k: v.numpy() for k, v in parts.items()}, meta, densify=False)
        centroids = parts["centroids"] if meta["encoding"] == "codebook" else None
        return cls(arrays, centroids, made_by)

    @property
    def resident_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _codebook(self) -> Tensor:
        """The centroids padded to 2**bits entries (a layer may use fewer), built once."""
        if self._padded is None or self._padded[0] is not self.centroids:
            size = max(2 ** self.bits, 16 if self.mask is not None else 0)  # pruned kernels read 16 entries
            padded = torch.zeros(size, dtype=torch.float32, device=self.centroids.device)
            padded[: self.centroids.numel()] = self.centroids
            self._padded = (self.centroids, padded)
        return self._padded[1]

    def _table(self) -> Tensor:
        """Byte -> the 8/bits centroid values it encodes (most significant first): (256, 8/bits)."""
        if self._lut is None or self._lut.device != self.centroids.device:
            per_byte = 8 // self.bits
            codes = unpack_bits(torch.arange(256, dtype=torch.uint8), self.bits, 256 * per_byte).view(256, per_byte)
            table = torch.zeros(2 ** self.bits, dtype=torch.float32)
            table[: self.centroids.numel()] = self.centroids.cpu()
            self._lut = table[codes].to(self.centroids.device)
        return self._lut

    def _indexed(self, start: int, count: int) -> Tensor:
        """Centroid values of index entries start..start+count."""
        if 8 % self.bits == 0:  # whole bytes through the table, then trim to start..start+count
            per_byte = 8 // self.bits
            first, last = start // per_byte, -(-(start + count) // per_byte)
            skip = start - first * per_byte
            return self._table().index_select(0, self.index[first:last].int()).flatten()[skip:skip + count]
        bit0 = start * self.bits  # unaligned (or 3/5/6/7 bits): through the generic bit stream
        first, last = bit0 // 8, -(-(bit0 + count * self.bits) // 8)
        stream = unpack_bits(self.index[first:last], 1, (last - first) * 8)[bit0 - first * 8:][: count * self.bits]
        codes = (stream.view(count, self.bits) << torch.arange(self.bits - 1, -1, -1, device=stream.device)).sum(1)
        return self.centroids[codes]

    def tile(self, r0: int, r1: int, out: Tensor | None = None) -> Tensor:
        """Rows r0..r1 of the dense weight, (r1 - r0, cols) fp32 (written into ``out`` where given):
        natively where a kernel serves the layer, else in PyTorch (``tile_reference``), the same
        values either way; a layer with row scales gets each row times its scale."""
        tile = self._tile(r0, r1, out)
        return tile if self.row_scale is None else tile.mul_(self.row_scale[r0:r1, None])

    def _tile(self, r0: int, r1: int, out: Tensor | None = None) -> Tensor:
        if self.centroids is not None and self.centroids.device.type == "cpu" or \
                self.values is not None and self.values.device.type == "cpu":
            out = torch.empty(r1 - r0, self.shape[1]) if out is None else out
            if self.mask is None:
                if native.dequantize(self.index, self.bits, r0 * self.shape[1], self._codebook(), out):
                    return out
            elif native.dequantize_masked(self.arrays(), r0, out):
                return out
        if out is None:
            return self._tile_reference(r0, r1)
        return out.copy_(self._tile_reference(r0, r1))

    def tile_reference(self, r0: int, r1: int) -> Tensor:
        """``tile`` in plain PyTorch: the always-available path, and the reference the kernels match."""
        tile = self._tile_reference(r0, r1)
        return tile if self.row_scale is None else tile * self.row_scale[r0:r1, None]

    def _tile_reference(self, r0: int, r1: int) -> Tensor:
        cols = self.shape[1]
        if self.mask is None:  # every position has an index
            return self._indexed(r0 * cols, (r1 - r0) * cols).view(r1 - r0, cols)
        s0, s1 = int(self.row_start[r0]), int(self.row_start[r1])
        vals = self.values[s0:s1] if self.encoding == "sparse" else self._indexed(s0, s1 - s0)
        bit0, bit1 = r0 * cols, r1 * cols
        first, last = bit0 // 8, -(-bit1 // 8)
        bits = _BITS.to(self.mask.device)  # a no-op on the CPU; a model moved to a GPU decodes there
        keep = bits.index_select(0, self.mask[first:last].int()).flatten()[bit0 - first * 8:][: bit1 - bit0]
        return torch.zeros(r1 - r0, cols, dtype=vals.dtype, device=vals.device).masked_scatter(
            keep.view(r1 - r0, cols), vals)

    def rows(self, which: Tensor) -> Tensor:
        """The dense rows ``which`` (k,), (k, cols): one gather when every row starts on a byte."""
        cols = self.shape[1]
        if self.mask is None and 8 % self.bits == 0 and (cols * self.bits) % 8 == 0:
            row_bytes = self.index.view(self.shape[0], cols * self.bits // 8)[which]
            rows = self._table().index_select(0, row_bytes.flatten().int()).view(len(which), cols)
            return rows if self.row_scale is None else rows * self.row_scale[which, None]
        return torch.cat([self.tile(r, r + 1) for r in which.tolist()]) if len(which) else self.tile(0, 0)

    def _bound(self) -> Any:
        """This layer's native kernel (``native.bind``) or None, bound again after ``native.reset()``
        or when a buffer it reads was replaced (moved, converted, loaded anew). Runs once per layer
        and call, hence the plain dictionary reads (``self.index`` goes through
        ``nn.Module.__getattr__``)."""
        held, b = self._kernel, self._buffers
        reads = tuple(b[k] for k in _KERNEL_READS)
        if held is not None and held.generation == native.generation() and \
                all(x is y for x, y in zip(held.buffers, reads)):
            return held.call
        call = None
        # not with row scales: the kernels scale after the product, the tiles (this module's) before
        if native.library() is not None and self.is_cpu() and self.row_scale is None:
            call = native.bind(self.arrays(), [t for t in self._native_tensors().values() if t is not None])
        self._kernel = _Bound(native.generation(), reads, call)
        return call

    def is_cpu(self) -> bool:
        return (self.centroids if self.centroids is not None else self.values).is_cpu

    def arrays(self) -> LayerArrays:
        """The runtime's view of this layer (numpy views of its buffers, the codebook padded to
        the kernels' table size): what its C descriptor points into, while this module lives."""
        return native.arrays(self.encoding, self.bits, *self.shape, **self._native_tensors())

    def _native_tensors(self) -> dict[str, Tensor | None]:
        return {"index": self.index, "codebook": self._codebook() if self.centroids is not None else None,
                "values": self.values, "mask": self.mask, "row_start": self.row_start, "row_scale": self.row_scale}

    def rows_per_tile(self) -> int:
        return max(1, min(self.shape[0], TILE_FLOATS // self.shape[1]))

    def dense(self) -> Tensor:
        return self.tile(0, self.shape[0])

    def matmul_t(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ W.T (+ bias), x (..., cols) -> (..., rows): a native kernel for the shapes decoding
        uses where there is one (``native.py``), else one dequantized tile of W at a time."""
        rows, cols = self.shape
        call = self._bound() if x.is_cpu else None
        if call is not None and x.dtype == torch.float32 and x.numel() <= call.max_rows * cols:
            return call(x if x.is_contiguous() else x.contiguous(), bias)
        step = self.rows_per_tile()
        reusable = x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled())  # autograd keeps W
        buffer = _tile_buffer(step * cols) if reusable else None
        tile = (lambda r0, r1: self.tile(r0, r1, buffer[: (r1 - r0) * cols].view(r1 - r0, cols))) \
            if buffer is not None else self.tile
        if step >= rows:
            return F.linear(x, tile(0, rows), bias)
        if buffer is None:  # autograd (no out= products)
            out = x.new_empty(*x.shape[:-1], rows)
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                out[..., r0:r1] = F.linear(x, tile(r0, r1), None if bias is None else bias[r0:r1])
            return out
        # Each tile's product written in place into its columns of the output (BLAS takes the
        # row stride): a separate product and copy cost a tenth more at a batch of 64 beams x 5.
        x2 = x.reshape(-1, cols)
        out = x.new_empty(x2.shape[0], rows)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            if bias is None:
                torch.mm(x2, tile(r0, r1).t(), out=out[:, r0:r1])
            else:
                torch.addmm(bias[r0:r1], x2, tile(r0, r1).t(), out=out[:, r0:r1])
        return out.view(*x.shape[:-1], rows)


_buffers = threading.local()


def _tile_buffer(floats: int) -> Tensor:
    """This thread's scratch for dequantized tiles, grown as needed and reused: a fresh megabyte per
    call costs more in page faults than decoding the weights into it."""
    buffer = getattr(_buffers, "tile", None)
    if buffer is None or buffer.numel() < floats:
        buffer = _buffers.tile = torch.empty(floats)
    return buffer


class PackedLinear(nn.Module):
    def __init__(self, weight: PackedWeight, bias: Tensor | None) -> None:
        super().__init__()
        self.packed = weight
        self.out_features, self.in_features = weight.shape
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @property
    def weight(self) -> Tensor:  # for code that needs the dense matrix (fused projections, export)
        return self.packed.dense()

    def forward(self, x: Tensor) -> Tensor:
        return self.packed.matmul_t(x, self.bias)


class PackedEmbedding(nn.Module):
    """An embedding table kept packed: a lookup dequantizes only the rows asked for, and
    ``project`` serves as the tied output projection without building the table."""

    def __init__(self, weight: PackedWeight, padding_idx: int | None) -> None:
        super().__init__()
        self.packed = weight
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> Tensor:
        return self.packed.dense()

    def forward(self, ids: Tensor) -> Tensor:
        wanted, where = ids.flatten().unique(return_inverse=True)
        return self.packed.rows(wanted)[where].view(*ids.shape, self.embedding_dim)

    def project(self, x: Tensor) -> Tensor:
        return self.packed.matmul_t(x)


def packed_module(module: nn.Module, shape: torch.Size, parts: dict[str, Tensor], meta: dict[str, Any],
                  made_by: list[dict[str, Any]]) -> nn.Module:
    """The inference form of ``module`` (a Linear or Embedding) from a packed file's parts."""
    weight = PackedWeight.from_parts(shape, parts, meta, made_by)
    if isinstance(module, nn.Embedding):
        return PackedEmbedding(weight, module.padding_idx)
    return PackedLinear(weight, getattr(module, "bias", None))


def to_inference(model: nn.Module) -> nn.Module:
    """Replace every compressed layer (training form) by its packed inference form, in place: the
    one call from a retrained model to what a .sfz loads into."""
    for name, module in list(model.named_modules()):
        if isinstance(module, CompressedLinear):
            replace_module(model, name, PackedLinear(PackedWeight.from_codec(module.codec), module.bias))
        elif isinstance(module, CompressedEmbedding):
            replace_module(model, name, PackedEmbedding(PackedWeight.from_codec(module.codec), module.padding_idx))
    return model.eval()


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights hold in memory: parameters and persistent buffers, shared tensors
    once (tables computed at start, like the sinusoid positions, are not weights)."""
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
