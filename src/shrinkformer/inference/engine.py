"""A torch ``Transformer``'s runtime engine: its weights handed to the runtime (``runtime/``) as
numpy views of the model's own tensors, so the torch side's ``translate``/``evaluate`` decode with
the same engine and the same beam search as ``shrinkformer-translate``, not a copy kept in step.

It serves a model in eval mode whose projections are packed layers (``inference.py``) or plain fp32
``nn.Linear``/``nn.Embedding``. Anything else (training-form compressed layers, the attention
analysis's hooks, a GPU tensor, no native library) gets None and decodes through the PyTorch
modules (``model/search.py``), with the same results up to float rounding.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch
from torch import Tensor, nn

from . import native
from ..runtime.engine import Engine
from ..runtime.layers import LayerArrays
from ..runtime.model import ModelArrays, ModelSpec, build
from .layers import PackedEmbedding, PackedLinear


class _Unsupported(Exception):
    pass


def _layer(module: nn.Module) -> LayerArrays:
    if isinstance(module, (PackedLinear, PackedEmbedding)):
        packed = module.packed
        if not packed.is_cpu():
            raise _Unsupported
        arrays = packed.arrays()
        return arrays if arrays.kind() is not None else LayerArrays.dense(packed.dense().numpy())
    if type(module) in (nn.Linear, nn.Embedding):  # not a subclass: compressed layers compute their weight
        weight = module.weight.detach()
        if weight.dtype != torch.float32 or not weight.is_cpu or weight.shape[1] % 8:
            raise _Unsupported
        return LayerArrays.dense(weight.contiguous().numpy())
    raise _Unsupported


def _tensor(model: nn.Module, key: str) -> np.ndarray | None:
    module_name, _, field = key.rpartition(".")
    try:
        t = getattr(model.get_submodule(module_name), field)
    except AttributeError:
        return None
    if t is None:
        return None
    if not t.is_cpu or t.dtype != torch.float32:
        raise _Unsupported
    return t.detach().contiguous().numpy()


def runtime_model(model: nn.Module) -> ModelArrays | None:
    """The runtime's view of ``model`` (no weight copied but those it must widen), or None where
    the runtime cannot serve it."""
    cfg = model.cfg
    if any(a.prob_transform is not None for a in model.attention_modules().values()) or cfg.d_model % 8:
        return None
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if len({m.eps for m in norms}) > 1 or any(m.weight is None for m in norms):
        return None
    spec = ModelSpec(d_model=cfg.d_model, n_heads=cfg.n_heads, encoder_layers=cfg.encoder_layers,
                     decoder_layers=cfg.decoder_layers, d_ff=cfg.d_ff, vocab_size=cfg.vocab_size,
                     max_positions=cfg.max_positions, pre_norm=cfg.pre_norm,
                     tie_embeddings=model.output_proj is None, eps=norms[0].eps if norms else 1e-5)
    try:
        return build(spec, lambda name: _layer(model.get_submodule(name)), lambda key: _tensor(model, key),
                     positions=model.positions.contiguous().numpy())
    except _Unsupported:
        return None


def _fingerprint(model: nn.Module) -> tuple:
    """What the engine points into: the same tensors, unmodified (a version counter moves on every
    in-place change), and the same loaded library. Read off the modules' own dicts: the walk of
    ``state_dict`` or ``modules()``, with their prefixes and hooks, was a millisecond per search."""
    return (native.generation(),) + tuple((id(t), t.data_ptr(), t._version) for t in _tensors(model))


def _tensors(model: nn.Module):
    stack = [model.decoder, model.embed_tokens, model.encoder]
    while stack:
        m = stack.pop()
        yield from (t for t in m._parameters.values() if t is not None)
        yield from (t for t in m._buffers.values() if t is not None)
        stack.extend(c for c in m._modules.values() if c is not None)


class _Cached:
    def __init__(self, model: nn.Module, engine: Engine) -> None:
        self.engine, self.fingerprint = engine, _fingerprint(model)
        self.held = list(_tensors(model))  # what the engine's views point into stays alive with it


# Beside the model rather than on it: ctypes descriptors cannot be deep-copied or pickled, and models are.
_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_pinned: dict[int, tuple[nn.Module, Engine | None]] = {}  # id -> (the model, kept alive meanwhile; its engine)


def native_engine(model: nn.Module) -> Engine | None:
    """The model's runtime engine (cached beside the model, rebuilt when a weight changed), or None."""
    if model.training or native.library() is None or not hasattr(model, "decoder"):
        return None
    if id(model) in _pinned:
        return _pinned[id(model)][1]
    cached = _engines.get(model)
    if cached is not None and cached.fingerprint == _fingerprint(model):
        return cached.engine
    arrays = runtime_model(model)
    if arrays is None:  # not cached: what it cannot serve (a hook) may change without any tensor changing
        return None
    built = _Cached(model, Engine(arrays))
    _engines[model] = built
    return built.engine


@contextlib.contextmanager
def pinned(model: nn.Module):
    """Within: ``native_engine(model)`` is looked up once, for a caller that translates many
    batches and does not change the weights meanwhile (``Translator``): reading the fingerprint
    was half a millisecond per search, a twentieth of a sentence at batch 1."""
    if id(model) in _pinned or model.training:
        yield
        return
    _pinned[id(model)] = (model, native_engine(model))
    try:
        yield
    finally:
        del _pinned[id(model)]


def beam_search(engine: Engine, src: Tensor, cfg, max_positions: int) -> list[list[int]]:
    """The runtime's beam search on a torch batch of source ids."""
    from ..runtime.search import beam_search as search
    return search(engine, src.numpy(), cfg, max_positions)
