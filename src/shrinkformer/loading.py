"""Any model shrinkformer reads, by what it is: a training checkpoint (``.pt``), a packed model
(``.sfz``), or a Hugging Face model (a ``save_pretrained`` directory, a hub name, or a ``.sfz``
packed from one). This is the one place that asks which family a path holds: ``load_adapter``
hands back a ``ModelAdapter`` and everything above works through it."""

from __future__ import annotations

from pathlib import Path

from .adapters.base import ModelAdapter
from .adapters.transformer import TransformerAdapter
from .checkpoint import load_model
from .config import RunConfig
from .data.tokenizer import Tokenizer
from .model.transformer import Transformer
from .pack.format import load_packed


def load_any(path: str | Path, training: bool = False) -> tuple[RunConfig, Tokenizer, Transformer]:
    """One of our models from a training checkpoint (.pt) or a packed model (.sfz), in eval mode;
    a packed model's compressed layers stay packed unless ``training`` asks for the form
    retraining updates."""
    path = Path(path)
    return load_packed(path, training)[:3] if path.suffix == ".sfz" else load_model(path)


def is_huggingface(path: str | Path) -> bool:
    from .huggingface.model import is_huggingface as check

    return check(path)


def load_adapter(path: str | Path, training: bool = False) -> ModelAdapter:
    """The model at ``path`` behind its family's adapter, in eval mode (``training``: compressed
    layers in the form retraining updates)."""
    if is_huggingface(path):
        from .adapters.huggingface import HuggingFaceAdapter
        from .huggingface.model import load

        return HuggingFaceAdapter(load(path, training))
    cfg, tok, model = load_any(path, training)
    return TransformerAdapter(model, tok, cfg)
