"""Is one system's BLEU really different from another's? sacreBLEU's paired bootstrap resampling
(Koehn 2004; the Moses script's test), 1000 resamples, its fixed seed: the same inputs give the
same p-value every time."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from ..errors import DataError

RESAMPLES = 1000
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """System ``b`` against reference system ``a`` on one test split."""

    a: str
    b: str
    split: str
    bleu_a: float
    bleu_b: float
    p_value: float  # chance of a difference at least this large if the systems were equally good
    ci_b: float  # half-width of the 95% bootstrap interval of b's BLEU

    @property
    def delta(self) -> float:
        return round(self.bleu_b - self.bleu_a, 2)

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def to_dict(self) -> dict:
        return {**asdict(self), "delta": self.delta, "significant": self.significant}


def paired_bootstrap(reference: tuple[str, Sequence[str]], systems: Sequence[tuple[str, Sequence[str]]],
                     targets: Sequence[str], split: str, resamples: int = RESAMPLES) -> list[Comparison]:
    """Each of ``systems`` (name, translations) against ``reference`` on the same sentences."""
    for name, hyps in [reference, *systems]:
        if len(hyps) != len(targets):
            raise DataError(f"{name}: {len(hyps)} translations for {len(targets)} references of {split}")
    if not systems:
        return []
    quiet = logging.getLogger("sacrebleu")
    level, quiet.level = quiet.level, logging.WARNING  # it logs every resampling step at INFO
    try:
        test = PairedTest([(reference[0], list(reference[1])), *[(n, list(h)) for n, h in systems]],
                          {"BLEU": BLEU()}, [list(targets)], test_type="bs", n_samples=resamples)
        _, scores = test()
    finally:
        quiet.level = level
    base, *results = scores["BLEU"]
    # sacreBLEU counts resampled differences strictly above the observed one, so two identical
    # systems (observed difference 0) would come out "significant" at p = 1/1001: they are not.
    return [Comparison(reference[0], name, split, round(base.score, 2), round(r.score, 2),
                       1.0 if r.score == base.score else float(r.p_value), round(float(r.ci), 2))
            for (name, _), r in zip(systems, results)]
