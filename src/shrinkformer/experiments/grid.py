"""The experiments of the study, and the ones it lacked, as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..compress import BinaryConfig, KMeansConfig, PruneConfig


@dataclass(frozen=True)
class Experiment:
    name: str
    method: str
    scope: str
    stages: tuple[tuple[Any, str], ...] = ()  # (method config, scope) applied in order
    distill: float = 0.0
    in_study: bool = False
    bits: int | None = None
    sparsity: float | None = None

    def spec(self) -> dict[str, Any]:
        """Everything that determines the result, for the cache key."""
        return {"name": self.name, "stages": [[type(c).__name__, repr(c), s] for c, s in self.stages],
                "distill": self.distill}


def kmeans(bits: int, scope: str, in_study: bool = False) -> Experiment:
    return Experiment(f"kmeans-{bits}bit-{scope}", "kmeans", scope, ((KMeansConfig(bits), scope),),
                      in_study=in_study, bits=bits)


def binary(kind: str, scope: str, in_study: bool = False, distill: float = 0.0) -> Experiment:
    name = ("bsflex" if kind == "flex" else "binary-fixed") + f"-{scope}" + ("-distill" if distill else "")
    return Experiment(name, "bsflex" if kind == "flex" else "binary-fixed", scope, ((BinaryConfig(kind), scope),),
                      distill=distill, in_study=in_study, bits=1)


def prune(start: int, end: int, steps: int, in_study: bool = False) -> Experiment:
    return Experiment(f"prune-{start}-{end}", "prune", "all", ((PruneConfig(start / 100, end / 100, steps), "all"),),
                      in_study=in_study, sparsity=end / 100)


GRID: list[Experiment] = [
    Experiment("baseline", "none", "-", in_study=True),
    kmeans(4, "all", True),
    kmeans(1, "all", True),
    kmeans(1, "self-attention", True),
    binary("flex", "self-attention", True),
    binary("fixed", "self-attention", True),
    prune(30, 50, 2, True),
    prune(50, 80, 3, True),
    # What the study lacked:
    kmeans(2, "all"),
    kmeans(3, "all"),
    kmeans(8, "all"),
    binary("flex", "all"),
    binary("fixed", "all"),
    Experiment("prune-50-80+kmeans-4bit-all", "prune+kmeans", "all",
               ((PruneConfig(0.5, 0.8, 3), "all"), (KMeansConfig(4), "all")), bits=4, sparsity=0.8),
    binary("flex", "all", distill=0.5),
]

# The study's own WMT En-De figures (shared/study/README.md, from the poster), shown beside ours.
STUDY_WMT = {
    "baseline": (28.09, 100.0), "kmeans-4bit-all": (27.65, 98.43), "kmeans-1bit-all": (12.07, 42.96),
    "kmeans-1bit-self-attention": (24.96, 88.85), "bsflex-self-attention": (25.54, 90.92),
    "prune-30-50": (26.40, 93.98), "prune-50-80": (25.02, 89.07),
}


@dataclass
class SweepPreset:
    """What ``reproduce --preset`` trains and how it retrains."""

    name: str
    train_config: str  # a config preset name or a YAML file under configs/
    overrides: list[str] = field(default_factory=list)
    retrain_epochs: int = 2
    retrain_lr: float = 3e-4
    train_limit: int | None = None  # retrain on the first N pairs only
    test_limit: int | None = None


SWEEP_PRESETS = {
    # The whole grid in minutes on a CPU: a tiny model on a few thousand sentences.
    "smoke": SweepPreset("smoke", "tiny", ["data.train_limit=3000", "data.valid_limit=100", "train.max_epochs=4",
                                           "train.save_every_steps=0", "decode.beam_size=2"],
                         retrain_epochs=1, retrain_lr=1e-3, train_limit=3000, test_limit=200),
    "multi30k": SweepPreset("multi30k", "configs/multi30k-small.yaml", retrain_epochs=2),
    "wmt14": SweepPreset("wmt14", "base", ["data.dataset=wmt14"], retrain_epochs=1, retrain_lr=2e-4),
}
