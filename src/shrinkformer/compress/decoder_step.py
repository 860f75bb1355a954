"""A whole decoding step in one native call (``csrc/decoder_step.c``). At batch 1 a step is a few
small products, and the PyTorch operators around them cost more than the products themselves
(about 150 operator dispatches for a few hundred microseconds of packed kernels); at batches of
many beams the products go to the same BLAS the PyTorch path uses, and the step still saves the
dispatches, the cache copies (beams reorder through an ancestry table) and per-beam memory.

It serves a ``Transformer`` in eval mode whose decoder projections and output projection all have
a native kernel: packed layers of the kinds ``native.py`` serves, and uncompressed fp32 layers.
Anything else (a training-form compressed layer, a quantized-attention hook, a GPU tensor, no
compiler) gets None from ``native_decoder`` and decodes through the PyTorch modules, with the same
results up to float rounding.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from . import native
from ..special_tokens import PAD
from .inference import PackedEmbedding, PackedLinear

# Rows (beams x sentences) up to which a native step runs when it cannot hand large products to
# BLAS: beyond, the PyTorch path's batched BLAS products win (the layer kernels' own crossover).
MAX_ROWS_WITHOUT_BLAS = native.MAX_ROWS


def max_rows() -> int | None:
    """The most rows a native step takes (None: any), where it can run at all."""
    return None if native.has_blas() else MAX_ROWS_WITHOUT_BLAS


_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "cross_attn.q_proj", "cross_attn.out_proj", "ffn.fc1", "ffn.fc2")  # decoder_step.c's order
_NORMS = ("self_attn_norm", "cross_attn_norm", "ffn_norm")
# the encoder in the same structs: no cross-attention
_ENCODER_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                        None, None, "ffn.fc1", "ffn.fc2")
_ENCODER_NORMS = ("self_attn_norm", None, "ffn_norm")


class _DecoderLayer(ctypes.Structure):
    _fields_ = [("proj", ctypes.c_void_p * 8), ("bias", ctypes.c_void_p * 8),
                ("norm_weight", ctypes.c_void_p * 3), ("norm_bias", ctypes.c_void_p * 3),
                ("self_k", ctypes.c_void_p), ("self_v", ctypes.c_void_p),
                ("cross_k", ctypes.c_void_p), ("cross_v", ctypes.c_void_p)]


class _Decoder(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int64), ("C", ctypes.c_int64), ("heads", ctypes.c_int64),
                ("ffn", ctypes.c_int64), ("vocab", ctypes.c_int64), ("capacity", ctypes.c_int64),
                ("S", ctypes.c_int64), ("pre_norm", ctypes.c_int64), ("eps", ctypes.c_float),
                ("layer", ctypes.c_void_p), ("final_weight", ctypes.c_void_p), ("final_bias", ctypes.c_void_p),
                ("out", ctypes.c_void_p), ("embed", ctypes.c_void_p), ("positions", ctypes.c_void_p),
                ("embed_scale", ctypes.c_float), ("key_padding", ctypes.c_void_p), ("ancestry", ctypes.c_void_p)]


def _descriptor(module: nn.Module) -> tuple[Any, list[Tensor]] | None:
    """A projection's C descriptor and the tensors it points into, or None (no kernel for it)."""
    if isinstance(module, (PackedLinear, PackedEmbedding)):
        return module.packed.descriptor()
    if type(module) in (nn.Linear, nn.Embedding):  # not a subclass: compressed layers compute their weight
        weight = module.weight.detach()
        layer = native.dense_descriptor(weight)
        return None if layer is None else (layer, [weight])
    return None


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeDecoder:
    """The decoder's weights as C descriptors, built once per model (and again when a weight
    changes); ``start`` opens a search over one batch of sources."""

    def __init__(self, model: nn.Module, layers: list[tuple[list[Any], list[Tensor | None]]], out: Any, embed: Any,
                 held: list[Tensor], encoder: list[tuple[list[Any], list[Tensor | None]]] | None,
                 cross: list[tuple[list[Any], list[Tensor | None]]] | None) -> None:
        self.cfg = model.cfg  # not the model: the cache below is keyed by it and must not keep it alive
        self._layers, self._out, self._embed, self._held, self._encoder = layers, out, embed, held, encoder
        self._cross = cross  # per decoder layer: cross-attention key and value projections (None: PyTorch's)
        self.fingerprint = _fingerprint(model)

    def encode(self, model: nn.Module, src: Tensor, beams: int = 1) -> tuple[Tensor, Tensor] | None:
        """``model.encode(src)`` in one native call at small batches (at batch 1 the PyTorch encoder
        was a tenth of a sentence), or None: a larger batch (PyTorch's fused projections and flash
        attention are left to it: not measured to lose there), or an encoder layer without a kernel."""
        if self._encoder is None or len(src) * beams > MAX_ROWS_WITHOUT_BLAS:
            return None
        n, S = src.shape
        src_mask = src.eq(PAD)
        key_padding = src_mask.to(torch.uint8).contiguous()
        structs = _layer_structs(self._encoder)
        desc = _Decoder(layers=self.cfg.encoder_layers, C=self.cfg.d_model, heads=self.cfg.n_heads, ffn=self.cfg.d_ff,
                        vocab=self.cfg.vocab_size, S=S, layer=ctypes.addressof(structs), **_norms(model.encoder),
                        embed=ctypes.addressof(self._embed), positions=model.positions.data_ptr(),
                        embed_scale=math.sqrt(self.cfg.d_model))
        lib = native.library()
        memory = torch.empty(n, S, self.cfg.d_model)
        work = torch.empty(lib.encoder_scratch(ctypes.addressof(desc), n * S))
        tokens = src.to(torch.int64).contiguous()
        lib.encoder_forward(ctypes.addressof(desc), tokens.data_ptr(), n, key_padding.data_ptr(), memory.data_ptr(),
                            work.data_ptr())
        return memory, src_mask

    def start(self, model: nn.Module, memory: Tensor, src_mask: Tensor, beams: int, capacity: int) -> "NativeSearch":
        return NativeSearch(self, model, memory, src_mask, beams, capacity)


