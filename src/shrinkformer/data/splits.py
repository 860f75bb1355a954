"""A named split of the run's corpus: found (or downloaded), read, validated, and tokenized."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import RunConfig
from .corpus import Parallel, read_parallel
from .datasets import resolve_data_dir
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


def read_split(cfg: RunConfig, split: str, limit: int | None = None) -> Parallel:
    d = cfg.data
    data_dir = resolve_data_dir(d.dataset, d.data_dir, [split], (d.src_lang, d.tgt_lang))
    return read_parallel(data_dir, split, d.src_lang, d.tgt_lang, limit)


@dataclass
class Split:
    raw: Parallel
    src: list[list[int]]
    tgt: list[list[int]]

    @classmethod
    def encode(cls, raw: Parallel, tokenizer: Tokenizer, max_tokens: int | None = None) -> "Split":
        src, tgt = tokenizer.encode(raw.source), tokenizer.encode(raw.target)
        if max_tokens is not None:
            keep = [i for i in range(len(src)) if len(src[i]) < max_tokens and len(tgt[i]) < max_tokens]
            if len(keep) < len(src):
                log.info("dropped %d training pairs longer than %d tokens", len(src) - len(keep), max_tokens)
            raw = Parallel([raw.source[i] for i in keep], [raw.target[i] for i in keep])
            src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
        return cls(raw, src, tgt)
