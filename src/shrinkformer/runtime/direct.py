"""The runtime without numpy: a ``.sfz`` read with the standard library straight into the native
library's structs. Each compressed layer is laid out by ``csrc/prepare.c`` (runtime/layers.py's
layout, in C), the search runs in ``csrc/search.c`` and the tokenizer is ``csrc/tokenizer.c``; what
stays in Python is the file's header, the descriptors' addresses and the batching. A process that
translates imports neither numpy nor sentencepiece: smaller and quicker to start (see
results/benchmarks/runtime.json), with the same translations as the numpy-built engine
(tests/test_runtime.py)."""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Sequence

from ..errors import CheckpointError
from ..special_tokens import BOS, EOS, PAD
from . import contract, native, sfz
from .tokenizer import NativeTokenizer

F32 = ctypes.c_float
CODEBOOK_KINDS = (0, 1, 3)  # LAYER_LUT4, LAYER_BIN1, LAYER_SPARSE_LUT4: the AVX-512 variants serve these


class DirectModel:
    """A packed file's model in the native library's memory, ready for ``search``."""

    def __init__(self, path, beam_size: int | None = None, length_penalty: float | None = None,
                 int8: bool = False, half_cache: bool = False) -> None:
        """``int8``: 4-bit layers run with int8 activations (csrc/int8.c); ``half_cache``: attention
        keys and values kept in float16 (half a batch's memory). Both faster or smaller, not exact."""
        lib = native.library()
        if lib is None:
            raise RuntimeError("the native library is not available")
        self.lib, self.path, self.int8, self.half_cache = lib, path, int8, half_cache
        raw = sfz.read_raw(path)
        sfz.require_own_model(raw)
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(raw.data))
        self._raw, self._keep, self._layers = raw, [], []  # buffers the structs point into
        self.prepared: dict[str, contract.Layer] = {}  # each projection's packed_layer, by module name
        try:
            self.config = json.loads(raw.meta["config"])
            self._layer_meta = json.loads(raw.meta.get("layers", "{}"))
            for alias, stored in json.loads(raw.meta.get("aliases", "{}")).items():
                raw.entries[alias] = raw.entries[stored]
            self.tokenizer = NativeTokenizer(bytes(raw.entries["__tokenizer__"].data))
            self._build(beam_size, length_penalty)
        except CheckpointError:
            self.close()
            raise
        except (KeyError, ValueError, TypeError, IndexError) as err:
            self.close()
            raise CheckpointError(f"{raw.path}: inconsistent packed file ({type(err).__name__}: {str(err)[:120]})") \
                from None
        self._raw = raw.entries = None  # the file's bytes stay only where a struct points into them

    def _address(self, entry: sfz.Entry) -> int:
        return self._base + entry.offset

    def _floats(self, key: str) -> ctypes.Array | None:
        """A tensor as fp32 (float16 widened): a copy the structs may point to."""
        entry = self._raw.entries.get(key)
        if entry is None:
            return None
        out = (F32 * max(1, entry.count))()
        if entry.dtype == "F32":
            ctypes.memmove(out, self._address(entry), 4 * entry.count)
        elif entry.dtype == "F16":
            self.lib.half_to_float(self._address(entry), entry.count, out)
        else:
            raise ValueError(f"tensor {key!r} is {entry.dtype}, not a float")
        self._keep.append(out)
        return out

    def _bytes(self, key: str) -> tuple[int | None, int]:
        entry = self._raw.entries.get(key)
        return (None, 0) if entry is None else (self._address(entry), entry.count)

    def _tensor(self, key: str) -> int | None:
        a = self._floats(key)
        return None if a is None else ctypes.addressof(a)

    def layer(self, name: str) -> int:
        """A projection's packed_layer, prepared by csrc/prepare.c."""
        meta = self._layer_meta.get(name)
        if meta is None:
            weight = self._raw.entries[f"{name}.weight"]
            values = self._floats(f"{name}.weight")
            parts = contract.LayerParts(rows=weight.shape[0], cols=weight.shape[1], encoding=contract.ENCODINGS["dense"],
                                        values=ctypes.addressof(values), n_values=weight.count)
        else:
            rows, cols = (int(s) for s in meta["shape"])
            parts = contract.LayerParts(rows=rows, cols=cols, encoding=contract.ENCODINGS[meta["encoding"]],
                                        bits=int(meta.get("bits", 32)), count=int(meta.get("count", 0)),
                                        index_huffman=int(meta.get("index_coding") == "huffman"),
                                        mask_kind=contract.MASKS[meta.get("mask")],
                                        mask_symbols=int(meta.get("mask_symbols", 0)))
            for field in ("centroids", "values", "row_scale"):
                values = self._floats(f"{name}.{field}")
                if values is not None:
                    setattr(parts, field, ctypes.addressof(values))
                    setattr(parts, f"n_{field}", len(values) if self._raw.entries[f"{name}.{field}"].count else 0)
            huffman = parts.index_huffman
            parts.index, parts.index_bytes = self._bytes(f"{name}.index_huffman" if huffman else f"{name}.index")
            parts.index_lengths, parts.n_index_lengths = self._bytes(f"{name}.index_lengths")
            parts.mask, parts.mask_bytes = self._bytes(f"{name}.mask")
            parts.mask_lengths, parts.n_mask_lengths = self._bytes(f"{name}.mask_lengths")
        out = contract.Layer()
        status = self.lib.layer_prepare(ctypes.byref(parts), ctypes.byref(out))
        if status:
            raise CheckpointError(f"{self.path}: " + ("out of memory" if status == -2 else
                                                      f"inconsistent packed file (layer {name})"))
        out.wide = int(native.wide() and out.kind in CODEBOOK_KINDS)
        if self.int8 and out.kind == contract.LAYER_KINDS[("codebook", 4, False)]:
            status = self.lib.layer_to_int8(ctypes.byref(out))  # -1: a shape int8.c's blocks do not fit
            if status == -2:
                raise CheckpointError(f"{self.path}: out of memory")
            if status == 0:
                out.wide = int(native.vnni())
        try:
            native.group(out)
        except MemoryError:
            self.lib.layer_release(ctypes.byref(out))
            raise CheckpointError(f"{self.path}: out of memory") from None
        self._layers.append(out)
        self.prepared[name] = out
        return ctypes.addressof(out)

    def _block(self, prefix: str, decoder: bool) -> contract.DecoderLayer:
        s = contract.DecoderLayer()
        for j, name in enumerate(contract.PROJECTION_NAMES):
            if decoder or not name.startswith("cross"):
                s.proj[j], s.bias[j] = self.layer(f"{prefix}.{name}"), self._tensor(f"{prefix}.{name}.bias")
        for j, name in enumerate(contract.NORM_NAMES):
            if decoder or name != "cross_attn_norm":
                s.norm_weight[j], s.norm_bias[j] = self._norm(f"{prefix}.{name}")
        return s

    def _norm(self, name: str) -> tuple[int, int]:
        w, b = self._tensor(f"{name}.weight"), self._tensor(f"{name}.bias")
        if w is None or b is None:
            raise KeyError(f"{name}.weight")
        return w, b

    def _build(self, beam_size: int | None, length_penalty: float | None) -> None:
        spec, decode = self.config["model"], self.config.get("decode", {})
        C, P = int(spec["d_model"]), int(spec["max_positions"])
        self.spec, self.max_positions = spec, P
        blocks = {}
        for stack, count, decoder in (("encoder", spec["encoder_layers"], False), ("decoder", spec["decoder_layers"], True)):
            blocks[stack] = (contract.DecoderLayer * count)(*(self._block(f"{stack}.layers.{i}", decoder)
                                                                for i in range(count)))
        cross = [self.layer(f"decoder.layers.{i}.{n}") for i in range(spec["decoder_layers"]) for n in contract.CROSS_NAMES]
        cross_bias = [self._tensor(f"decoder.layers.{i}.{n}.bias") for i in range(spec["decoder_layers"])
                      for n in contract.CROSS_NAMES]
        embed = self.layer("embed_tokens")
        out = embed if spec.get("tie_embeddings", True) else self.layer("output_proj")
        positions = (F32 * (P * C))()
        self.lib.sinusoid_table(positions, P, C)
        self._keep += [blocks, positions]
        descs = {}
        for stack in ("encoder", "decoder"):
            final = self._norm(f"{stack}.final_norm") if spec.get("pre_norm", True) else (None, None)
            descs[stack] = contract.Decoder(
                layers=len(blocks[stack]), C=C, heads=spec["n_heads"], ffn=spec["d_ff"], vocab=spec["vocab_size"],
                pre_norm=int(spec.get("pre_norm", True)), eps=spec.get("eps", 1e-5), layer=ctypes.addressof(blocks[stack]),
                final_weight=final[0], final_bias=final[1], out=out if stack == "decoder" else None, embed=embed,
                positions=ctypes.addressof(positions), embed_scale=math.sqrt(C))
        arrays = ((ctypes.c_void_p * len(cross))(*cross), (ctypes.c_void_p * len(cross))(*cross_bias))
        self._keep += [descs, arrays]
        self.beam = beam_size or decode.get("beam_size", 5)
        self.search_desc = contract.Search(
            ctypes.addressof(descs["encoder"]), ctypes.addressof(descs["decoder"]), ctypes.addressof(arrays[0]),
            ctypes.addressof(arrays[1]), P, self.beam, decode.get("max_len_b", 10), PAD, BOS, EOS,
            decode.get("max_len_a", 1.2), decode.get("length_penalty", 1.0) if length_penalty is None else length_penalty,
            half_kv=int(self.half_cache))
        self.max_source = max(1, P // 2 - 1)

    def search(self, sources: Sequence[Sequence[int]]) -> list[list[int]]:
        """The best hypothesis of each source (ids without EOS; truncated, EOS added here)."""
        n = len(sources)
        if not n:
            return []
        rows = [list(s[: self.max_source]) + [EOS] for s in sources]
        S, P = max(len(r) for r in rows), self.max_positions
        src = (ctypes.c_int64 * (n * S))()
        for i, r in enumerate(rows):
            src[i * S: i * S + len(r)] = r  # the rest stays PAD (0)
        out, lengths = (ctypes.c_int64 * (n * P))(), (ctypes.c_int64 * n)()
        native.need_blas(n * self.beam, n * S)
        if self.lib.beam_search(ctypes.byref(self.search_desc), src, n, S, out, lengths):
            raise MemoryError(f"beam search of {n} sentences of {S} tokens: out of memory")
        return [out[i * P: i * P + lengths[i]] for i in range(n)]

    def close(self) -> None:
        for layer in self._layers:
            self.lib.layer_release(ctypes.byref(layer))
        self._layers, self.prepared = [], {}

    def __del__(self) -> None:
        if getattr(self, "_layers", None):
            self.close()