class NativeSearch:
    """One batch's decoding state: the encoder's keys/values per decoder layer (one row per
    sentence), the self-attention keys/values per layer and the ancestry table that finds each
    row's prefix in them (see decoder_step.c)."""

    def __init__(self, decoder: NativeDecoder, model: nn.Module, memory: Tensor, src_mask: Tensor, beams: int,
                 capacity: int) -> None:
        cfg = decoder.cfg
        self.model = model
        n, S, C = memory.shape
        rows = n * beams
        self.decoder, self.beams, self.capacity = decoder, beams, capacity
        self._keep: list[Tensor] = [memory]
        self.key_padding = src_mask.to(torch.uint8).contiguous()
        self.ancestry = torch.empty(rows, capacity, dtype=torch.int32)
        structs = _layer_structs(decoder._layers)
        lib = native.library()
        memory = memory.contiguous()
        tile = torch.empty(lib.decoder_tile_floats()) if decoder._cross is not None else None
        for i, layer in enumerate(model.decoder.layers):
            if decoder._cross is None:
                cross_k = layer.cross_attn.k_proj(memory).contiguous()
                cross_v = layer.cross_attn.v_proj(memory).contiguous()
            else:  # one native call each (through PyTorch's modules they were 0.3 ms of a sentence at batch 1)
                (k_desc, v_desc), (k_bias, v_bias) = decoder._cross[i]
                cross_k, cross_v = torch.empty(n, S, C), torch.empty(n, S, C)
                for desc, bias, out in ((k_desc, k_bias, cross_k), (v_desc, v_bias, cross_v)):
                    lib.decoder_project(ctypes.addressof(desc), memory.data_ptr(), n * S, _address(bias),
                                        out.data_ptr(), tile.data_ptr())
            cache_k, cache_v = torch.empty(rows, capacity, C), torch.empty(rows, capacity, C)
            self._keep += [cross_k, cross_v, cache_k, cache_v]
            s = structs[i]
            s.self_k, s.self_v = cache_k.data_ptr(), cache_v.data_ptr()
            s.cross_k, s.cross_v = cross_k.data_ptr(), cross_v.data_ptr()
        self.struct = _Decoder(layers=cfg.decoder_layers, C=C, heads=cfg.n_heads, ffn=cfg.d_ff, vocab=cfg.vocab_size,
                               capacity=capacity, S=S, layer=ctypes.addressof(structs), **_norms(model.decoder),
                               out=ctypes.addressof(decoder._out), embed=ctypes.addressof(decoder._embed),
                               positions=model.positions.data_ptr(), embed_scale=math.sqrt(C),
                               key_padding=self.key_padding.data_ptr(), ancestry=self.ancestry.data_ptr())
        self._structs = structs
        self.scratch = torch.empty(lib.decoder_step_scratch(ctypes.addressof(self.struct), rows))
        # Reused by every step: a fresh (rows, vocab) tensor per step (10 MB at batch 64) raised
        # glibc's mmap threshold and left the heap holding ~100 MB after translating.
        self._x, self._logits = torch.empty(rows, cfg.d_model), torch.empty(rows, cfg.vocab_size)

    def step(self, last: Tensor, t: int, parent: Tensor | None, sentences: Tensor) -> Tensor:
        """Logits (M, vocab) for the newest tokens ``last`` (M,) at position t. ``parent`` (M,): the
        row of the previous step each row continues (None at t = 0); ``sentences``: the memory row
        of each group of beams. The logits are a view of a buffer the next step overwrites."""
        if t >= self.capacity:
            raise ValueError(f"step {t} beyond the cache's {self.capacity} positions")
        last = last.to(torch.int64).contiguous()
        x, logits = self._x[: len(last)], self._logits[: len(last)]
        parent = None if parent is None else parent.to(torch.int64).contiguous()
        sentences = sentences.to(torch.int64).contiguous()
        native.library().decoder_step(ctypes.addressof(self.struct), last.data_ptr(), x.data_ptr(), len(last), self.beams, t,
                                      _address(parent), sentences.data_ptr(), logits.data_ptr(), self.scratch.data_ptr())
        return logits


