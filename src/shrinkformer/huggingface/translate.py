"""Text in, text out for a Hugging Face model: its tokenizer and its own ``generate()`` beam search,
in input order, with our settings for the beam and batch sizes."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch

from ..translate import evaluating, stream


class HFTranslator:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, beam_size: int = 5, batch_sentences: int = 32,
                 max_source_tokens: int = 512) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.beam_size, self.batch_sentences, self.max_source_tokens = beam_size, batch_sentences, max_source_tokens

    def translate(self, lines: Sequence[str]) -> list[str]:
        """Translations; an empty line stays empty."""
        todo = sorted((i for i, line in enumerate(lines) if line.strip()), key=lambda i: len(lines[i]))
        out = [""] * len(lines)
        with evaluating(self.model), torch.no_grad():
            for start in range(0, len(todo), self.batch_sentences):
                chunk = todo[start:start + self.batch_sentences]
                batch = self.tokenizer([lines[i] for i in chunk], return_tensors="pt", padding=True, truncation=True,
                                       max_length=self.max_source_tokens)
                # the output length limit is the model's own (its generation config)
                ids = self.model.generate(**batch, num_beams=self.beam_size, do_sample=False)
                for i, text in zip(chunk, self.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                    out[i] = text
        return out

    def stream(self, lines: Iterable[str], chunk: int = 256) -> Iterator[str]:
        return stream(self.translate, lines, chunk)
