"""One layer's weight as the runtime holds it: numpy arrays in the layout the native kernels read,
built from a packed file's parts (or from a dense fp32 weight), and its C descriptor.

Layouts (resident bytes match the packed file's, but where speed says otherwise):
- codebook: the bit-packed index stream (most significant bit first, as in the file) and the
  centroids padded to the kernels' table size; for a pruned layer the survivors' mask as a bitmask,
  each row's first survivor, and 16 bytes of slack after the indices (the kernels read 8 at a time);
  a dense 2- or 3-bit layer becomes 4-bit indices, the same values run by the 4-bit kernel;
- sparse: the surviving fp32 values, the bitmask and each row's first survivor;
- dense: the fp32 weight (layers left uncompressed, and any layer no kernel serves: 5- to 8-bit
  codebooks and codebooks with a scale per row are widened to fp32 at load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import contract
from ..pack import entropy


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """(n,) integers in [0, 2**bits) -> ceil(n * bits / 8) bytes, most significant bit first."""
    v = np.asarray(values).astype(np.uint8).ravel()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint8)
    return np.packbits(((v[:, None] >> shifts) & 1).astype(np.uint8).ravel())


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of ``pack_bits``: the first n integers, as int64."""
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8))[: n * bits].reshape(n, bits).astype(np.int64)
    return stream @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def decode_positions(codes: np.ndarray, n: int) -> np.ndarray:
    """Gap-coded positions (``compress/primitives.encode_positions``) -> a boolean mask of n entries."""
    c = codes.astype(np.int64)
    pos = np.cumsum(np.where(c == 0, 255, c)) - 1
    mask = np.zeros(n, dtype=bool)
    mask[pos[c != 0]] = True
    return mask


def unpack_mask(kind: str, data: np.ndarray, n: int) -> np.ndarray:
    if kind == "bitmask":
        return np.unpackbits(np.asarray(data, dtype=np.uint8))[:n].astype(bool)
    if kind == "positions":
        return decode_positions(data, n)
    raise ValueError(f"unknown mask encoding {kind!r}")


