"""The packed model file (``.sfz``): safetensors for tensors, JSON metadata, a checksum. No pickle.

Tensors: per compressed module ``{name}.{field}`` (bit-packed indices, codebook, sparse values and
mask), the uncompressed rest in fp32 under its state-dict name, and the tokenizer as bytes.
Metadata: format name and version, the run config, each compressed module's shape, kind and
encoding, and a SHA-256 over every tensor's bytes. The file's size on disk is the compressed size
that compression ratios are computed from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..compress.api import codecs, replace_module
from ..compress.base import CompressedEmbedding, unpack_codec, wrap
from ..inference.layers import packed_module
from ..compress.primitives import encode_positions, pack_bits, unpack_bits, unpack_mask
from . import entropy
from ..config import RunConfig, config_from_dict
from ..runtime import sfz
from ..runtime.model import CODEC_FIELDS
from ..data.tokenizer import Tokenizer
from ..errors import CheckpointError, ShrinkformerError
from ..io import atomic_write
from ..model.transformer import Transformer

FORMAT, VERSION = "shrinkformer-packed", 1


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over the metadata (but the digest itself) and every tensor's name and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes() if tensors[name].numel() else b"")
    return h.hexdigest()




HEADER_BYTES_PER_TENSOR = 100  # what one more tensor costs in the safetensors header, about


def entropy_code(parts: dict[str, torch.Tensor], meta: dict[str, Any], n: int) -> None:
    """Huffman-code a layer's indices and mask positions in place where the file gets smaller
    (an extra tensor's header entry included)."""
    def huff(symbols: torch.Tensor, alphabet: int) -> tuple[torch.Tensor, torch.Tensor]:
        data, lengths = entropy.encode(symbols.numpy(), alphabet)
        return torch.from_numpy(data), torch.from_numpy(lengths)

    if "index" in parts:
        data, lengths = huff(unpack_bits(parts["index"], meta["bits"], meta["count"]), 2 ** meta["bits"])
        if data.numel() + lengths.numel() + HEADER_BYTES_PER_TENSOR < parts["index"].numel():
            del parts["index"]
            parts["index_huffman"], parts["index_lengths"], meta["index_coding"] = data, lengths, "huffman"
    if "mask" in parts:
        gaps = encode_positions(unpack_mask(meta["mask"], parts["mask"], n))
        data, lengths = huff(gaps.long(), 256)
        if data.numel() + lengths.numel() + HEADER_BYTES_PER_TENSOR < parts["mask"].numel():
            parts["mask"], parts["mask_lengths"] = data, lengths
            meta["mask"], meta["mask_symbols"] = "huffman-positions", gaps.numel()


def entropy_decode(parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Undo ``entropy_code``: back to bit-packed indices and gap-coded positions."""
    if meta.get("index_coding") == "huffman":
        idx = entropy.decode(parts.pop("index_huffman").numpy(), parts.pop("index_lengths").numpy(), meta["count"])
        parts["index"] = pack_bits(torch.from_numpy(idx), meta["bits"])
    if meta.get("mask") == "huffman-positions":
        gaps = entropy.decode(parts["mask"].numpy(), parts.pop("mask_lengths").numpy(), meta["mask_symbols"])
        parts["mask"], meta["mask"] = torch.from_numpy(gaps.astype("uint8")), "positions"


def pack_model(model: nn.Module, huffman: bool = False, half_dense: bool = False,
               aliases: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and per-module metadata of a (partly) compressed model. ``half_dense``: what is not
    compressed (biases, norms, layers left dense) is stored in fp16; loading widens it again.
    A tensor the state dict holds under several names (a Hugging Face model's tied embeddings) is
    stored once; ``aliases`` receives each other name and the one stored."""
    dense_dtype = torch.float16 if half_dense else torch.float32
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    compressed = codecs(model)
    for name, codec in compressed.items():
        parts, meta = codec.pack()
        if huffman:
            entropy_code(parts, meta, codec.shape.numel())
        kind = "embedding" if isinstance(model.get_submodule(name), CompressedEmbedding) else "linear"
        layers[name] = {"shape": list(codec.shape), "kind": kind, **meta, "made_by": codec.made_by}
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in parts.items()})
    stored: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, value in model.state_dict().items():
        if ".codec." not in key:  # a codec's tensors, under its name or a tied one, are packed above
            where = (value.data_ptr(), tuple(value.shape))
            if where in stored and value.numel():
                if aliases is not None:
                    aliases[key] = stored[where]
                continue
            stored[where] = key
            tensors[key] = value.detach().to(dense_dtype).contiguous() if value.is_floating_point() \
                else value.contiguous()
    return tensors, layers


