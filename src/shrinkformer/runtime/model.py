"""The Transformer as the runtime holds it: per layer its projections (``LayerArrays``), biases and
norms, in the order ``csrc/runtime.h`` declares them, plus the embedding, the output projection
and the sinusoid table. Built from a ``.sfz`` file (``load``), or from any source of named arrays
(``build``): the torch side hands in views of a model's own tensors, so both run one engine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from ..errors import CheckpointError
from . import contract, sfz
from .layers import LayerArrays

PROJECTIONS, NORMS, CROSS = contract.PROJECTION_NAMES, contract.NORM_NAMES, contract.CROSS_NAMES
# a compressed layer's tensors in the file (pack/format.py writes them)
# A packed layer's tensors (pack/format.py reads the same ones)
CODEC_FIELDS = ("centroids", "index", "mask", "values", "index_huffman", "index_lengths", "mask_huffman", "mask_lengths",
                "row_scale")


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs of a model configuration (``model/config.py``'s ModelConfig fields)."""

    d_model: int
    n_heads: int
    encoder_layers: int
    decoder_layers: int
    d_ff: int
    vocab_size: int
    max_positions: int
    pre_norm: bool
    tie_embeddings: bool
    eps: float = 1e-5  # torch.nn.LayerNorm's default, which the model uses

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class Block:
    """One encoder or decoder layer: 8 projection slots (None where an encoder has none)."""

    proj: list[LayerArrays | None]
    bias: list[np.ndarray | None]
    norms: list[tuple[np.ndarray, np.ndarray] | None]


@dataclass
class ModelArrays:
    spec: ModelSpec
    embed: LayerArrays
    out: LayerArrays
    positions: np.ndarray  # (max_positions, C) fp32
    encoder: list[Block]
    decoder: list[Block]
    cross: list[tuple[LayerArrays, np.ndarray | None, LayerArrays, np.ndarray | None]]
    encoder_norm: tuple[np.ndarray, np.ndarray] | None
    decoder_norm: tuple[np.ndarray, np.ndarray] | None

    @property
    def resident_bytes(self) -> int:
        layers = {id(x): x for x in [self.embed, self.out, *(p for b in self.encoder + self.decoder for p in b.proj),
                                     *(c[i] for c in self.cross for i in (0, 2))] if x is not None}
        arrays = [a for b in self.encoder + self.decoder for a in b.bias + [t for n in b.norms if n for t in n]]
        arrays += [a for c in self.cross for a in (c[1], c[3])]
        arrays += [t for n in (self.encoder_norm, self.decoder_norm) if n for t in n]
        return sum(x.resident_bytes for x in layers.values()) + sum(a.nbytes for a in arrays if a is not None)


def sinusoids(length: int, dim: int) -> np.ndarray:
    """The positional table, as ``model/transformer.py`` computes it: the frequencies and angles in
    float32, each exp, sin and cos in float64 rounded to float32. float32 transcendentals differ by
    a unit in the last place between libraries (numpy's and torch's disagree on 5% of a 256-wide
    table); rounded from float64 they are the correctly rounded values everywhere, so this table,
    ``sinusoid_table`` in csrc/decoder_step.c and its WebAssembly build are the same bits."""
    position = np.arange(length, dtype=np.float32)[:, None]
    x = np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim)
    freq = np.exp(x.astype(np.float64)).astype(np.float32)
    angle = (position * freq).astype(np.float32).astype(np.float64)
    table = np.zeros((length, dim), dtype=np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(angle), np.cos(angle)
    return table


Layer = Callable[[str], LayerArrays]  # a projection's weight by module name
Tensor = Callable[[str], "np.ndarray | None"]  # a dense tensor by state-dict name (None: absent)


def build(spec: ModelSpec, layer: Layer, tensor: Tensor, positions: np.ndarray | None = None) -> ModelArrays:
    """The model from named parts: ``layer(name)`` a module's weight, ``tensor(key)`` a bias or norm;
    each layer in the layout decoding runs fastest (``LayerArrays.for_decoding``)."""
    named = layer

    def layer(name: str) -> LayerArrays:  # noqa: F811 (the caller's, in decoding layout)
        return named(name).for_decoding()

    def block(prefix: str, projections: tuple[str | None, ...], norms: tuple[str | None, ...]) -> Block:
        proj = [None if n is None else layer(f"{prefix}.{n}") for n in projections]
        bias = [None if n is None else tensor(f"{prefix}.{n}.bias") for n in projections]
        return Block(proj, bias, [None if n is None else _norm(tensor, f"{prefix}.{n}") for n in norms])

    encoder_slots = tuple(n if not n.startswith("cross") else None for n in PROJECTIONS)
    encoder = [block(f"encoder.layers.{i}", encoder_slots, (NORMS[0], None, NORMS[2]))
               for i in range(spec.encoder_layers)]
    decoder = [block(f"decoder.layers.{i}", PROJECTIONS, NORMS) for i in range(spec.decoder_layers)]
    cross = [(layer(f"decoder.layers.{i}.{CROSS[0]}"), tensor(f"decoder.layers.{i}.{CROSS[0]}.bias"),
              layer(f"decoder.layers.{i}.{CROSS[1]}"), tensor(f"decoder.layers.{i}.{CROSS[1]}.bias"))
             for i in range(spec.decoder_layers)]
    embed = layer("embed_tokens")
    out = embed if spec.tie_embeddings else layer("output_proj")
    finals = [_norm(tensor, f"{stack}.final_norm") if spec.pre_norm else None for stack in ("encoder", "decoder")]
    table = sinusoids(spec.max_positions, spec.d_model) if positions is None else positions
    return ModelArrays(spec, embed, out, table, encoder, decoder, cross, *finals)


def _norm(tensor: Tensor, name: str) -> tuple[np.ndarray, np.ndarray]:
    w, b = tensor(f"{name}.weight"), tensor(f"{name}.bias")
    if w is None or b is None:
        raise KeyError(f"{name}.weight")
    return w, b


def load(path) -> tuple[ModelArrays, bytes, dict]:
    """A ``.sfz`` of our Transformer: the model, its SentencePiece model and the run configuration."""
    packed = sfz.read(path)
    sfz.require_own_model(packed)
    try:
        config = json.loads(packed.meta["config"])
        spec = ModelSpec.from_dict(config["model"])
        layers = json.loads(packed.meta["layers"])
        tensors = dict(packed.tensors)
        for alias, stored in json.loads(packed.meta.get("aliases", "{}")).items():
            tensors[alias] = tensors[stored]
        tokenizer = tensors.pop("__tokenizer__").tobytes()

        def layer(name: str) -> LayerArrays:
            if name in layers:
                meta = layers[name]
                parts = {f: tensors[f"{name}.{f}"] for f in CODEC_FIELDS if f"{name}.{f}" in tensors}
                return LayerArrays.from_parts(tuple(meta["shape"]), parts, meta)
            return LayerArrays.dense(tensors[f"{name}.weight"])

        def tensor(key: str) -> np.ndarray | None:
            value = tensors.get(key)
            return None if value is None else np.ascontiguousarray(value, dtype=np.float32)

        model = build(spec, layer, tensor)
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise CheckpointError(f"{packed.path}: inconsistent packed file ({type(err).__name__}: {str(err)[:120]})") \
            from None
    return model, tokenizer, config
