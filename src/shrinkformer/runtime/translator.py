"""Text in, text out, without torch: ``Translator.load("model.sfz").translate(lines)``.

Sources are tokenized with the model's own SentencePiece model, sorted by length so batches hold
similar lengths, translated by the beam search and returned in input order, detokenized. Where the
native library runs, the file goes straight into it (``direct.py``: the C layout, search and
tokenizer; numpy is never imported); without it, numpy builds the model and runs the engine
(``reference.py``) with the sentencepiece package.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..special_tokens import EOS, PAD
from . import native


def make_engine(model):
    """The native engine where the library runs here, else numpy's (for a model built from arrays)."""
    if native.library() is not None:
        from .engine import Engine
        return Engine(model)
    from .reference import ReferenceEngine
    return ReferenceEngine(model)


def pad(sequences: Sequence[Sequence[int]]):
    """Right-padded (n, longest) int64 ids."""
    import numpy as np

    out = np.full((len(sequences), max(len(s) for s in sequences)), PAD, dtype=np.int64)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


class _ArraysBackend:
    """A model built by numpy (``model.py``), its engine, and the sentencepiece package."""

    def __init__(self, model, tokenizer: bytes, search) -> None:
        import sentencepiece as spm

        self.model, self.search_cfg = model, search
        self.sp = spm.SentencePieceProcessor(model_proto=tokenizer)
        self.engine = make_engine(model)
        # the longest source the positional table allows once the target budget is added
        self.max_source = max(1, model.spec.max_positions // 2 - 1)

    def search(self, sources: Sequence[Sequence[int]]) -> list[list[int]]:
        from .search import beam_search

        src = pad([list(s[: self.max_source]) + [EOS] for s in sources])
        return beam_search(self.engine, src, self.search_cfg, self.model.spec.max_positions)

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self.sp.encode(lines, out_type=int)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)


class _DirectBackend:
    """``direct.py``'s model: the file in the native library, its C tokenizer."""

    def __init__(self, model) -> None:
        self.model, self.search = model, model.search

    def encode(self, lines: list[str]) -> list[list[int]]:
        return [self.model.tokenizer.encode(line) for line in lines]

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [self.model.tokenizer.decode(i) for i in ids]


class Translator:
    def __init__(self, model, tokenizer: bytes | None = None, search=None, batch_sentences: int = 64) -> None:
        """``model``: a ``direct.DirectModel``, or a ``model.ModelArrays`` with its tokenizer's bytes and
        a ``search.SearchConfig`` (default: beam 5)."""
        from .direct import DirectModel

        self.batch_sentences = batch_sentences
        if isinstance(model, DirectModel):
            self.backend = _DirectBackend(model)
        else:
            from .search import SearchConfig
            self.backend = _ArraysBackend(model, tokenizer, search or SearchConfig())

    @classmethod
    def load(cls, path: str | Path, beam_size: int | None = None, length_penalty: float | None = None,
             batch_sentences: int = 64, threads: int | None = None, int8: bool = False,
             half_cache: bool = False) -> "Translator":
        """A ``.sfz`` file's model, decoding as its configuration says unless told otherwise.
        ``int8``: its 4-bit layers with int8 activations, as CTranslate2's int8 runs (faster);
        ``half_cache``: attention keys and values in float16 (half a batch's memory). Neither is
        exact: translations move a little (benchmarks/int8_cache.py measures the BLEU of each)."""
        if threads:
            native.set_threads(threads)
        if native.library() is not None:
            from .direct import DirectModel
            if int8 and not native.vnni():
                import warnings
                warnings.warn("int8: this CPU (or SHRINKFORMER_NATIVE) has no AVX-512 VNNI, and int8's portable core "
                              "is slower than the exact mode here", RuntimeWarning, stacklevel=2)
            return cls(DirectModel(path, beam_size, length_penalty, int8=int8, half_cache=half_cache),
                       batch_sentences=batch_sentences)
        if int8 or half_cache:
            from ..errors import UsageError
            raise UsageError(f"{'int8 activations' if int8 else 'float16 caches'} need the native library, which is "
                             "not available here")
        from .model import load
        from .search import SearchConfig
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
            for i, hyp in zip(chunk, self.backend.search([sources[i] for i in chunk])):
                out[i] = hyp
        return out

    def translate(self, lines: Sequence[str]) -> list[str]:
        return translate_lines(lines, self.backend.encode, self.translate_ids, self.backend.decode)

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