def entropy_decode(parts: dict[str, np.ndarray], meta: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A layer's parts and metadata with Huffman coding undone: bit-packed indices, gap-coded positions."""
    parts, meta = dict(parts), dict(meta)
    if meta.get("index_coding") == "huffman" and "index_huffman" in parts:  # (not undone already)
        idx = entropy.decode(parts.pop("index_huffman"), parts.pop("index_lengths"), meta["count"])
        parts["index"] = pack_bits(idx, meta["bits"])
    if meta.get("mask") == "huffman-positions" and "mask_lengths" in parts:
        gaps = entropy.decode(parts["mask"], parts.pop("mask_lengths"), meta["mask_symbols"])
        parts["mask"], meta["mask"] = gaps.astype(np.uint8), "positions"
    return parts, meta


PRUNED_DENSE_BELOW = 0.9  # see LayerArrays.for_decoding


@dataclass
class LayerArrays:
    """A (rows, cols) weight: ``encoding`` "codebook", "sparse" or "dense"."""

    rows: int
    cols: int
    encoding: str
    bits: int
    index: np.ndarray | None = None
    codebook: np.ndarray | None = None  # padded for the kernels
    values: np.ndarray | None = None
    mask: np.ndarray | None = None  # bitmask, most significant bit first
    row_start: np.ndarray | None = None  # (rows + 1,) int32: survivors before each row
    row_scale: np.ndarray | None = None  # (rows,) fp32: a codebook layer's scale per row (compress.base.RowScaledCodec)

    @classmethod
    def dense(cls, weight: np.ndarray) -> "LayerArrays":
        w = np.ascontiguousarray(weight, dtype=np.float32)
        return cls(w.shape[0], w.shape[1], "dense", 32, values=w)

    @classmethod
    def from_parts(cls, shape: tuple[int, int], parts: dict[str, np.ndarray], meta: dict[str, Any],
                   densify: bool = True) -> "LayerArrays":
        """From a packed file's parts and metadata (entropy coded or not); ``densify``: a layer no
        kernel serves becomes fp32 (the runtime runs every layer natively; the torch side keeps it
        packed and dequantizes tiles)."""
        rows, cols = (int(s) for s in shape)
        parts, meta = entropy_decode(parts, meta)
        n = rows * cols
        mask = unpack_mask(meta["mask"], parts["mask"], n) if "mask" in meta else None
        if meta["encoding"] == "codebook":
            bits, centroids, index = int(meta["bits"]), parts["centroids"].astype(np.float32), parts["index"]
            if mask is None and bits in (2, 3):  # as 4-bit indices: the 4-bit kernel runs them
                index, bits = pack_bits(unpack_bits(index, bits, int(meta["count"])), 4), 4
            layer = cls.codebook_layer(rows, cols, bits, centroids, index, mask)
            if "row_scale" in parts:
                layer.row_scale = np.ascontiguousarray(parts["row_scale"], dtype=np.float32).ravel()
                if layer.row_scale.size != rows:
                    raise ValueError(f"{layer.row_scale.size} row scales for {rows} rows")
        else:
            layer = cls(rows, cols, "sparse", 32, values=np.ascontiguousarray(parts["values"], dtype=np.float32))
            layer._set_mask(mask)
        return layer if layer.kind() is not None or not densify else cls.dense(layer.dequantize(0, rows))

    @classmethod
    def codebook_layer(cls, rows: int, cols: int, bits: int, centroids: np.ndarray, index: np.ndarray,
                       mask: np.ndarray | None) -> "LayerArrays":
        size = max(2 ** bits, 16 if mask is not None else 0)  # the pruned kernels read 16 entries
        codebook = np.zeros(size, dtype=np.float32)
        codebook[: centroids.size] = centroids.ravel()
        index = np.ascontiguousarray(index, dtype=np.uint8).ravel()
        if mask is not None:  # the pruned-layer kernels read 16 bytes at a time
            index = np.concatenate([index, np.zeros(16, dtype=np.uint8)])
        layer = cls(rows, cols, "codebook", bits, index=index, codebook=codebook)
        layer._set_mask(mask)
        return layer

    def _set_mask(self, mask: np.ndarray | None) -> None:
        if mask is None:
            return
        mask = mask.reshape(self.rows, self.cols)
        if mask.sum() >= 2 ** 31:
            raise ValueError(f"a pruned layer of {mask.sum()} survivors: row offsets are 32-bit")
        self.mask = np.packbits(mask.ravel())
        self.row_start = np.zeros(self.rows + 1, dtype=np.int32)
        self.row_start[1:] = np.cumsum(mask.sum(1))

    def kind(self) -> int | None:
        """The LAYER_* kind the kernels run it as, or None where none serves it."""
        if self.cols % 8 or self.row_scale is not None and self.mask is not None:  # (scales: unpruned layers)
            return None
        if self.encoding == "dense":
            return contract.LAYER_DENSE
        return contract.LAYER_KINDS.get((self.encoding, self.bits, self.mask is not None))

    def for_decoding(self) -> "LayerArrays":
        """The layout decoding runs fastest: a pruned layer of at most 3-bit codebooks and under
        ``PRUNED_DENSE_BELOW`` sparsity becomes a dense 4-bit layer whose 16 entries hold its
        centroids and a zero for the pruned positions (the same weights, exactly). At a beam's few
        rows the 4-bit kernel costs the same per weight whatever its value, while the pruned
        kernels pay per survivor and per mask byte: at 50% sparsity they were twice as slow
        (mixed-20x, whose embedding is a 50%-pruned 2-bit layer). Resident bytes grow to 4 bits a
        weight for such a layer.

        An unpruned 1-bit layer becomes a 4-bit layer of its two centroids, for the same reason: at
        a beam's rows the 4-bit kernel's lookups cost less per weight than the 1-bit kernel's
        partial-sum tables (batch-1 decoding of mixed-20x, whose 1-bit layers hold a fifth of the
        decoder's weights, in benchmarks/runtime.py), and the int8 mode runs it as a 4-bit layer."""
        if self.mask is None and self.encoding == "codebook" and self.bits == 1 and self.kind() is not None:
            codes = _codes(self.index, 1, 0, self.rows * self.cols)
            wide = LayerArrays.codebook_layer(self.rows, self.cols, 4, self.codebook[:2], pack_bits(codes, 4), None)
            wide.row_scale = self.row_scale
            return wide
        if self.mask is None or self.encoding != "codebook" or self.bits > 3 or self.row_scale is not None:
            return self
        n = self.rows * self.cols
        survivors = int(self.row_start[-1])
        if survivors < (1 - PRUNED_DENSE_BELOW) * n:
            return self
        keep = np.unpackbits(self.mask)[:n].astype(bool)
        zero = 2 ** self.bits  # the first unused entry
        codes = np.full(n, zero, dtype=np.int64)
        codes[keep] = _codes(self.index, self.bits, 0, survivors)
        centroids = np.concatenate([self.codebook[:zero], np.zeros(1, dtype=np.float32)])
        return LayerArrays.codebook_layer(self.rows, self.cols, 4, centroids, pack_bits(codes, 4), None)

    @property
    def resident_bytes(self) -> int:
        return sum(a.nbytes for a in (self.index, self.codebook, self.values, self.mask, self.row_start, self.row_scale)
                   if a is not None)

    def descriptor(self, wide: bool) -> contract.Layer:
        """The C descriptor; it holds addresses only: keep this object alive while it is used."""
        def address(a: np.ndarray | None) -> int | None:
            return None if a is None else a.ctypes.data
        return contract.Layer(self.kind(), int(wide and self.encoding == "codebook"), self.rows, self.cols, self.bits,
                              address(self.index), address(self.values), address(self.codebook), address(self.mask),
                              address(self.row_start), row_scale=address(self.row_scale))

    def dequantize(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of the dense weight, (r1 - r0, cols) fp32, in numpy: the reference the
        kernels' tiles match exactly (they are the stored values, times the row's scale where the
        layer has them: one product, as the codec computes it)."""
        tile = self._unscaled(r0, r1)
        return tile if self.row_scale is None else tile * self.row_scale[r0:r1, None]

    def _unscaled(self, r0: int, r1: int) -> np.ndarray:
        cols, count = self.cols, (r1 - r0) * self.cols
        if self.encoding == "dense":
            return self.values[r0:r1]
        if self.mask is None:
            codes = _codes(self.index, self.bits, r0 * cols, count)
            return self.codebook[codes].reshape(r1 - r0, cols)
        keep = np.unpackbits(self.mask)[r0 * cols: r1 * cols].astype(bool)
        s0, s1 = int(self.row_start[r0]), int(self.row_start[r1])
        vals = self.values[s0:s1] if self.encoding == "sparse" else self.codebook[_codes(self.index, self.bits, s0, s1 - s0)]
        out = np.zeros(count, dtype=np.float32)
        out[keep] = vals
        return out.reshape(r1 - r0, cols)


def _codes(index: np.ndarray, bits: int, start: int, count: int) -> np.ndarray:
    """Entries start..start+count of a b-bit index stream."""
    bit0 = start * bits
    first, last = bit0 // 8, -(-(bit0 + count * bits) // 8)
    stream = np.unpackbits(index[first:last])[bit0 - first * 8:][: count * bits].reshape(count, bits).astype(np.int64)
    return stream @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
