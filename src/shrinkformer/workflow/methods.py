"""The method vocabulary: each method's name, the options it takes and the stages it makes. The
command line (``compress --method``) and the experiment grid both build their stages here, so a
method means one thing wherever it is named."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..compress import BinaryConfig, FlexKMeansConfig, KMeansConfig, PruneConfig
from ..compress.base import MethodConfig
from ..errors import UsageError
from .retrain import Stage

# Every method option with the value a method that takes it gets when it is not given.
DEFAULTS: dict[str, Any] = {"bits": 4, "init": "linear", "sparsity": "0.5", "steps": 1, "prune_scope": "layer",
                            "row_scale": False}


@dataclass(frozen=True)
class Method:
    options: tuple[str, ...]  # the options of DEFAULTS it takes; any other one given is an error
    prunes: bool  # a magnitude-pruning stage comes first
    quantizer: Callable[[dict[str, Any]], MethodConfig] | None = None  # the stage after it


METHODS: dict[str, Method] = {
    "kmeans": Method(("bits", "init", "row_scale"), False, lambda o: KMeansConfig(o["bits"], o["init"], o["row_scale"])),
    "binary-fixed": Method(("row_scale",), False, lambda o: BinaryConfig("fixed", o["row_scale"])),
    "bsflex": Method(("row_scale",), False, lambda o: BinaryConfig("flex", o["row_scale"])),
    "prune": Method(("sparsity", "steps", "prune_scope"), True),
    "prune+kmeans": Method(("bits", "init", "sparsity", "steps", "prune_scope", "row_scale"), True,
                           lambda o: KMeansConfig(o["bits"], o["init"], o["row_scale"])),
    "kmeans-flex": Method(("bits", "row_scale"), False, lambda o: FlexKMeansConfig(o["bits"], o["row_scale"])),
    "prune+kmeans-flex": Method(("bits", "sparsity", "steps", "prune_scope", "row_scale"), True,
                                lambda o: FlexKMeansConfig(o["bits"], o["row_scale"])),
}


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_sparsity(value: str | tuple[float, float]) -> tuple[float, float]:
    """``S`` or ``START:END`` (or a pair already): the pruning schedule's ends."""
    if isinstance(value, tuple):
        return value
    try:
        parts = [float(x) for x in value.split(":")]
    except ValueError:
        raise UsageError(f"--sparsity must be S or START:END with numbers, got {value!r}") from None
    if len(parts) not in (1, 2):
        raise UsageError(f"--sparsity must be S or START:END, got {value!r}")
    return parts[0], parts[-1]


def configs(method: str, given: Mapping[str, Any]) -> list[MethodConfig]:
    """The configurations of ``method``'s stages, in order. ``given`` maps option names to values,
    None for an option not given; an option the method does not take is an error, not ignored."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    spec = METHODS[method]
    for name, value in given.items():
        if name not in DEFAULTS:
            raise ValueError(f"{name!r} is not a method option")
        if value is not None and name not in spec.options:
            raise UsageError(f"{option_flag(name)} does not apply to --method {method}")
    opt = {name: default if given.get(name) is None else given[name] for name, default in DEFAULTS.items()}
    out: list[MethodConfig] = []
    if spec.prunes:
        start, end = parse_sparsity(opt["sparsity"])
        out.append(PruneConfig(start, end, opt["steps"], opt["prune_scope"]))
    if spec.quantizer is not None:
        out.append(spec.quantizer(opt))
    return out


def stages(method: str, given: Mapping[str, Any], scopes: Sequence[str] = (), include: Sequence[str] = (),
           exclude: Sequence[str] = ()) -> list[Stage]:
    """``configs`` as retraining stages over one set of modules (every Linear layer by default)."""
    where = dict(scopes=list(scopes or ()) or ([] if include else ["all"]), include=list(include or ()),
                 exclude=list(exclude or ()))
    return [Stage(c, **where) for c in configs(method, given)]


def refuse_for_budget(given: Mapping[str, Any]) -> None:
    """A budget chooses every layer's method: a method option given beside one is an error."""
    for name, value in given.items():
        if value is not None:
            raise UsageError(f"{option_flag(name)} does not apply to a budgeted allocation")
