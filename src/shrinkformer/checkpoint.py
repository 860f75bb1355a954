"""Checkpoints: written atomically, read without arbitrary pickles, checked before use.

A checkpoint is one ``torch.save`` file holding plain data and tensors:
``{"format", "version", "config", "tokenizer", "model", ["optimizer", "progress"]}``. Model-only
checkpoints (best, averaged, per-epoch) omit the training state.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, config_from_dict
from .data.tokenizer import Tokenizer
from .errors import CheckpointError, ShrinkformerError
from .io import atomic_write
from .model.transformer import Transformer

FORMAT, VERSION = "shrinkformer-checkpoint", 1


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    with atomic_write(path) as f:
        torch.save(payload, f)


def make_checkpoint(cfg: RunConfig, tokenizer: Tokenizer, model: torch.nn.Module,
                    **training_state: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "tokenizer": torch.frombuffer(bytearray(tokenizer.model_proto), dtype=torch.uint8),
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        **training_state,
    }


def load_checkpoint(path: str | Path, require: tuple[str, ...] = ("config", "tokenizer", "model")) -> dict[str, Any]:
    """A checkpoint's payload, checked; ``require``: the entries it must hold (a retraining step's
    snapshot of a Hugging Face model has no tokenizer of ours)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    except Exception as err:  # the unpickler raises assorted errors on garbage
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a shrinkformer checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported "
                              f"(this shrinkformer reads version {VERSION})")
    missing = [k for k in require if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def restore(payload: dict[str, Any], path: str | Path = "checkpoint") -> tuple[RunConfig, Tokenizer, Transformer]:
    """Config, tokenizer and model (in eval mode) from a loaded checkpoint."""
    try:
        cfg = config_from_dict(payload["config"])
        tokenizer = Tokenizer(payload["tokenizer"].numpy().tobytes())
        model = Transformer(cfg.model)
        model.load_state_dict(payload["model"])
    except (ShrinkformerError, RuntimeError, TypeError, ValueError, AttributeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: checkpoint does not match its model config ({reason})") from None
    return cfg, tokenizer, model.eval()


def load_model(path: str | Path) -> tuple[RunConfig, Tokenizer, Transformer]:
    return restore(load_checkpoint(path), path)


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (in float64, then cast back)."""
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        for k, v in load_checkpoint(p)["model"].items():
            total[k] = total.get(k, 0) + v.double()
    first = load_checkpoint(paths[0])["model"]
    return {k: (v / len(paths)).to(first[k].dtype) for k, v in total.items()}


def model_fingerprint(cfg: RunConfig, tokenizer: Tokenizer, model: torch.nn.Module) -> str:
    """SHA-256 of the model itself (architecture, tokenizer, weights), whatever file held it."""
    h = hashlib.sha256(json.dumps(cfg.model.__dict__, sort_keys=True).encode() + tokenizer.model_proto)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
