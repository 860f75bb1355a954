"""Any model file shrinkformer reads, by what it is: a training checkpoint (``.pt``) or a packed
model (``.sfz``). Commands load models through here and never care which one they were given."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_model
from .config import RunConfig
from .data.tokenizer import Tokenizer
from .model.transformer import Transformer
from .pack.format import load_packed


def load_any(path: str | Path, training: bool = False) -> tuple[RunConfig, Tokenizer, Transformer]:
    """A training checkpoint (.pt) or a packed model (.sfz), in eval mode; a packed model's
    compressed layers stay packed unless ``training`` asks for the form retraining updates."""
    path = Path(path)
    return load_packed(path, training)[:3] if path.suffix == ".sfz" else load_model(path)
