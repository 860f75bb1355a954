"""The self-attention analysis on a Hugging Face model.

Recording and rewriting the attention probabilities go through transformers' own extension point:
an attention function registered with ``AttentionInterface`` (with the eager additive mask, so padding
and the future are masked as in eager attention). It computes what eager attention does, and applies a
module's ``prob_transform`` when one is set — the same attribute our own attention reads. Models whose
encoder and decoder layers have a ``self_attn`` module (MarianMT, BART/mBART, M2M100/NLLB, Pegasus)
take part; others are refused with one line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..model.probe import Recorded, keep_real
from .model import HFModel
from .translate import HFTranslator

IMPLEMENTATION = "shrinkformer_probe"


def probe_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                    scaling: float | None = None, dropout: float = 0.0, **_: Any) -> tuple[Tensor, Tensor]:
    """Eager attention, with the module's ``prob_transform`` applied to the probabilities."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = scores.softmax(dim=-1)
    transform = getattr(module, "prob_transform", None)
    if transform is not None:
        probs = transform(probs)
    out = torch.matmul(nn.functional.dropout(probs, p=dropout, training=module.training), value)
    return out.transpose(1, 2).contiguous(), probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, probe_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


class HFProbe:
    """A Hugging Face model for ``experiments.attention.analyse``: attention recorded teacher-forced
    through ``labels``, translation through its ``generate()``."""

    def __init__(self, hf: HFModel, beam_size: int = 5, batch: int = 32) -> None:
        self.hf, self.beam_size, self.batch = hf, beam_size, batch  # beam_size: AttentionProbe's
        model = hf.model
        stacks = {"encoder": getattr(model.get_encoder(), "layers", None),
                  "decoder": getattr(model.get_decoder(), "layers", None)}
        self.modules: dict[str, nn.Module] = {}
        for kind, layers in stacks.items():
            found = [getattr(layer, "self_attn", None) for layer in layers or []]
            if not found or not all(isinstance(m, nn.Module) for m in found):
                raise UsageError(f"{hf.source}: the attention analysis needs encoder and decoder layers with a "
                                 f"self_attn module (MarianMT, BART, M2M100, Pegasus); {type(model).__name__} has none")
            self.modules.update({f"{kind}.layers.{i}": m for i, m in enumerate(found)})
        _register()
        model.set_attn_implementation(IMPLEMENTATION)

    def record(self, sources: list[str], targets: list[str]) -> Recorded:
        model, tok = self.hf.model, self.hf.tokenizer
        model.eval()
        layers: dict[str, list[Tensor]] = {}
        with torch.no_grad():
            for start in range(0, len(sources), self.batch):
                enc = tok(sources[start:start + self.batch], text_target=targets[start:start + self.batch],
                          return_tensors="pt", padding=True, truncation=True, max_length=512)
                labels = enc.pop("labels")
                t_len = labels.ne(tok.pad_token_id).sum(1)  # decoder inputs: start token + all labels but the last
                enc["labels"] = labels.masked_fill(labels == tok.pad_token_id, -100)
                out = model(**enc, output_attentions=True)
                s_len = enc["attention_mask"].sum(1)
                keep_real(layers, "encoder", out.encoder_attentions, s_len, s_len)
                keep_real(layers, "decoder", out.decoder_attentions, t_len, t_len)
        return Recorded(layers)

    def self_attention(self) -> dict[str, nn.Module]:
        return self.modules

    def translate(self, sources: list[str]) -> list[str]:
        return HFTranslator(self.hf.model, self.hf.tokenizer, self.beam_size, self.batch).translate(sources)
