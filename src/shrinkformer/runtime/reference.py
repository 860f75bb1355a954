"""The engine in numpy: what the runtime runs where its native library is not there (no compiler
at install, ``SHRINKFORMER_NATIVE=0``). The same calls as ``engine.py`` and the same arithmetic as
the PyTorch model (LayerNorm with biased variance, softmax(q.k / sqrt(D)), ReLU), so translations
match the native engine's up to float rounding. Weights are dequantized once, when the engine is
built: simple and fast enough for a fallback, at the cost of the dense model in memory."""

from __future__ import annotations

import math

import numpy as np

from .model import Block, ModelArrays


def _dense(layer) -> np.ndarray | None:
    return None if layer is None else np.ascontiguousarray(layer.dequantize(0, layer.rows))


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ w.T
    return y if b is None else y + b


def _norm(x: np.ndarray, norm: tuple[np.ndarray, np.ndarray], eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps)) * norm[0] + norm[1]


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class _Layer:
    def __init__(self, block: Block) -> None:
        self.w = [_dense(p) for p in block.proj]
        self.b, self.norms = block.bias, block.norms


class ReferenceEngine:
    select = None  # search.py's numpy selection

    def __init__(self, model: ModelArrays) -> None:
        self.model, spec = model, model.spec
        self.embed, self.out = _dense(model.embed), _dense(model.out)
        self.encoder = [_Layer(b) for b in model.encoder]
        self.decoder = [_Layer(b) for b in model.decoder]
        self.cross = [(_dense(k), kb, _dense(v), vb) for k, kb, v, vb in model.cross]
        self.heads, self.eps, self.pre = spec.n_heads, spec.eps, spec.pre_norm

    def _embed(self, tokens: np.ndarray, start: int) -> np.ndarray:
        spec = self.model.spec
        x = self.embed[tokens] * np.float32(math.sqrt(spec.d_model))
        return (x + self.model.positions[start:start + tokens.shape[-1]]).astype(np.float32)

    def _heads(self, x: np.ndarray) -> np.ndarray:  # (B, T, C) -> (B, H, T, D)
        B, T, C = x.shape
        return x.reshape(B, T, self.heads, C // self.heads).transpose(0, 2, 1, 3)

    def _attend(self, q, k, v, skip: np.ndarray | None) -> np.ndarray:  # (B, T, C) each -> (B, T, C)
        qh, kh, vh = self._heads(q), self._heads(k), self._heads(v)
        scores = qh @ kh.transpose(0, 1, 3, 2) / np.float32(math.sqrt(qh.shape[-1]))
        if skip is not None:
            scores = np.where(skip[:, None, None, :], -np.inf, scores)
        out = _softmax(scores) @ vh
        B, H, T, D = out.shape
        return out.transpose(0, 2, 1, 3).reshape(B, T, H * D)

    def _block(self, layer: _Layer, x: np.ndarray, slot: int, norm: int, fn) -> np.ndarray:
        h = _norm(x, layer.norms[norm], self.eps) if self.pre else x
        x = x + fn(h)
        return x if self.pre else _norm(x, layer.norms[norm], self.eps)

    def _ffn(self, layer: _Layer, h: np.ndarray) -> np.ndarray:
        return _linear(np.maximum(_linear(h, layer.w[6], layer.b[6]), 0), layer.w[7], layer.b[7])

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        skip = tokens == 0
        x = self._embed(tokens, 0)
        for layer in self.encoder:
            def self_attention(h, layer=layer):
                q, k, v = (_linear(h, layer.w[i], layer.b[i]) for i in range(3))
                return _linear(self._attend(q, k, v, skip), layer.w[3], layer.b[3])
            x = self._block(layer, x, 0, 0, self_attention)
            x = self._block(layer, x, 6, 2, lambda h, layer=layer: self._ffn(layer, h))
        if self.model.encoder_norm is not None:
            x = _norm(x, self.model.encoder_norm, self.eps)
        return x.astype(np.float32)

    def start(self, memory: np.ndarray, key_padding: np.ndarray, beams: int, capacity: int) -> "ReferenceSession":
        return ReferenceSession(self, memory, key_padding, beams)


class ReferenceSession:
    def __init__(self, engine: ReferenceEngine, memory: np.ndarray, key_padding: np.ndarray, beams: int) -> None:
        self.engine, self.beams, self.skip = engine, beams, key_padding.astype(bool)
        self.cross = [(_linear(memory, k, kb), _linear(memory, v, vb)) for k, kb, v, vb in engine.cross]
        self.cache: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(engine.decoder)

    def step(self, last: np.ndarray, t: int, parent: np.ndarray | None, sentences: np.ndarray) -> np.ndarray:
        e, k = self.engine, self.beams
        x = e._embed(np.asarray(last)[:, None], t)  # (M, 1, C)
        rows = np.repeat(np.asarray(sentences), k)  # each row's memory row
        for i, layer in enumerate(e.decoder):
            def self_attention(h, i=i, layer=layer):
                q, kk, v = (_linear(h, layer.w[j], layer.b[j]) for j in range(3))
                if self.cache[i] is not None:
                    ck, cv = self.cache[i]
                    kk, v = np.concatenate([ck[parent], kk], 1), np.concatenate([cv[parent], v], 1)
                self.cache[i] = (kk, v)
                return _linear(e._attend(q, kk, v, None), layer.w[3], layer.b[3])

            def cross_attention(h, i=i, layer=layer):
                q = _linear(h, layer.w[4], layer.b[4])
                ck, cv = self.cross[i]
                return _linear(e._attend(q, ck[rows], cv[rows], self.skip[rows]), layer.w[5], layer.b[5])
            x = e._block(layer, x, 0, 0, self_attention)
            x = e._block(layer, x, 4, 1, cross_attention)
            x = e._block(layer, x, 6, 2, lambda h, layer=layer: e._ffn(layer, h))
        if e.model.decoder_norm is not None:
            x = _norm(x, e.model.decoder_norm, e.eps)
        return np.ascontiguousarray((x[:, 0] @ e.out.T).astype(np.float32))
