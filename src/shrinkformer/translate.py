"""Text in, text out: tokenize, batch by length, beam search, detokenize, in input order."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

import torch

from .compress.engine import pinned
from .data.batching import pad
from .data.tokenizer import Tokenizer
from .model.search import SearchConfig, beam_search
from .model.transformer import EOS, Transformer
from .runtime.translator import stream


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
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # similar lengths batch well
        out: list[list[int]] = [[] for _ in sources]
        with evaluating(self.model), pinned(self.model):  # the native decoder looked up once, not per batch
            for start in range(0, len(order), self.batch_sentences):
                chunk = order[start:start + self.batch_sentences]
                src = pad([list(sources[i][: self.max_source]) + [EOS] for i in chunk]).to(self.device)
                for i, hyp in zip(chunk, beam_search(self.model, src, self.search, native=self.native)):
                    out[i] = hyp
        return out

    def translate(self, lines: Sequence[str]) -> list[str]:
        """Detokenized translations; an empty line stays empty rather than inviting a hallucination."""
        todo = [i for i, line in enumerate(lines) if line.strip()]
        out = [""] * len(lines)
        if todo:
            hyps = self.translate_ids(self.tokenizer.encode([lines[i] for i in todo]))
            for i, text in zip(todo, self.tokenizer.decode(hyps)):
                out[i] = text
        return out

    def stream(self, lines: Iterable[str], chunk: int = 256) -> Iterator[str]:
        return stream(self.translate, lines, chunk)
