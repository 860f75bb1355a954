"""Hugging Face sequence-to-sequence models as shrinkformer inputs and outputs.

A model comes from a local directory (what ``save_pretrained`` writes) or, where a network
exists, a hub name. Its packed ``.sfz`` is the same file format as ours: the compressed layers'
codecs and the dense rest as tensors, plus the Hugging Face config in the metadata and the
tokenizer's files as byte tensors, so it loads and translates offline. ``export_pretrained``
writes the decompressed model back as a directory ``transformers`` loads.

Which models: any ``AutoModelForSeq2SeqLM`` whose Linear layers sit under ``encoder``/``decoder``
modules. MarianMT, BART/mBART, M2M100/NLLB, Pegasus and FSMT name their layers ``self_attn``,
``encoder_attn`` and ``fc1``/``fc2``, so every role scope applies to them; T5-style models
(``SelfAttention``, ``DenseReluDense``) take ``all`` and include/exclude patterns only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..compress.api import replace_module
from ..compress.base import CompressedEmbedding, CompressedLinear
from ..compress.scopes import select
from ..config import DataConfig
from ..errors import CheckpointError, OutputError, ShrinkformerError, UsageError
from ..io import atomic_write
from ..pack.format import PackedFile, dense_state, encode_file, load_dense, read_file, restore_layers

FILE_PREFIX = "__hf__/"  # tokenizer files inside a packed file


@dataclass
class HFModel:
    """A Hugging Face translation model, its tokenizer, and the data settings it is scored with."""

    model: nn.Module
    tokenizer: Any
    source: str
    data: DataConfig = field(default_factory=DataConfig)
    extra: dict[str, Any] = field(default_factory=dict)


class TiedProjection(nn.Module):
    """The output layer of a model whose compressed input embedding it is tied to: logits from the
    embedding's own codec (or, packed, its ``project``), so the one table is stored and retrained
    once, as our Transformer's tied output projection is. The embedding is referenced, not
    registered: it is already in the model under its own name."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)

    def forward(self, x: Any) -> Any:
        project = getattr(self.embedding, "project", None)
        return project(x) if project is not None else nn.functional.linear(x, self.embedding.weight)


def is_position_table(module: nn.Module) -> bool:
    """Sinusoidal position tables: constants, never compressed, never trained."""
    return "Sinusoidal" in type(module).__name__


def tied_to_input(model: nn.Module) -> tuple[str | None, list[str]]:
    """The names of the input embedding's table: the first, which the compressed table is packed
    under, and every other name tied to it (modules sharing its weight, the same module under
    another name, or a ``TiedProjection`` of it)."""
    get = getattr(model, "get_input_embeddings", None)
    table = get() if get is not None else None
    if table is None:
        return None, []
    weight = table.weight if isinstance(table, nn.Embedding) else None
    group = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
             if module is table or (isinstance(module, TiedProjection) and module.embedding is table)
             or (weight is not None and getattr(module, "weight", None) is weight)]
    owner = next((n for n, m in group if not isinstance(m, (nn.Linear, TiedProjection))), None)
    return owner, [n for n, _ in group if n != owner]


def tie_compressed_embeddings(model: nn.Module, owner: str | None, aliases: list[str]) -> None:
    """Once the input embedding is compressed (under ``owner``), point every name tied to it at it:
    the encoder's and decoder's token embeddings become that module, the output layer a
    ``TiedProjection`` of it."""
    if owner is None:
        return
    table = model.get_submodule(owner)
    if isinstance(table, nn.Embedding):
        return  # uncompressed: transformers' own parameter ties hold
    for name in aliases:
        module = model.get_submodule(name)
        if module is not table:
            replace_module(model, name, TiedProjection(table) if isinstance(module, (nn.Linear, TiedProjection))
                           else table)


def is_pretrained_source(path: str | Path) -> bool:
    """A directory with a ``config.json`` (or a hub name: ``org/name`` that is no local path)."""
    p = Path(path)
    if p.is_dir():
        return True
    return not p.exists() and p.suffix not in (".pt", ".sfz") and str(path).count("/") == 1


