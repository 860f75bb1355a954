"""The shared interface: a ``Codec`` owns one layer's compressed weight and produces the dense
weight on demand; ``CompressedLinear``/``CompressedEmbedding`` take the place of the original
module under the same name, so any training loop retrains a compressed model unchanged and any
model (ours, Hugging Face) can be compressed.

Every codec packs into one of two encodings, which is all the packed file knows about:
``codebook`` (b-bit indices into a few centroids, optionally only at the unmasked positions) and
``sparse`` (the surviving values and where they are).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .primitives import pack_bits, pack_mask, unpack_bits, unpack_mask


class MethodConfig:
    """What every method's frozen config dataclass shares: a method name, and a plain dict (the
    cache keys, the packed file's per-layer record and the reports all use it, never ``repr``)."""

    method: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}  # type: ignore[call-overload]


class Codec(nn.Module):
    method: ClassVar[str]

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        self.made_by: list[dict[str, Any]] = []  # each compression applied: method config and scope

    def forward(self) -> Tensor:  # the dense weight, shape self.shape
        raise NotImplementedError

    def pack(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON metadata for the packed file."""
        raise NotImplementedError


class CodebookCodec(Codec):
    """Weights drawn from ``centroids``; ``index`` says which, at every position or, with a
    ``mask``, only at the surviving positions (the rest are exactly zero). Centroids are trainable:
    indexing sends each centroid the summed gradient of its members (Deep Compression's
    retraining rule)."""

    method = "codebook"

    def __init__(self, shape: torch.Size, centroids: Tensor, index: Tensor, mask: Tensor | None = None,
                 train_centroids: bool = True) -> None:
        super().__init__(shape)
        self.centroids = nn.Parameter(centroids.detach().clone(), requires_grad=train_centroids)
        self.register_buffer("index", index.flatten().to(torch.uint8 if centroids.numel() <= 256 else torch.int64))
        self.register_buffer("mask", None if mask is None else mask.reshape(self.shape).bool())

    @property
    def bits(self) -> int:
        return max(1, (self.centroids.numel() - 1).bit_length())

    def forward(self) -> Tensor:
        # index_select, not self.centroids[index]: the indexing's backward adds the members' gradients
        # with atomics across threads (a different sum every run at 2 threads); index_select's adds
        # them in index order, as the indexing does on one thread, so runs repeat at any thread count.
        values = self.centroids.index_select(0, self.index.long())
        if self.mask is None:
            return values.view(self.shape)
        return torch.zeros(self.shape, dtype=values.dtype, device=values.device).masked_scatter(self.mask, values)

    def pack(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {"centroids": self.centroids.detach().float(), "index": pack_bits(self.index, self.bits)}
        meta: dict[str, Any] = {"encoding": "codebook", "bits": self.bits, "count": self.index.numel()}
        if self.mask is not None:
            meta["mask"], tensors["mask"] = pack_mask(self.mask)
        return tensors, meta

    @classmethod
    def unpack(cls, shape: torch.Size, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "CodebookCodec":
        mask = unpack_mask(meta["mask"], tensors["mask"], shape.numel()) if "mask" in meta else None
        index = unpack_bits(tensors["index"], meta["bits"], meta["count"])
        return cls(shape, tensors["centroids"], index, mask)


class SparseCodec(Codec):
    """A full-precision weight with a fixed mask: pruned positions are exactly zero and stay so
    while the surviving weights retrain."""

    method = "sparse"

    def __init__(self, weight: Tensor, mask: Tensor) -> None:
        super().__init__(weight.shape)
        self.weight = nn.Parameter(weight.detach().clone())
        self.register_buffer("mask", mask.bool().view(weight.shape))

    def forward(self) -> Tensor:
        return torch.where(self.mask, self.weight, torch.zeros((), dtype=self.weight.dtype))

    def pack(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        kind, mask = pack_mask(self.mask)
        return {"values": self.weight.detach()[self.mask].float(), "mask": mask}, {"encoding": "sparse", "mask": kind}

    @classmethod
    def unpack(cls, shape: torch.Size, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "SparseCodec":
        mask = unpack_mask(meta["mask"], tensors["mask"], shape.numel()).view(shape)
        return cls(torch.zeros(shape).masked_scatter(mask, tensors["values"]), mask)


ENCODINGS: dict[str, type[Codec]] = {"codebook": CodebookCodec, "sparse": SparseCodec}


class CompressedLinear(nn.Module):
    def __init__(self, codec: Codec, bias: Tensor | None) -> None:
        super().__init__()
        self.codec = codec
        self.out_features, self.in_features = codec.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def weight(self) -> Tensor:
        return self.codec()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class CompressedEmbedding(nn.Module):
    def __init__(self, codec: Codec, padding_idx: int | None) -> None:
        super().__init__()
        self.codec = codec
        self.num_embeddings, self.embedding_dim = codec.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> Tensor:
        return self.codec()

    def forward(self, x: Tensor) -> Tensor:
        return F.embedding(x, self.weight, self.padding_idx)


def wrap(module: nn.Module, codec: Codec) -> nn.Module:
    """The compressed stand-in for ``module``, in the same train/eval mode (a BS-Flex codec in
    training mode would move its centroids during evaluation)."""
    if isinstance(module, (nn.Embedding, CompressedEmbedding)):
        new: nn.Module = CompressedEmbedding(codec, module.padding_idx)
    else:
        new = CompressedLinear(codec, getattr(module, "bias", None))
    return new.train(module.training)


# Config type -> function building a codec from (config, weight, the mask of an earlier pruning or
# None). Each method file registers one.
CodecBuilder = Callable[[Any, Tensor, "Tensor | None"], Codec]
METHODS: dict[type, CodecBuilder] = {}


def register(config_type: type) -> Callable[[CodecBuilder], CodecBuilder]:
    def decorator(fn: CodecBuilder) -> CodecBuilder:
        METHODS[config_type] = fn
        return fn
    return decorator