def _norms(stack: nn.Module) -> dict[str, Any]:
    """_Decoder's norm fields for an encoder or decoder stack: its final norm where it has one
    (pre-norm models)."""
    final, eps = stack.final_norm, stack.layers[0].self_attn_norm.eps
    if isinstance(final, nn.LayerNorm):
        return {"pre_norm": 1, "eps": eps, "final_weight": final.weight.data_ptr(), "final_bias": final.bias.data_ptr()}
    return {"pre_norm": 0, "eps": eps}


def _layer_structs(layers: list[tuple[list[Any], list[Tensor | None]]]) -> ctypes.Array:
    """C structs for layers' projections (in _PROJECTIONS order, None where a layer has none),
    biases and norms (in _NORMS order)."""
    structs = (_DecoderLayer * len(layers))()
    for s, (descriptors, tensors) in zip(structs, layers):
        for j, d in enumerate(descriptors):
            s.proj[j] = None if d is None else ctypes.addressof(d)
        biases, norms = tensors[:8], tensors[8:]
        for j, b in enumerate(biases):
            s.bias[j] = _address(b)
        for j in range(3):
            s.norm_weight[j], s.norm_bias[j] = _address(norms[2 * j]), _address(norms[2 * j + 1])
    return structs


def _fingerprint(model: nn.Module) -> tuple:
    """What the descriptors point into: the same tensors, unmodified (a version counter moves on
    every in-place change), and the same loaded library. Read off the modules' own dicts: the
    walk of ``state_dict`` or ``modules()``, with their prefixes and hooks, was a millisecond per search."""
    return (native._generation,) + tuple((id(t), t.data_ptr(), t._version) for t in _tensors(model))


def _tensors(model: nn.Module):
    stack = [model.decoder, model.embed_tokens, model.encoder]
    while stack:
        m = stack.pop()
        yield from (t for t in m._parameters.values() if t is not None)
        yield from (t for t in m._buffers.values() if t is not None)
        stack.extend(c for c in m._modules.values() if c is not None)


