"""``compress --config FILE.yaml``: a compression run written down, the same thing a sweep row is.

The file names a row of the grid (``grid.py``: its stages or budget, epochs, distillation and
retraining data) and the sweep preset whose retraining and scoring settings apply, each with typed
overrides; ``--set section.key=value`` overrides the file. The run goes through the sweep's own
``run_experiment`` and reports the cache key the sweep would file the row under, so a row and a
command line are one thing spelled two ways::

    compress:
      row: mixed-20x
      retrain_epochs: 4
    preset:
      name: multi30k
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import _update, parse_override
from ..errors import UsageError
from .grid import EXPERIMENTS, SWEEP_PRESETS, Experiment, SweepPreset


@dataclass(frozen=True)
class CompressSection:
    """The row and what this run changes of it (None: the row's own)."""

    row: str = ""
    retrain_epochs: int | None = None
    distill: float | None = None
    retrain_data: str | None = None
    target_ratio: float | None = None
    flex: bool | None = None
    staged: bool | None = None
    gradual: bool | None = None
    row_scale: bool | None = None
    final_epochs: int | None = None
    binary_steps: int | None = None


BUDGET_ONLY = ("target_ratio", "flex", "staged", "gradual", "row_scale", "final_epochs", "binary_steps")


@dataclass(frozen=True)
class PresetSection:
    """The sweep preset whose settings apply, and what this run changes of them (None: the preset's)."""

    name: str = "multi30k"
    retrain_epochs: int | None = None
    retrain_lr: float | None = None
    retrain_warmup: int | None = None
    train_limit: int | None = None
    valid_limit: int | None = None
    test_limit: int | None = None


@dataclass(frozen=True)
class CompressFile:
    compress: CompressSection = field(default_factory=CompressSection)
    preset: PresetSection = field(default_factory=PresetSection)

    def experiment(self) -> Experiment:
        c = self.compress
        if c.row not in EXPERIMENTS:
            raise UsageError(f"compress.row must name a grid row (known: {', '.join(EXPERIMENTS)}), got {c.row!r}")
        exp = EXPERIMENTS[c.row]
        changes = {k: v for k, v in dataclasses.asdict(c).items() if k != "row" and v is not None}
        if changes.keys() & set(BUDGET_ONLY) and exp.target_ratio is None:
            raise UsageError(f"compress.{', '.join(BUDGET_ONLY[:-1])} and {BUDGET_ONLY[-1]} apply to budgeted rows; "
                             f"{c.row} is not one")
        return dataclasses.replace(exp, **changes)

    def sweep_preset(self) -> SweepPreset:
        p = self.preset
        if p.name not in SWEEP_PRESETS:
            raise UsageError(f"preset.name must be a sweep preset (known: {', '.join(SWEEP_PRESETS)}), got {p.name!r}")
        changes = {k: v for k, v in dataclasses.asdict(p).items() if k != "name" and v is not None}
        return dataclasses.replace(SWEEP_PRESETS[p.name], **changes)


def load(path: Path, sets: list[str] = ()) -> tuple[Experiment, SweepPreset]:
    """The row and preset a compression file (then ``--set`` overrides) describes."""
    try:
        values: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read compression config {path}: {err}".replace("\n", " ")) from None
    spec = _update(CompressFile(), values, "")
    for text in sets:
        spec = _update(spec, parse_override(text), "")
    if not spec.compress.row:
        raise UsageError(f"{path}: compress.row is required (the grid row this run is)")
    return spec.experiment(), spec.sweep_preset()