def round_dense_to_half(model: nn.Module) -> None:
    """Round in place what ``pack_model(half_dense=True)`` stores in fp16, so the model in memory is
    exactly the one the file holds."""
    compressed = codecs(model)
    with torch.no_grad():
        for key, value in model.state_dict(keep_vars=True).items():
            if value.is_floating_point() and not any(key.startswith(f"{name}.codec.") for name in compressed):
                value.data.copy_(value.data.half().float())


@dataclass(frozen=True)
class PackedFile:
    """What ``write_packed`` wrote: the file's size and where its bytes went."""

    path: Path
    file_bytes: int
    layer_bytes: dict[str, int]  # each compressed layer's tensors (indices, codebook, mask, values)
    tokenizer_bytes: int


def encode_packed(model: Transformer, cfg: RunConfig, tokenizer: Tokenizer, extra: dict[str, Any] | None = None,
                  huffman: bool = False, half_dense: bool = False) -> tuple[bytes, dict[str, int], int]:
    """The packed file's bytes, each compressed layer's share of them, and the tokenizer's."""
    return encode_file(model, {"config": json.dumps(cfg.to_dict())}, {"__tokenizer__": tokenizer.model_proto},
                       extra, huffman, half_dense)


def encode_file(model: nn.Module, header: dict[str, str], blobs: dict[str, bytes], extra: dict[str, Any] | None = None,
                huffman: bool = False, half_dense: bool = False) -> tuple[bytes, dict[str, int], int]:
    """Any model's packed file: its tensors, ``header`` entries in the metadata (what rebuilds the
    model) and ``blobs`` (tokenizer files) as byte tensors. Returns the bytes, each compressed
    layer's share of them and the blobs' total."""
    aliases: dict[str, str] = {}
    tensors, layers = pack_model(model, huffman, half_dense, aliases)
    layer_bytes = {name: sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith(f"{name}.")
                             and k[len(name) + 1:] in CODEC_FIELDS) for name in layers}
    for name, blob in blobs.items():
        tensors[name] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    meta = {"format": FORMAT, "version": str(VERSION), **header, "layers": json.dumps(layers),
            "extra": json.dumps(extra or {})}
    if aliases:  # absent otherwise: files without tied tensors stay as they were
        meta["aliases"] = json.dumps(aliases)
    meta["sha256"] = _digest(tensors, meta)
    return canonical(st_save(tensors, metadata=meta)), layer_bytes, sum(len(b) for b in blobs.values())