def native_decoder(model: nn.Module) -> NativeDecoder | None:
    """The model's native decoder (cached on the model), or None where a step cannot run natively."""
    if model.training or native.library() is None or not hasattr(model, "decoder"):
        return None
    if id(model) in _pinned:
        return _pinned[id(model)][1]
    cached = _decoders.get(model)
    if cached is not None and cached.fingerprint == _fingerprint(model):
        return cached
    built = _build(model)
    if built is not None:
        _decoders[model] = built
    return built


@contextlib.contextmanager
def pinned(model: nn.Module):
    """Within: ``native_decoder(model)`` is looked up once, for a caller that translates many
    batches and does not change the weights meanwhile (``Translator``): reading the fingerprint
    was half a millisecond per search, a twentieth of a sentence at batch 1."""
    if id(model) in _pinned or model.training:
        yield
        return
    _pinned[id(model)] = (model, native_decoder(model))
    try:
        yield
    finally:
        del _pinned[id(model)]


_pinned: dict[int, tuple[nn.Module, "NativeDecoder | None"]] = {}  # id -> (the model, kept alive meanwhile; its decoder)

# Beside the model rather than on it: ctypes descriptors cannot be deep-copied or pickled, and
# models are (copies to compress, checkpoints).
_decoders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _build(model: nn.Module) -> NativeDecoder | None:
    cfg = model.cfg
    if cfg.d_model % 8 or cfg.d_model % cfg.n_heads or any(a.prob_transform is not None
                                                            for a in model.attention_modules().values()):
        return None
    held: list[Tensor] = []
    eps: set[float] = set()
    layers = _layers(model.decoder.layers, _PROJECTIONS, _NORMS, held, eps)
    if layers is None:
        return None
    # the encoder natively too where every layer has a kernel; else it stays in PyTorch
    encoder = _layers(model.encoder.layers, _ENCODER_PROJECTIONS, _ENCODER_NORMS, held, eps)
    if isinstance(model.encoder.final_norm, nn.LayerNorm):
        eps.add(model.encoder.final_norm.eps)
    final = model.decoder.final_norm
    eps |= {final.eps} if isinstance(final, nn.LayerNorm) else set()
    if len(eps) > 1 or not isinstance(final, (nn.LayerNorm, nn.Identity)):
        return None
    out = _descriptor(model.embed_tokens if model.output_proj is None else model.output_proj)
    if out is None:
        return None
    held += out[1]
    embed = _descriptor(model.embed_tokens)
    if embed is None or model.positions.dtype != torch.float32 or not model.positions.is_contiguous():
        return None
    held += embed[1]
    # the cross-attention keys and values of the encoder's output (once per batch), natively where they can be
    cross = _layers(model.decoder.layers, ("cross_attn.k_proj", "cross_attn.v_proj"), (), held, eps)
    return NativeDecoder(model, layers, out[0], embed[0], held, encoder, cross)


def _layers(modules: nn.ModuleList, projections: tuple[str | None, ...], norms: tuple[str | None, ...],
            held: list[Tensor], eps: set[float]) -> list[tuple[list[Any], list[Tensor | None]]] | None:
    """Per layer: the C descriptors of its projections and its biases and norm tensors (None for a
    name that is None: a slot the layer does not have), or None where one has no kernel."""
    layers = []
    for layer in modules:
        descriptors, tensors = [], []
        for name in projections:
            if name is None:
                descriptors.append(None)
                tensors.append(None)
                continue
            module = layer.get_submodule(name)
            found = _descriptor(module)
            if found is None:
                return None
            descriptors.append(found[0])
            held += found[1]
            bias = getattr(module, "bias", None)
            tensors.append(None if bias is None else bias.detach().float().contiguous())
        for name in norms:
            if name is None:
                tensors += [None, None]
                continue
            norm = layer.get_submodule(name)
            if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
                return None
            eps.add(norm.eps)
            tensors += [norm.weight.detach().contiguous(), norm.bias.detach().contiguous()]
        if any(t is not None and (t.dtype != torch.float32 or not t.is_cpu) for t in tensors):
            return None
        held += [t for t in tensors if t is not None]
        layers.append((descriptors, tensors))
    return layers
