"""Which comparisons the report states, each tested with paired bootstrap resampling on every test
split, from the translations the sweep kept.

Stated comparisons: every row against the baseline and against the control; BS-Flex against fixed
binarization on the same scope; each pruning row against every quantization row that is at least
as compressed; distillation against none; each budgeted (mixed) row against every uniform row it
is at least as compressed as, on the whole-model ratio, down to half its ratio; a budgeted row
retrained for more epochs (``mixed-20x-4ep``), with flexible codebooks (``mixed-20x-flex``) or in
stages (``mixed-20x-staged``) or on the baseline's translations (``mixed-20x-teacher``) against the
same row retrained as the others are, and such variants of one allocation against each other (the
one the grid lists first as the reference, so ``mixed-25x-16ep`` is measured against
``mixed-25x-8ep``, not the other way round); a gradual row whose last retraining has its own epochs
(``mixed-25x-gradual-1+6ep``) against the gradual row and the one-shot rows' epoch variants; a row retrained on the baseline's translations also
against the data control (``control-teacher``, the uncompressed model retrained on them), which is
tested against the control; a row with per-row scales (``bsflex-all-rowscale``) against the same
method without them; and a row against the rows its grid entry names (``Experiment.against``:
stepped binarization against the same epochs spent without the steps).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..evaluate.significance import Comparison, paired_bootstrap
from .grid import EXPERIMENTS

QUANTIZERS = ("kmeans", "bsflex", "binary-fixed")


def pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(reference, system) pairs the report states, beyond "every row against baseline and control"."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok"}
    out = []
    for scope in ("self-attention", "all"):
        if f"binary-fixed-{scope}" in ok and f"bsflex-{scope}" in ok:
            out.append((f"binary-fixed-{scope}", f"bsflex-{scope}"))
    for p in (r for r in ok.values() if r["method"] == "prune"):
        for q in ok.values():
            if q["method"] in QUANTIZERS and q["compression_ratio"] >= p["compression_ratio"]:
                out.append((p["name"], q["name"]))
    if "bsflex-all" in ok and "bsflex-all-distill" in ok:
        out.append(("bsflex-all", "bsflex-all-distill"))
    if "control" in ok and "control-teacher" in ok:
        out.append(("control", "control-teacher"))
    for name in ok:
        if name.endswith("-teacher") and name != "control-teacher" and "control-teacher" in ok:
            out.append(("control-teacher", name))
    for m in (r for r in ok.values() if r["method"] == "mixed"):
        for u in uniform_below(list(ok.values()), m):
            out.append((u["name"], m["name"]))
        base = retrained_twin(m["name"])
        if base in ok:  # the same allocation retrained longer, flexibly, in stages: against it and each other
            out.append((base, m["name"]))
            out += [(v, m["name"]) for v in ok if _listed(v) < _listed(m["name"]) and retrained_twin(v) == base]
        out += [(v, m["name"]) for v in one_shot_peers(m["name"], ok)]
    for name in ok:  # the references a grid row names itself
        exp = EXPERIMENTS.get(name)
        out += [(ref, name) for ref in (exp.against if exp else ()) if ref in ok and (ref, name) not in out]
    for name in ok:
        if name.endswith(ROW_SCALED) and name.removesuffix(ROW_SCALED) in ok:
            out.append((name.removesuffix(ROW_SCALED), name))
    return out


ROW_SCALED = "-rowscale"  # the row-name suffix of a method run with per-row scales (compress --row-scale)


_ORDER = {name: i for i, name in enumerate(EXPERIMENTS)}


def _listed(name: str) -> tuple[int, str]:
    """A row's place in the grid (rows outside it after, by name): of two variants of one
    allocation, the one listed first is the reference the later one was added to be tested against."""
    return (_ORDER.get(name, len(_ORDER)), name)


def retrained_twin(name: str) -> str | None:
    """The row a budgeted row's allocation comes from when the row only retrains it differently
    (``mixed-20x-4ep``, ``-flex``, ``-staged``, ``-gradual``, ``-teacher`` -> ``mixed-20x``), else None."""
    base, _, variant = name.rpartition("-")
    return base if name.startswith("mixed-") and (variant.endswith("ep") or variant in VARIANTS) else None


VARIANTS = ("flex", "staged", "gradual", "teacher")  # ways of retraining one allocation, as row-name suffixes


def respread(name: str) -> tuple[int, int] | None:
    """A row whose last retraining has its own epochs (``mixed-25x-gradual-1+6ep``): (epochs of each
    earlier retraining, of the last one); else None."""
    variant = name.rpartition("-")[2]
    first, plus, last = variant.removesuffix("ep").partition("+")
    return (int(first), int(last)) if variant.endswith("ep") and plus and first.isdigit() and last.isdigit() else None


def one_shot_peers(name: str, names) -> list[str]:
    """For a re-spread row (``mixed-25x-gradual-1+6ep``), the rows among ``names`` that retrain its
    allocation's plain row once for more epochs (``mixed-25x-8ep``, ``mixed-25x-16ep``); else none."""
    base = retrained_twin(name)
    grand = retrained_twin(base) if base and respread(name) else None
    return [v for v in names if grand and retrained_twin(v) == grand and v.endswith("ep") and not respread(v)]


def uniform_below(rows: list[dict[str, Any]], mixed: dict[str, Any]) -> list[dict[str, Any]]:
    """Compressed uniform rows with a whole-model ratio in [half, all] of the mixed row's, by ratio."""
    ratio = mixed["model_compression_ratio"]
    return sorted((u for u in rows if u.get("status") == "ok" and u["method"] not in ("none", "mixed")
                   and u.get("model_compression_ratio") and ratio / 2 <= u["model_compression_ratio"] <= ratio),
                  key=lambda u: u["model_compression_ratio"])


def compare(rows: list[dict[str, Any]], splits: Sequence[str], references: Callable[[str], list[str]],
            hypotheses: Callable[[str, str], list[str] | None]) -> list[Comparison]:
    """Every stated comparison on every split whose translations are there (rows cached before
    translations were kept have none, and are left out rather than guessed)."""
    names = [r["name"] for r in rows if r.get("status") == "ok"]
    out: list[Comparison] = []
    for split in splits:
        refs = references(split)
        hyps = {n: h for n in names if (h := hypotheses(n, split)) is not None}
        for ref in ("baseline", "control"):
            if ref in hyps:
                others = [(n, hyps[n]) for n in names if n != ref and n in hyps]
                out += paired_bootstrap((ref, hyps[ref]), others, refs, split)
        for a, b in pairs(rows):
            if a in hyps and b in hyps:
                out += paired_bootstrap((a, hyps[a]), [(b, hyps[b])], refs, split)
    return out


def find(comparisons: list[dict[str, Any]], a: str, b: str, split: str) -> dict[str, Any] | None:
    return next((c for c in comparisons if c["a"] == a and c["b"] == b and c["split"] == split), None)
