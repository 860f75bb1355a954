"""Encoder-decoder Transformer (Vaswani et al., 2017), written to be read and to be compressed.

Every Linear is named for its role, so compression scopes select modules by name:
``encoder.layers.0.self_attn.q_proj``, ``decoder.layers.2.cross_attn.out_proj``,
``decoder.layers.1.ffn.fc1``. The token embedding (``embed_tokens``) is shared by encoder, decoder
and, when ``tie_embeddings`` is set, the output projection.

Shapes in comments: B batch, S source length, T target length, C d_model, H heads, D head size.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..special_tokens import BOS, EOS, PAD, UNK  # noqa: F401 (re-exported for model users)
from .config import ModelConfig

# Per decoder layer: "self_k"/"self_v" grow by one position each step, "cross_k"/"cross_v" are
# computed from the encoder output once.
LayerCache = dict[str, Tensor]


@dataclass
class Attentions:
    """Attention probabilities, one (B, H, T_q, T_k) tensor per layer."""

    encoder_self: list[Tensor] = field(default_factory=list)
    decoder_self: list[Tensor] = field(default_factory=list)
    cross: list[Tensor] = field(default_factory=list)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        # Applied to the attention probabilities (B, H, T_q, T_k) before they weight the values;
        # the analysis uses it to decode with quantized attention. None keeps the fused kernel.
        self.prob_transform: Callable[[Tensor], Tensor] | None = None
        self._fused_cache: dict[int, tuple[list[Tensor], list[int], tuple[Tensor, Tensor]]] = {}

    def _project(self, x: Tensor, *linears: nn.Linear) -> tuple[Tensor, ...]:
        """Several projections of one input as a single matmul: one large GEMM beats two or three
        small ones, and the modules keep their own names (and compressed weights) all the same.
        Layers kept packed for inference compute their own products: their dense weight never exists."""
        if any(hasattr(m, "packed") for m in linears):
            return tuple(m(x) for m in linears)
        weight, bias = self._fused(linears)
        return F.linear(x, weight, bias).chunk(len(linears), dim=-1)

    def _fused(self, linears: tuple[nn.Linear, ...]) -> tuple[Tensor, Tensor]:
        """The concatenated weights and biases. Without autograd (decoding) they are kept between
        calls — concatenating them anew was a tenth of a decoding step — and rebuilt when any of
        them changes (another tensor, or one modified in place: its version counter moves)."""
        tensors = [t for m in linears for t in (m.weight, m.bias)]
        if torch.is_grad_enabled():
            return torch.cat(tensors[0::2]), torch.cat(tensors[1::2])
        versions = [t._version for t in tensors]
        cached = self._fused_cache.get(len(linears))  # (tensors, their versions, fused)
        if cached is None or cached[1] != versions or any(a is not b for a, b in zip(cached[0], tensors)):
            cached = (tensors, versions, (torch.cat(tensors[0::2]), torch.cat(tensors[1::2])))
            self._fused_cache[len(linears)] = cached
        return cached[2]

    def _heads(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, H, T, D)
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        x: Tensor,  # (B, T, C) queries
        memory: Tensor | None = None,  # (B / g, S, C) keys/values for cross-attention (g beams each), else None
        key_mask: Tensor | None = None,  # (B, S), or (B / g, S) with memory: True where the key is padding
        causal: bool = False,
        cache: LayerCache | None = None,
        prefix: str = "self",
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if memory is None:  # self-attention: new keys/values extend the cached prefix
            q, k, v = (self._heads(t) for t in self._project(x, self.q_proj, self.k_proj, self.v_proj))
            if cache is not None:
                if f"{prefix}_k" in cache:
                    k = torch.cat([cache[f"{prefix}_k"], k], dim=2)
                    v = torch.cat([cache[f"{prefix}_v"], v], dim=2)
                cache[f"{prefix}_k"], cache[f"{prefix}_v"] = k, v
        else:
            q = self._heads(self.q_proj(x))
            if cache is not None and f"{prefix}_k" in cache:  # memory already projected
                k, v = cache[f"{prefix}_k"], cache[f"{prefix}_v"]
            else:
                k, v = (self._heads(t) for t in self._project(memory, self.k_proj, self.v_proj))
                if cache is not None:
                    cache[f"{prefix}_k"], cache[f"{prefix}_v"] = k, v

        # Beams of one sentence share its memory: memory has B / g rows for g queries each. Their
        # queries go in as one longer query sequence, so keys/values are neither copied per beam
        # nor read once per beam.
        beams = q.shape[0] // k.shape[0]
        if beams > 1:
            q = q.unflatten(0, (-1, beams)).transpose(1, 2).flatten(2, 3)  # (B/g, H, g*T, D)
        mask = None if key_mask is None else ~key_mask[:, None, None, :]  # (B, 1, 1, S) True=attend
        dropout = self.dropout if self.training else 0.0
        if need_weights or self.prob_transform is not None:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
            if causal:
                t, s = scores.shape[-2:]
                future = torch.ones(t, s, dtype=torch.bool, device=x.device).triu(s - t + 1)
                scores = scores.masked_fill(future, float("-inf"))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = scores.softmax(dim=-1)
            if self.prob_transform is not None:
                probs = self.prob_transform(probs)
            out = F.dropout(probs, dropout, self.training) @ v
        else:
            probs = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=causal and q.shape[2] > 1)
        if beams > 1:  # back to one row per beam
            out = out.unflatten(2, (beams, -1)).transpose(1, 2).flatten(0, 1)
            probs = None if probs is None else probs.unflatten(2, (beams, -1)).transpose(1, 2).flatten(0, 1)
        out = out.transpose(1, 2).flatten(2)  # (B, T, C)
        return self.out_proj(out), (probs if need_weights else None)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        h = F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(h)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.dropout, self.pre_norm = cfg.dropout, cfg.pre_norm

    def _residual(self, x: Tensor, norm: nn.LayerNorm, fn: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return x + F.dropout(fn(norm(x)), self.dropout, self.training)
        return norm(x + F.dropout(fn(x), self.dropout, self.training))

    def forward(self, x: Tensor, src_mask: Tensor, attn: list[Tensor] | None) -> Tensor:
        def self_attention(h: Tensor) -> Tensor:
            out, probs = self.self_attn(h, key_mask=src_mask, need_weights=attn is not None)
            if attn is not None:
                attn.append(probs)
            return out

        x = self._residual(x, self.self_attn_norm, self_attention)
        return self._residual(x, self.ffn_norm, self.ffn)


class DecoderLayer(EncoderLayer):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,  # (B, T, C)
        memory: Tensor,  # (B, S, C)
        src_mask: Tensor,  # (B, S)
        cache: LayerCache | None,
        attn: Attentions | None,
    ) -> Tensor:
        def self_attention(h: Tensor) -> Tensor:
            out, probs = self.self_attn(h, causal=True, cache=cache, prefix="self",
                                        need_weights=attn is not None)
            if attn is not None:
                attn.decoder_self.append(probs)
            return out

        def cross_attention(h: Tensor) -> Tensor:
            out, probs = self.cross_attn(h, memory, key_mask=src_mask, cache=cache, prefix="cross",
                                         need_weights=attn is not None)
            if attn is not None:
                attn.cross.append(probs)
            return out

        x = self._residual(x, self.self_attn_norm, self_attention)
        x = self._residual(x, self.cross_attn_norm, cross_attention)
        return self._residual(x, self.ffn_norm, self.ffn)


class Stack(nn.Module):
    """The layers of an encoder or decoder, plus the final norm that pre-norm needs."""

    def __init__(self, layers: list[nn.Module], cfg: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()


@contextmanager
def _initialisers_skipped():
    """torch.nn.init's initialisers as no-ops. On the meta device they run torch's Python reference
    kernels, whose first use imports torch._dynamo and sympy: 70 MB resident for nothing, more than
    the packed small model itself (Hugging Face's ``no_init_weights`` does the same)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def sinusoids(length: int, dim: int) -> Tensor:  # (length, dim)
    # on the CPU even in a skeleton (meta device): a computed table, not a weight a loader fills
    # exp/sin/cos in float64, rounded: the correctly rounded values, the same bits as the runtime's
    # table (runtime/model.py) and its C and WebAssembly builds; float32 ones differ across libraries
    position = torch.arange(length, dtype=torch.float32, device="cpu")[:, None]
    x = torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") * torch.tensor(-math.log(10000.0) / dim, device="cpu")
    angle = (position * torch.exp(x.double()).float()).double()
    table = torch.zeros(length, dim, device="cpu")
    table[:, 0::2], table[:, 1::2] = torch.sin(angle).float(), torch.cos(angle).float()
    return table


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        self.register_buffer("positions", sinusoids(cfg.max_positions, cfg.d_model), persistent=False)
        self.encoder = Stack([EncoderLayer(cfg) for _ in range(cfg.encoder_layers)], cfg)
        self.decoder = Stack([DecoderLayer(cfg) for _ in range(cfg.decoder_layers)], cfg)
        self.output_proj = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @classmethod
    def skeleton(cls, cfg: ModelConfig) -> "Transformer":
        """The model's structure with no storage behind its tensors (the meta device) and no
        initialisation, for a loader that assigns every tensor itself."""
        with _initialisers_skipped(), torch.device("meta"):
            return cls(cfg)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed_tokens.weight, std=self.cfg.d_model ** -0.5)
        with torch.no_grad():
            self.embed_tokens.weight[PAD].zero_()

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:  # (B, T) -> (B, T, C)
        if start + tokens.shape[1] > self.cfg.max_positions:
            raise ValueError(f"sequence of {start + tokens.shape[1]} tokens exceeds "
                             f"max_positions={self.cfg.max_positions}")
        x = self.embed_tokens(tokens) * math.sqrt(self.cfg.d_model)
        x = x + self.positions[start:start + tokens.shape[1]]
        return F.dropout(x, self.cfg.dropout, self.training)

    def encode(self, src: Tensor, attn: Attentions | None = None) -> tuple[Tensor, Tensor]:
        """(B, S) token ids -> memory (B, S, C) and the source padding mask (B, S)."""
        src_mask = src.eq(PAD)
        x = self.embed(src)
        for layer in self.encoder.layers:
            x = layer(x, src_mask, attn.encoder_self if attn is not None else None)
        return self.encoder.final_norm(x), src_mask

    def decode(
        self,
        tgt: Tensor,  # (B, T) decoder input, starting with BOS
        memory: Tensor,  # (B, S, C), or (B / g, S, C): g consecutive rows of tgt (beams) per source
        src_mask: Tensor,  # (B, S) or (B / g, S), as memory
        cache: list[LayerCache] | None = None,
        start: int = 0,  # position of tgt[:, 0]; the cache holds positions before it
        attn: Attentions | None = None,
    ) -> Tensor:  # (B, T, vocab) logits
        x = self.embed(tgt, start)
        for i, layer in enumerate(self.decoder.layers):
            x = layer(x, memory, src_mask, cache[i] if cache is not None else None, attn)
        x = self.decoder.final_norm(x)
        proj = self.embed_tokens if self.output_proj is None else self.output_proj
        if hasattr(proj, "project"):  # a packed (tied) embedding multiplies without unpacking the table
            return proj.project(x)
        return F.linear(x, proj.weight)

    def forward(self, src: Tensor, tgt: Tensor, need_weights: bool = False) -> tuple[Tensor, Attentions | None]:
        """Teacher-forced logits (B, T, vocab), and every layer's attention if ``need_weights``."""
        attn = Attentions() if need_weights else None
        memory, src_mask = self.encode(src, attn)
        return self.decode(tgt, memory, src_mask, attn=attn), attn

    def attention_modules(self) -> dict[str, MultiHeadAttention]:
        return {name: m for name, m in self.named_modules() if isinstance(m, MultiHeadAttention)}
