"""A joint SentencePiece vocabulary for source and target, stored inside checkpoints as bytes."""

from __future__ import annotations

import io
import logging
from typing import Iterable, Sequence

import sentencepiece as spm

from ..special_tokens import BOS, EOS, PAD, UNK

log = logging.getLogger(__name__)


class Tokenizer:
    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int, model_type: str = "unigram",
              seed_sentences: int = 2_000_000) -> "Tokenizer":
        """Learn a joint vocabulary from source and target training sentences."""
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, input_sentence_size=seed_sentences,
            shuffle_input_sentence=True, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            num_threads=2, minloglevel=2,
            # Without this a small corpus makes SentencePiece refuse sizes it cannot fill.
            hard_vocab_limit=False,
        )
        tok = cls(buffer.getvalue())
        log.info("trained a %s vocabulary of %d pieces", model_type, len(tok))
        return tok

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(lines), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.decode([list(x) for x in ids])
