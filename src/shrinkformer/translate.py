"""Text in, text out: tokenize, batch by length, beam search, detokenize, in input order."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

import torch

from .inference.engine import pinned
from .data.batching import pad
from .data.tokenizer import Tokenizer
from .model.search import SearchConfig, beam_search
from .model.transformer import EOS, Transformer
from .runtime.translator import by_length, stream, translate_lines


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, BS-Flex centroids held) while translating; each module's own mode
    back afterwards, so translating in the middle of training changes nothing."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class Translator:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, search: SearchConfig = SearchConfig(),
                 batch_sentences: int = 64, device: str | torch.device = "cpu", native: bool = True) -> None:
        self.model, self.tokenizer, self.search = model.to(device), tokenizer, search
        self.batch_sentences, self.device = batch_sentences, device
        self.native = native  # the runtime's engine and search where they serve the model (model/search.py)
        # Longest source the positional table allows once the target budget is added.
        self.max_source = max(1, model.cfg.max_positions // 2 - 1)

    @property
    def beam_size(self) -> int:
        return self.search.beam_size

    def translate_ids(self, sources: Sequence[Sequence[int]]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in sources]
        with evaluating(self.model), pinned(self.model):  # the native decoder looked up once, not per batch
            for chunk in by_length(sources, self.batch_sentences):
                src = pad([list(sources[i][: self.max_source]) + [EOS] for i in chunk]).to(self.device)
                for i, hyp in zip(chunk, beam_search(self.model, src, self.search, native=self.native)):
                    out[i] = hyp
        return out

    def translate(self, lines: Sequence[str]) -> list[str]:
        return translate_lines(lines, self.tokenizer.encode, self.translate_ids, self.tokenizer.decode)

    def stream(self, lines: Iterable[str], chunk: int = 256) -> Iterator[str]:
        return stream(self.translate, lines, chunk)
