"""Budgeted allocation (``train/budget.py``) for a Hugging Face model: the same prices, Fisher or
loss sensitivities, knapsack and packed-size check, with the model's own loss on its own
tokenization and the sizes of its own packed file.

Candidates are the Linear layers under its encoder and decoder (the ``all`` scope); its embeddings
and output layer are tied to each other and stay as they are (fp16 under a budget, as every
uncompressed tensor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import Tensor

from ..compress.allocate import Allocation, Choice
from ..compress.scopes import select
from ..data.corpus import Parallel
from ..train.budget import BudgetConfig, allocate, compressed_copy, history_placeholder, saved_or_new
from .model import HFModel, encode_packed


class HFBatch:
    """Tokenized pairs with their labels: the model's own loss is the mean over label tokens."""

    def __init__(self, encoding: dict[str, Tensor]) -> None:
        self.encoding = encoding
        self.tokens = int((encoding["labels"] != -100).sum())

    def loss(self, model) -> Tensor:
        return model(**self.encoding).loss


def loss_batches(hf: HFModel, pairs: Parallel, sentences: int, batch_sentences: int = 16,
                 max_length: int = 128) -> list[HFBatch]:
    tok, n = hf.tokenizer, min(sentences, len(pairs.source))
    out = []
    for start in range(0, n, batch_sentences):
        end = min(n, start + batch_sentences)
        enc = tok(pairs.source[start:end], text_target=pairs.target[start:end], return_tensors="pt", padding=True,
                  truncation=True, max_length=max_length)
        enc["labels"] = enc["labels"].masked_fill(enc["labels"] == tok.pad_token_id, -100)
        out.append(HFBatch(dict(enc)))
    return out


def packed_bytes(hf: HFModel, choices: dict[str, Choice], half_dense: bool, staged: bool = False) -> int:
    """Its packed file's bytes without the tokenizer files, compressed as ``choices`` say."""
    trial, stages = compressed_copy(hf.model, choices, staged)
    data, _, tokenizer_bytes = encode_packed(HFModel(trial, hf.tokenizer, hf.source, hf.data),
                                             {"history": history_placeholder(stages)}, half_dense=half_dense)
    return len(data) - tokenizer_bytes


def plan_pretrained(hf: HFModel, bc: BudgetConfig, pairs: Callable[[], Parallel]) -> Allocation:
    """``pairs()``: the training pairs, read only once the budget is known to be reachable."""
    weights = {name: m.weight for name, m in select(hf.model, ["all"]).items()}

    def batches() -> tuple[list[HFBatch], int]:
        data = pairs()
        return loss_batches(hf, data, bc.sentences), min(bc.sentences, len(data.source))

    return allocate(hf.model, weights, bc, batches, lambda choices: packed_bytes(hf, choices, bc.half_dense, bc.staged))


def load_or_plan_pretrained(hf: HFModel, bc: BudgetConfig, pairs: Callable[[], Parallel], work: Path,
                            train_limit: int | None = None) -> Allocation:
    """The allocation saved in ``work`` for these settings, or a new one (then saved there)."""
    return saved_or_new(work, bc, train_limit, lambda: plan_pretrained(hf, bc, pairs))
