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
        out = {"method": self.method, **dataclasses.asdict(self)}  # type: ignore[call-overload]
        # Options added after files and caches were written appear only when set, so the keys
        # (and records) of configs made before them stay the same.
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata.get("only_when_set") and out[f.name] == f.default:
                del out[f.name]
        return out


def row_scale_field() -> Any:
    """A method's ``row_scale`` option (``RowScaledCodec``), absent from ``to_dict`` when off."""
    return dataclasses.field(default=False, metadata={"only_when_set": True})


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


class RowScaledCodec(Codec):
    """A codebook layer with one scale per output row: weight[r] = scale[r] * inner weight[r]
    (XNOR-Net's and Binarized NMT's per-row scaling, over any codebook method). The inner codec is
    built on the weights divided by their row's mean magnitude, so one small codebook serves rows
    of very different sizes; the scales retrain with everything else. They are stored in float16
    (2 bytes a row), and the weight is computed with the float16-rounded scales, so the packed
    layer holds exactly what was retrained."""

    method = "row-scaled"

    def __init__(self, inner: Codec, scale: Tensor) -> None:
        super().__init__(inner.shape)
        self.inner = inner
        self.scale = nn.Parameter(scale.detach().float().reshape(self.shape[0]).clone())

    @property
    def mask(self) -> Tensor | None:
        return getattr(self.inner, "mask", None)

    def scales(self) -> Tensor:
        """The float16-rounded scales, the gradient passed straight through the rounding."""
        return self.scale + (self.scale.half().float() - self.scale).detach()

    def forward(self) -> Tensor:
        return self.inner() * self.scales()[:, None]

    def pack(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, meta = self.inner.pack()
        if meta["encoding"] != "codebook":
            raise ValueError("row scales apply to codebook layers only")
        return {**tensors, "row_scale": self.scale.detach().half()}, {**meta, "row_scale": "f16"}

    @classmethod
    def unpack(cls, shape: torch.Size, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "RowScaledCodec":
        return cls(CodebookCodec.unpack(shape, tensors, meta), tensors["row_scale"].float())


def row_scales(weight: Tensor, mask: Tensor | None) -> Tensor:
    """Each row's mean magnitude over its (surviving) weights, float16-representable; 1 for a row
    with nothing left."""
    w = weight.detach().float().reshape(weight.shape[0], -1).abs()
    keep = None if mask is None else mask.reshape(w.shape)
    total = (w if keep is None else w * keep).sum(1)
    count = torch.full_like(total, w.shape[1]) if keep is None else keep.sum(1).float()
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.ones_like(total))
    return torch.where(mean > 0, mean, torch.ones_like(mean)).half().float()


def build_codec(config: Any, weight: Tensor, mask: Tensor | None = None) -> Codec:
    """The codec ``config``'s method makes of ``weight`` (its surviving positions under ``mask``);
    with ``config.row_scale`` the method runs on the row-normalized weights inside a
    ``RowScaledCodec``."""
    build = METHODS[type(config)]
    if not getattr(config, "row_scale", False):
        return build(config, weight, mask)
    scale = row_scales(weight, mask)
    return RowScaledCodec(build(config, weight.detach() / scale.view(-1, *[1] * (weight.dim() - 1)), mask), scale)


ENCODINGS: dict[str, type[Codec]] = {"codebook": CodebookCodec, "sparse": SparseCodec}


def unpack_codec(shape: torch.Size, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Codec:
    """A packed layer's codec from its tensors and metadata (entropy coding undone)."""
    if meta.get("row_scale"):
        return RowScaledCodec.unpack(shape, tensors, meta)
    return ENCODINGS[meta["encoding"]].unpack(shape, tensors, meta)


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
