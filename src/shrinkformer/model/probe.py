"""What the self-attention analysis (``experiments/attention.py``) needs of a model, whoever built
it: the recorded probabilities and the modules whose ``prob_transform`` rewrites them. Each model
family's adapter hands back its own probe (``ModelAdapter.attention_probe``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn


@dataclass
class Recorded:
    """Attention rows of real (non-padding) query positions over real keys, per layer."""

    layers: dict[str, list[Tensor]]  # layer name -> list of (H, T, S) per sentence


class AttentionProbe(Protocol):
    """What the analysis needs of a model, whoever built it: teacher-forced self-attention
    probabilities, the self-attention modules by layer name ("encoder.layers.0", ...), whose
    ``prob_transform`` attribute rewrites their probabilities while set, and translation."""

    beam_size: int

    def record(self, sources: list[str], targets: list[str]) -> Recorded: ...

    def self_attention(self) -> dict[str, nn.Module]: ...

    def translate(self, sources: list[str]) -> list[str]: ...


def keep_real(layers: dict[str, list[Tensor]], kind: str, maps: list[Tensor] | tuple[Tensor, ...], q_len: Tensor,
              k_len: Tensor) -> None:
    """Append each sentence's (H, T, S) attention, padding rows and columns cut, under its layer's name."""
    for li, p in enumerate(maps):
        rows = layers.setdefault(f"{kind}.layers.{li}", [])
        for j in range(p.shape[0]):
            rows.append(p[j, :, : q_len[j], : k_len[j]].detach().clone())
