"""Corpus scores with sacreBLEU: cased, detokenized BLEU (13a tokenization) and chrF."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import sacrebleu

from ..errors import DataError


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    sentences: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"BLEU = {self.bleu:.2f} ({self.bleu_signature})\n"
                f"chrF = {self.chrf:.2f} ({self.chrf_signature})")


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return Scores(round(b.score, 2), round(c.score, 2), str(bleu.get_signature()),
                  str(chrf.get_signature()), len(hypotheses))
