"""Text in, text out, without torch: ``Translator.load("model.sfz").translate(lines)``.

Sources are tokenized with the model's own SentencePiece model, sorted by length so batches hold
similar lengths, translated by the beam search over the native engine (or numpy's where the
library is absent) and returned in input order, detokenized.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from ..special_tokens import EOS, PAD
from . import native
from .model import ModelArrays, load
from .search import SearchConfig, beam_search


def make_engine(model: ModelArrays):
    """The native engine where the library runs here, else numpy's."""
    if native.library() is not None:
        from .engine import Engine
        return Engine(model)
    from .reference import ReferenceEngine
    return ReferenceEngine(model)


def pad(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Right-padded (n, longest) int64 ids."""
    out = np.full((len(sequences), max(len(s) for s in sequences)), PAD, dtype=np.int64)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


class Translator:
    def __init__(self, model: ModelArrays, tokenizer: bytes, search: SearchConfig = SearchConfig(),
                 batch_sentences: int = 64) -> None:
        self.model, self.search, self.batch_sentences = model, search, batch_sentences
        self.sp = spm.SentencePieceProcessor(model_proto=tokenizer)
        self.engine = make_engine(model)
        # the longest source the positional table allows once the target budget is added
        self.max_source = max(1, model.spec.max_positions // 2 - 1)

    @classmethod
    def load(cls, path: str | Path, beam_size: int | None = None, length_penalty: float | None = None,
             batch_sentences: int = 64, threads: int | None = None) -> "Translator":
        """A ``.sfz`` file's model, decoding as its configuration says unless told otherwise."""
        if threads:
            native.set_threads(threads)
        model, tokenizer, config = load(path)
        decode = config.get("decode", {})
        search = SearchConfig(beam_size=beam_size or decode.get("beam_size", 5),
                              length_penalty=decode.get("length_penalty", 1.0) if length_penalty is None
                              else length_penalty,
                              max_len_a=decode.get("max_len_a", 1.2), max_len_b=decode.get("max_len_b", 10))
        return cls(model, tokenizer, search, batch_sentences)

    def translate_ids(self, sources: Sequence[Sequence[int]]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in sources]
        for chunk in by_length(sources, self.batch_sentences):
            src = pad([list(sources[i][: self.max_source]) + [EOS] for i in chunk])
            for i, hyp in zip(chunk, beam_search(self.engine, src, self.search, self.model.spec.max_positions)):
                out[i] = hyp
        return out

    def translate(self, lines: Sequence[str]) -> list[str]:
        return translate_lines(lines, lambda todo: self.sp.encode(todo, out_type=int), self.translate_ids,
                               self.sp.decode)

    def stream(self, lines: Iterable[str], chunk: int = 256) -> Iterator[str]:
        return stream(self.translate, lines, chunk)


def by_length(sources: Sequence[Sequence[int]], batch: int) -> Iterator[list[int]]:
    """Indices of ``sources`` in batches of similar lengths (they batch well), shortest first."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch):
        yield order[start:start + batch]


def translate_lines(lines: Sequence[str], encode: Callable[[list[str]], list[list[int]]],
                    translate_ids: Callable[[list[list[int]]], list[list[int]]],
                    decode: Callable[[list[list[int]]], list[str]]) -> list[str]:
    """Detokenized translations; an empty line stays empty rather than inviting a hallucination."""
    todo = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    if todo:
        for i, text in zip(todo, decode(translate_ids(encode([lines[i] for i in todo])))):
            out[i] = text
    return out


def stream(translate: Callable[[Sequence[str]], list[str]], lines: Iterable[str], chunk: int = 256) -> Iterator[str]:
    """Translate an unbounded stream, a chunk at a time, keeping the order."""
    it = (line.rstrip("\n") for line in lines)
    while block := list(islice(it, chunk)):
        yield from translate(block)
