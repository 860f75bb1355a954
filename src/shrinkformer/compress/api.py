"""``compress(model, config, scope)``: the one entry point, for any ``torch.nn.Module``."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Any, Iterable

from torch import nn

from .base import METHODS, Codec, CompressedEmbedding, CompressedLinear, build_codec, wrap
from .prune import PruneConfig, set_sparsity
from .scopes import select

log = logging.getLogger(__name__)


@dataclass
class CompressionReport:
    method: str
    modules: list[str]
    compressed_params: int
    total_params: int

    @property
    def share(self) -> float:
        return self.compressed_params / max(self.total_params, 1)

    def __str__(self) -> str:
        return (f"{self.method}: {len(self.modules)} modules, {self.compressed_params:,} of {self.total_params:,} "
                f"parameters ({self.share:.1%})")


def count_params(model: nn.Module) -> int:
    """Parameters of the model as a dense model would have them (a codec counts as its weight)."""
    total = sum(p.numel() for n, p in model.named_parameters() if ".codec." not in f".{n}")
    return total + sum(c.shape.numel() for c in codecs(model).values())


def codecs(model: nn.Module) -> dict[str, Codec]:
    """Module name -> codec of every compressed module."""
    return {n: m.codec for n, m in model.named_modules() if isinstance(m, (CompressedLinear, CompressedEmbedding))}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def compress(model: nn.Module, config: Any, scope: str | Iterable[str] = "all", include: Iterable[str] = (),
             exclude: Iterable[str] = ()) -> CompressionReport:
    """Replace the weights of the selected Linear/Embedding modules by the method's codec, in place.

    ``config`` is a method config (``KMeansConfig``, ``FlexKMeansConfig``, ``BinaryConfig``, ``PruneConfig``); already
    pruned modules are quantized at their surviving positions only (Deep Compression's order).
    """
    if type(config) not in METHODS:
        # a programming error, not a user's: configs come from the registry
        raise TypeError(f"no compression method for {type(config).__name__}; known: "
                        f"{', '.join(t.__name__ for t in METHODS)}")
    scopes = [scope] if isinstance(scope, str) else list(scope)
    existing = codecs(model)
    targets = select(model, scopes, include, exclude)
    for name, module in targets.items():
        before = existing.get(name)
        codec = build_codec(config, module.weight.detach(), getattr(before, "mask", None))
        # What made this layer, in order (pruning, then k-means): the packed file records it, with
        # the patterns that chose this layer (not every pattern given: a budgeted allocation names
        # each layer, and 49 names repeated 49 times would cost the file ~80 KB).
        where = {"scopes": scopes, "include": [p for p in include if fnmatch.fnmatchcase(name, p)],
                 "exclude": list(exclude)}
        codec.made_by = [*getattr(before, "made_by", []), {"config": config.to_dict(), **where}]
        replace_module(model, name, wrap(module, codec))
    if isinstance(config, PruneConfig) and config.scope == "global":
        set_sparsity([codecs(model)[n] for n in targets], config.schedule[0], "global")
    report = CompressionReport(type(config).__name__, list(targets),
                               sum(t.weight.numel() for t in targets.values()), count_params(model))
    log.info("%s", report)
    return report