def canonical(data: bytes) -> bytes:
    """safetensors bytes with the metadata in sorted order. safetensors writes its metadata map in a
    per-process hash order, so one model gave files that differ from run to run; sorted, the same
    model always gives the same bytes. Readers see the same header (JSON objects are unordered)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors pads it
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def write_packed(model: Transformer, cfg: RunConfig, tokenizer: Tokenizer, path: Path,
                 extra: dict[str, Any] | None = None, huffman: bool = False, half_dense: bool = False) -> PackedFile:
    """Write atomically. ``huffman`` adds Deep Compression's entropy stage to indices and sparse
    positions; ``half_dense`` stores the uncompressed parameters in fp16 (round the model first,
    ``round_dense_to_half``, for the file to hold exactly the model in memory)."""
    data, layer_bytes, tokenizer_bytes = encode_packed(model, cfg, tokenizer, extra, huffman, half_dense)
    with atomic_write(path) as f:
        f.write(data)
    return PackedFile(Path(path), len(data), layer_bytes, tokenizer_bytes)


def load_packed(path: str | Path, training: bool = False) -> tuple[RunConfig, Tokenizer, Transformer, dict[str, Any]]:
    """The model as it was packed, in eval mode, plus the file's extra metadata. Compressed layers
    come in their inference form (packed in memory, ``inference/layers.py``), or with
    ``training`` in their training form (codecs that retraining updates)."""
    path = Path(path)
    meta, tensors = read_file(path)
    if "config" not in meta:
        raise CheckpointError(f"{path}: a packed Hugging Face model; load it with shrinkformer.huggingface")
    try:
        cfg = config_from_dict(json.loads(meta["config"]))
        tokenizer = Tokenizer(tensors.pop("__tokenizer__").numpy().tobytes())
        # Built without storage: a packed model never holds its dense weights, not even while loading
        # (an fp32 model built first and then overwritten peaked at the dense model's size).
        model = Transformer.skeleton(cfg.model)
        restore_layers(model, meta, tensors, training)
        load_dense(model, meta, tensors, path)
    except ShrinkformerError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as err:
        raise CheckpointError(f"{path}: inconsistent packed file ({type(err).__name__}: {str(err)[:120]})") from None
    return cfg, tokenizer, model.eval(), json.loads(meta.get("extra", "{}"))


def read_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A packed file's metadata and tensors, checked: format, version, checksum."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    meta = sfz.header(data, path).get("__metadata__", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt packed file (unreadable header)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a shrinkformer packed file")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(f"{path}: packed format version {meta.get('version')} is not supported "
                              f"(this shrinkformer reads version {VERSION})")
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error types on damaged data
        raise CheckpointError(f"{path}: corrupt packed file ({str(err).splitlines()[0][:120]})") from None
    if _digest(tensors, meta) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupt")
    return meta, tensors


def restore_layers(model: nn.Module, meta: dict[str, str], tensors: dict[str, torch.Tensor], training: bool) -> None:
    """Put each packed layer in place (taking its tensors out of ``tensors``): the training form
    (codecs that retraining updates) or the inference form (packed in memory, no dense copy)."""
    for name, layer in json.loads(meta["layers"]).items():
        shape = torch.Size(layer["shape"])
        parts = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")
                 and k[len(name) + 1:] in CODEC_FIELDS}
        for k in parts:
            tensors.pop(f"{name}.{k}")
        entropy_decode(parts, layer)
        made_by = layer.get("made_by", [])  # absent in files written before it was recorded
        if training:
            codec = unpack_codec(shape, parts, layer)
            codec.made_by = made_by
            replace_module(model, name, wrap(model.get_submodule(name), codec))
        else:
            replace_module(model, name, packed_module(model.get_submodule(name), shape, parts, layer, made_by))


def load_dense(model: nn.Module, meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load the uncompressed tensors (all that is left in ``tensors``), widened to the model's
    dtypes; a name stored once for several (tied tensors) fills them all."""
    state = model.state_dict()
    for alias, stored in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[stored]
    dense = {k: v.to(state[k].dtype) for k, v in tensors.items() if k in state}
    missing = [k for k in state if k not in dense and ".codec." not in k and ".packed." not in k]
    unexpected = [k for k in tensors if k not in state]
    if missing or unexpected:
        raise CheckpointError(f"{path}: packed tensors do not match the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.load_state_dict({**state, **dense}, assign=True)  # assign: the model was built on the meta device
    unset = [k for k, v in model.state_dict().items() if v.is_meta]
    if unset:
        raise CheckpointError(f"{path}: packed tensors do not match the model (missing {unset[:3]})")


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have uncompressed, in fp32 (compressed weights materialised)."""
    compressed = codecs(model)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if ".codec." not in k}
    with torch.no_grad():
        state.update({f"{n}.weight": c().detach().float().contiguous() for n, c in compressed.items()})
    return state


def fp32_size(model: nn.Module, tokenizer: Tokenizer | dict[str, bytes] | None = None) -> int:
    """Bytes of the model as an fp32 safetensors file (with the tokenizer, as the packed file has
    it: our SentencePiece model, or a Hugging Face tokenizer's files): the numerator of every
    compression ratio. A tensor tied under several names is counted once, as ``save_pretrained``
    stores it."""
    blobs = {"__tokenizer__": tokenizer.model_proto} if isinstance(tokenizer, Tokenizer) else tokenizer or {}
    state, seen = {}, set()
    for key, value in dense_state(model).items():
        if (value.data_ptr(), tuple(value.shape)) not in seen or not value.numel():
            seen.add((value.data_ptr(), tuple(value.shape)))
            state[key] = value
    state.update({k: torch.frombuffer(bytearray(b), dtype=torch.uint8) for k, b in blobs.items() if b})
    return len(st_save(state))
