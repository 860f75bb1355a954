"""The native engine: a model's C descriptors, built once, and the three calls a search makes
(``csrc/decoder_step.c``): the encoder over a batch of sources, the cross-attention keys/values of
its output, and a decoding step for every row of beams. Buffers are numpy arrays.

Self-attention keys/values are written once per position and never move: beams reorder through an
ancestry table (which buffer row holds each position of each row's prefix), and the encoder's
keys/values are one row per sentence, not per beam (see decoder_step.c).
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

from ..special_tokens import BOS, EOS, PAD
from . import contract, native
from .model import ModelArrays


ENCODER_ROWS = 512  # source positions per encoder call (see Engine.encode)


def _address(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


class Engine:
    """``model``'s descriptors for the loaded native library; ``model`` must outlive it (the
    descriptors point into its arrays)."""

    def __init__(self, model: ModelArrays) -> None:
        lib = native.library()
        if lib is None:
            raise RuntimeError("the native library is not available")
        self.lib, self.model, spec = lib, model, model.spec
        native.load_blas()  # numpy has loaded OpenBLAS already: it costs nothing more
        wide = native.wide()
        self._descriptors: dict[int, contract.Layer] = {}

        def desc(layer) -> int | None:
            if layer is None:
                return None
            if id(layer) not in self._descriptors:
                d = self._descriptors[id(layer)] = layer.descriptor(wide)
                native.group(d)  # as direct.py's layers: the same kernels, the same sums
            return ctypes.addressof(self._descriptors[id(layer)])

        self._desc = desc
        self.encoder_layers = self._structs(model.encoder)
        self.decoder_layers = self._structs(model.decoder)
        self.cross = [(desc(k), _address(kb), desc(v), _address(vb)) for k, kb, v, vb in model.cross]
        self.embed, self.out = desc(model.embed), desc(model.out)
        self.embed_scale = math.sqrt(spec.d_model)
        self.select = lib.beam_select  # the search's selection half (search.py)
        # the whole search in C (csrc/search.c): the encoder's and the decoder's descriptors, whose
        # per-batch fields the search sets on its own copies
        self._encoder = self._descriptor(self.encoder_layers, spec.encoder_layers, model.encoder_norm)
        self._decoder = self._descriptor(self.decoder_layers, spec.decoder_layers, model.decoder_norm, out=self.out)
        self._cross = (ctypes.c_void_p * (2 * len(self.cross)))(*(c for k, kb, v, vb in self.cross for c in (k, v)))
        self._cross_bias = (ctypes.c_void_p * (2 * len(self.cross)))(*(b for k, kb, v, vb in self.cross for b in (kb, vb)))

    def __del__(self) -> None:
        for d in getattr(self, "_descriptors", {}).values():
            if d.gindex:  # the grouped layout is the library's; the rest points into the arrays
                self.lib.layer_release_grouped(ctypes.byref(d))

    def _structs(self, blocks) -> ctypes.Array:
        structs = (contract.DecoderLayer * len(blocks))()
        for s, block in zip(structs, blocks):
            for j, (p, b) in enumerate(zip(block.proj, block.bias)):
                s.proj[j], s.bias[j] = self._desc(p), _address(b)
            for j, norm in enumerate(block.norms):
                s.norm_weight[j], s.norm_bias[j] = (None, None) if norm is None else (_address(norm[0]), _address(norm[1]))
        return structs

    def _descriptor(self, layers: ctypes.Array, count: int, final, **fields) -> contract.Decoder:
        spec = self.model.spec
        norm = {"final_weight": _address(final[0]), "final_bias": _address(final[1])} if final is not None else {}
        return contract.Decoder(layers=count, C=spec.d_model, heads=spec.n_heads, ffn=spec.d_ff, vocab=spec.vocab_size,
                                pre_norm=int(spec.pre_norm), eps=spec.eps, layer=ctypes.addressof(layers),
                                embed=self.embed, positions=_address(self.model.positions),
                                embed_scale=self.embed_scale, **norm, **fields)

    def search(self, src: np.ndarray, cfg, max_positions: int) -> list[list[int]]:
        """``search.beam_search``'s hypotheses for padded sources (n, S), the loop in C."""
        src = np.ascontiguousarray(src, dtype=np.int64)
        n, S = src.shape
        desc = contract.Search(ctypes.addressof(self._encoder), ctypes.addressof(self._decoder),
                               ctypes.addressof(self._cross), ctypes.addressof(self._cross_bias), max_positions,
                               cfg.beam_size, cfg.max_len_b, PAD, BOS, EOS, cfg.max_len_a, cfg.length_penalty)
        out = np.empty((n, max_positions), dtype=np.int64)
        lengths = np.empty(n, dtype=np.int64)
        if n and self.lib.beam_search(ctypes.addressof(desc), src.ctypes.data, n, S, out.ctypes.data,
                                      lengths.ctypes.data):
            raise MemoryError(f"beam search of {n} sentences of {S} tokens: out of memory")
        return [out[i, : lengths[i]].tolist() for i in range(n)]

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """The encoder's output (n, S, C) for padded source ids (n, S) (PAD = 0). Sentences go
        through in blocks of about ``ENCODER_ROWS`` rows: the encoder's scratch is ~10 KB per row,
        30 MB for a batch of 64 long sentences at once, and a block's products are still large
        enough for BLAS (each tile of W is dequantized once per block)."""
        n, S = tokens.shape
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        key_padding = np.ascontiguousarray(tokens == 0, dtype=np.uint8)
        desc = self._descriptor(self.encoder_layers, self.model.spec.encoder_layers, self.model.encoder_norm, S=S)
        memory = np.empty((n, S, self.model.spec.d_model), dtype=np.float32)
        block = max(1, ENCODER_ROWS // S)
        work = np.empty(self.lib.encoder_scratch(ctypes.addressof(desc), min(n, block) * S), dtype=np.float32)
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            self.lib.encoder_forward(ctypes.addressof(desc), tokens[b0:b1].ctypes.data, b1 - b0,
                                     key_padding[b0:b1].ctypes.data, memory[b0:b1].ctypes.data, work.ctypes.data)
        return memory

    def start(self, memory: np.ndarray, key_padding: np.ndarray, beams: int, capacity: int) -> "Session":
        return Session(self, memory, key_padding, beams, capacity)


class Session:
    """One batch's decoding state: per decoder layer the encoder's keys/values (one row per
    sentence) and the self-attention cache, and the ancestry table."""

    def __init__(self, engine: Engine, memory: np.ndarray, key_padding: np.ndarray, beams: int, capacity: int) -> None:
        spec, lib = engine.model.spec, engine.lib
        n, S, C = memory.shape
        rows = n * beams
        self.engine, self.beams, self.capacity = engine, beams, capacity
        memory = np.ascontiguousarray(memory, dtype=np.float32)
        self.key_padding = np.ascontiguousarray(key_padding, dtype=np.uint8)
        self.ancestry = np.empty((rows, capacity), dtype=np.int32)
        structs = engine._structs(engine.model.decoder)
        tile = np.empty(max(1, lib.decoder_tile_floats()), dtype=np.float32)
        self._keep = [memory]
        for s, (k_desc, k_bias, v_desc, v_bias) in zip(structs, engine.cross):
            cross_k, cross_v = np.empty((n, S, C), dtype=np.float32), np.empty((n, S, C), dtype=np.float32)
            lib.decoder_project(k_desc, memory.ctypes.data, n * S, k_bias, cross_k.ctypes.data, tile.ctypes.data)
            lib.decoder_project(v_desc, memory.ctypes.data, n * S, v_bias, cross_v.ctypes.data, tile.ctypes.data)
            # written once per position (never zeroed: a row reads only positions it wrote)
            cache_k, cache_v = np.empty((rows, capacity, C), dtype=np.float32), np.empty((rows, capacity, C), np.float32)
            self._keep += [cross_k, cross_v, cache_k, cache_v]
            s.self_k, s.self_v, s.cross_k, s.cross_v = (a.ctypes.data for a in (cache_k, cache_v, cross_k, cross_v))
        self._structs = structs
        self.struct = engine._descriptor(structs, spec.decoder_layers, engine.model.decoder_norm, capacity=capacity, S=S,
                                         out=engine.out, key_padding=self.key_padding.ctypes.data,
                                         ancestry=self.ancestry.ctypes.data)
        self.scratch = np.empty(lib.decoder_step_scratch(ctypes.addressof(self.struct), rows), dtype=np.float32)
        # reused by every step: a fresh (rows, vocab) array per step raised glibc's mmap threshold
        # and left the heap holding the peak after translating
        self._x = np.empty((rows, C), dtype=np.float32)
        self._logits = np.empty((rows, spec.vocab_size), dtype=np.float32)

    def step(self, last: np.ndarray, t: int, parent: np.ndarray | None, sentences: np.ndarray) -> np.ndarray:
        """Logits (M, vocab) for the newest tokens ``last`` (M,) int64 at position t. ``parent``
        (M,): the row of the previous step each row continues (None at t = 0); ``sentences``: the
        memory row of each group of beams. The logits are a view the next step overwrites."""
        if t >= self.capacity:
            raise ValueError(f"step {t} beyond the cache's {self.capacity} positions")
        m = len(last)
        self.engine.lib.decoder_step(ctypes.addressof(self.struct), last.ctypes.data, self._x.ctypes.data, m, self.beams, t,
                                     None if parent is None else parent.ctypes.data, sentences.ctypes.data,
                                     self._logits.ctypes.data, self.scratch.ctypes.data)
        return self._logits[:m]
