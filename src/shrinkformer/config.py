"""Run configuration as typed dataclasses: presets, YAML files and ``section.key=value`` overrides.

Unknown keys are errors (a typo must not silently train the default), and values are checked
against the field's type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .model.config import MODEL_PRESETS, ModelConfig
from .model.search import SearchConfig


@dataclass
class DataConfig:
    dataset: str = "multi30k"
    data_dir: str | None = None  # a directory of {split}.{lang}[.gz]; else found or downloaded
    src_lang: str = "en"
    tgt_lang: str = "de"
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    vocab_size: int = 8000
    max_tokens_per_sentence: int = 128  # longer training pairs are dropped
    train_limit: int | None = None  # use only the first N training pairs
    valid_limit: int | None = None


@dataclass
class TrainConfig:
    seed: int = 1
    max_epochs: int = 60
    max_minutes: float | None = None  # wall-time budget: no epoch starts that would end past it
    batch_tokens: int = 3072  # padded tokens per batch and process; accum_steps batches per update
    accum_steps: int = 1
    lr: float = 1e-3
    warmup_steps: int = 800
    adam_betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 0.0  # 0 disables clipping
    patience: int = 10  # epochs without a better validation BLEU before stopping
    average_last: int = 5  # average this many last epoch checkpoints at the end
    save_every_steps: int = 200  # resumable checkpoint inside an epoch; 0 = epoch ends only
    valid_beam_size: int = 1  # greedy validation BLEU each epoch keeps epochs short
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    log_every_steps: int = 50


@dataclass
class RunConfig:
    preset: str = "small"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _preset(name: str) -> RunConfig:
    if name not in MODEL_PRESETS:
        raise UsageError(f"unknown preset {name!r} (known: {', '.join(MODEL_PRESETS)})")
    cfg = RunConfig(preset=name, model=dataclasses.replace(MODEL_PRESETS[name]))
    cfg.data.vocab_size = cfg.model.vocab_size
    if name == "tiny":
        cfg.train = TrainConfig(max_epochs=3, batch_tokens=512, warmup_steps=50, lr=3e-3,
                                average_last=2, save_every_steps=20, patience=100)
        cfg.data.train_limit, cfg.data.valid_limit = 2000, 100
    elif name in ("base", "big"):
        cfg.train = TrainConfig(lr=7e-4, warmup_steps=4000, batch_tokens=8192, max_epochs=30)
        cfg.data.dataset = "wmt14"
        cfg.data.valid_split, cfg.data.test_split = "val", "test"
    return cfg


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except UsageError as err:
                errors.append(str(err))
        raise UsageError(errors[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UsageError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and isinstance(value, bool) or tp in (int, str) and type(value) is tp:
        return value
    raise UsageError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _update(obj: Any, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise UsageError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(f"unknown key {where + '.' if where else ''}{key} (valid: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        name = f"{where}.{key}" if where else key
        changes[key] = _update(current, value, name) if dataclasses.is_dataclass(current) else _coerce(value, hints[key], name)
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, UsageError) as err:
        raise UsageError(f"{where or 'config'}: {err}") from None


def parse_override(text: str) -> dict[str, Any]:
    """``train.lr=5e-4`` -> {"train": {"lr": 0.0005}}; the value is read as YAML."""
    if "=" not in text:
        raise UsageError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value  # type: ignore[return-value]


def load_config(preset: str | None = None, path: str | Path | None = None,
                overrides: list[str] = ()) -> RunConfig:
    """Preset, then the YAML file, then overrides; later ones win."""
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"cannot read config {path}: {err}".replace("\n", " ")) from None
        if not isinstance(file_values, dict):
            raise UsageError(f"{path}: expected a mapping of sections")
    cfg = _preset(preset or file_values.get("preset", "small"))
    cfg = _update(cfg, {k: v for k, v in file_values.items() if k != "preset"}, "")
    for text in overrides:
        cfg = _update(cfg, parse_override(text), "")
    return cfg


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a config saved with ``to_dict`` (for example from a checkpoint)."""
    return _update(_preset(values.get("preset", "small")), {k: v for k, v in values.items() if k != "preset"}, "")