def is_huggingface(path: str | Path) -> bool:
    """A Hugging Face model: a model directory or hub name, or a .sfz packed from one."""
    p = Path(path)
    return is_pretrained_source(p) or (p.suffix == ".sfz" and is_packed_pretrained(p))


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("Hugging Face models need transformers: pip install 'shrinkformer[hf]'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on every load
    return transformers


def load_pretrained(path: str | Path) -> HFModel:
    """A seq2seq model and its tokenizer from a local directory (or a hub name), in eval mode."""
    t = _transformers()
    p = Path(path)
    local = p.is_dir()
    if local and not (p / "config.json").exists():
        raise UsageError(f"{p}: not a model directory (no config.json; a Hugging Face model is saved with "
                         "save_pretrained)")
    try:
        config = t.AutoConfig.from_pretrained(str(path), local_files_only=local)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read a Hugging Face model ({str(err).splitlines()[0][:160]})") from None
    if type(config) not in t.AutoModelForSeq2SeqLM._model_mapping:
        raise UsageError(f"{path}: model type {config.model_type!r} is not a sequence-to-sequence translation model "
                         "(AutoModelForSeq2SeqLM)")
    try:
        model = t.AutoModelForSeq2SeqLM.from_pretrained(str(path), local_files_only=local).eval()
        tokenizer = t.AutoTokenizer.from_pretrained(str(path), local_files_only=local)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot load the model or its tokenizer ({str(err).splitlines()[0][:160]})") from None
    check_scopable(model, str(path))
    return HFModel(model, tokenizer, str(path))


def check_scopable(model: nn.Module, where: str) -> None:
    try:
        select(model, ["all"])
    except UsageError:
        raise UsageError(f"{where}: {type(model).__name__} has no Linear layers under encoder/decoder modules that "
                         "shrinkformer's scopes recognise") from None


def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {FILE_PREFIX + f.name: f.read_bytes() for f in sorted(Path(tmp).iterdir()) if f.is_file()}


def encode_packed(hf: HFModel, extra: dict[str, Any] | None = None, huffman: bool = False,
                  half_dense: bool = False) -> tuple[bytes, dict[str, int], int]:
    header = {"huggingface": hf.model.config.to_json_string(), "data": json.dumps(hf.data.__dict__)}
    if getattr(hf.model, "generation_config", None) is not None:  # beams, lengths, forced tokens: how it decodes
        header["generation"] = hf.model.generation_config.to_json_string()
    return encode_file(hf.model, header, tokenizer_files(hf.tokenizer), extra, huffman, half_dense)


def write_packed(hf: HFModel, path: Path, extra: dict[str, Any] | None = None, huffman: bool = False,
                 half_dense: bool = False) -> PackedFile:
    """Write atomically; what was written, as ``pack.format.write_packed`` reports it."""
    data, layer_bytes, tokenizer_bytes = encode_packed(hf, extra, huffman, half_dense)
    with atomic_write(path) as f:
        f.write(data)
    return PackedFile(Path(path), len(data), layer_bytes, tokenizer_bytes)


def fingerprint(hf: HFModel) -> str:
    """SHA-256 of the model itself (config, tokenizer files, weights), whatever file held it."""
    config = {k: v for k, v in hf.model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, blob in tokenizer_files(hf.tokenizer).items():
        h.update(name.encode() + blob)
    for name, value in sorted(dense_state(hf.model).items()):
        h.update(name.encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()


def is_packed_pretrained(path: Path) -> bool:
    """Whether a .sfz holds a Hugging Face model (without reading all of it)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            head = f.read(min(n, 1 << 24))
        return "huggingface" in json.loads(head).get("__metadata__", {})
    except (OSError, ValueError):
        return False


def load_packed(path: str | Path, training: bool = False) -> HFModel:
    """A packed Hugging Face model: compressed layers in their inference form, or with
    ``training`` in the form retraining updates."""
    t = _transformers()
    path = Path(path)
    meta, tensors = read_file(path)
    if "huggingface" not in meta:
        raise CheckpointError(f"{path}: not a packed Hugging Face model")
    try:
        config_dict = json.loads(meta["huggingface"])
        config = t.AutoConfig.for_model(**config_dict)
        model = t.AutoModelForSeq2SeqLM.from_config(config).eval()
        if "generation" in meta:
            model.generation_config = t.GenerationConfig.from_dict(json.loads(meta["generation"]))
        with tempfile.TemporaryDirectory() as tmp:
            for name in [k for k in tensors if k.startswith(FILE_PREFIX)]:
                (Path(tmp) / name[len(FILE_PREFIX):]).write_bytes(tensors.pop(name).numpy().tobytes())
            tokenizer = t.AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        tied = tied_to_input(model)  # found while transformers' ties still hold
        restore_layers(model, meta, tensors, training)
        tie_compressed_embeddings(model, *tied)
        load_dense(model, meta, tensors, path)
    except ShrinkformerError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError, OSError) as err:
        raise CheckpointError(f"{path}: inconsistent packed Hugging Face model ({type(err).__name__}: "
                              f"{str(err)[:120]})") from None
    data = DataConfig(**json.loads(meta.get("data", "{}")))
    return HFModel(model.eval(), tokenizer, str(path), data, json.loads(meta.get("extra", "{}")))


def load(path: str | Path, training: bool = False) -> HFModel:
    """A Hugging Face model from a directory, hub name or packed file."""
    p = Path(path)
    return load_packed(p, training) if p.suffix == ".sfz" else load_pretrained(path)


def decompressed(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` (compressed layers in their training form): every compressed
    layer an ordinary Linear/Embedding again."""
    state = dense_state(model)
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules(remove_duplicate=False)):  # tied names too
        if isinstance(module, TiedProjection):
            replace_module(plain, name, nn.Linear(module.embedding.embedding_dim, module.embedding.num_embeddings,
                                                  bias=False))
        elif isinstance(module, (CompressedLinear, CompressedEmbedding)):
            parent, _, child = name.rpartition(".")
            owner = plain.get_submodule(parent) if parent else plain
            shape = module.codec.shape
            if isinstance(module, CompressedEmbedding):
                setattr(owner, child, nn.Embedding(shape[0], shape[1], padding_idx=module.padding_idx))
            else:
                bias = getattr(module, "bias", None)
                setattr(owner, child, nn.Linear(shape[1], shape[0], bias=bias is not None))
    plain.load_state_dict(state, strict=False)
    missing = [k for k in plain.state_dict() if k not in state]
    for key in missing:  # tied weights the model re-ties itself
        if not key.endswith(".weight"):
            raise CheckpointError(f"cannot decompress: no value for {key}")
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    return plain.eval()


def export_pretrained(hf: HFModel, out: Path) -> Path:
    """The decompressed model and its tokenizer as a ``save_pretrained`` directory, written beside
    ``out`` and moved into place whole (nothing half-written)."""
    if out.exists():
        raise UsageError(f"{out} exists; choose a new directory for the export")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        decompressed(hf.model).save_pretrained(tmp)
        hf.tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {out}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

