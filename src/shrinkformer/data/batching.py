"""Token-count batches with length bucketing, deterministic in (seed, epoch) so that a resumed run
sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..special_tokens import BOS, EOS, PAD


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids ending in EOS, right-padded
    tgt_in: Tensor  # (B, T) BOS + target
    tgt_out: Tensor  # (B, T) target + EOS
    indices: list[int]  # positions of these examples in the corpus
    pad: int = PAD  # the padding id of the model family that made the batch

    @property
    def target_tokens(self) -> int:
        return int(self.tgt_out.ne(self.pad).sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.indices, self.pad)


def pad(seqs: Sequence[Sequence[int]], value: int = PAD) -> Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], indices: list[int]) -> Batch:
    return Batch(
        src=pad([list(s) + [EOS] for s in src]),
        tgt_in=pad([[BOS] + list(t) for t in tgt]),
        tgt_out=pad([list(t) + [EOS] for t in tgt]),
        indices=indices,
    )


def token_batches(lengths: Sequence[int], max_tokens: int, shuffle: bool, seed: int = 0,
                  epoch: int = 0) -> list[list[int]]:
    """Group example indices so that (examples x longest length) stays within ``max_tokens``.

    Examples are sorted by length (after a seeded shuffle, so equal lengths mix differently each
    epoch) to keep padding low; with ``shuffle`` the batch order is shuffled too.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches
