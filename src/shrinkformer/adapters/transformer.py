"""Our own Transformer (``model/transformer.py``) as a ``ModelAdapter``: its SentencePiece
tokenizer, its beam search, its ``.sfz`` header."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..checkpoint import make_checkpoint, model_fingerprint
from ..compress.scopes import eligible
from ..config import RunConfig
from ..data.batching import Batch, collate
from ..data.corpus import Parallel
from ..data.splits import Split
from ..data.tokenizer import Tokenizer
from ..errors import UsageError
from ..model.probe import Recorded, keep_real
from ..model.search import SearchConfig
from ..model.transformer import PAD, Transformer
from ..pack.format import encode_packed
from ..translate import Translator
from .base import ModelAdapter


class TransformerAdapter(ModelAdapter):
    family = "shrinkformer"

    def __init__(self, model: Transformer, tokenizer: Tokenizer, cfg: RunConfig) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg

    def fingerprint(self) -> str:
        return model_fingerprint(self.cfg, self.tokenizer, self.model)

    def with_model(self, model: nn.Module) -> "TransformerAdapter":
        return TransformerAdapter(model, self.tokenizer, self.cfg)  # type: ignore[arg-type]

    def candidates(self) -> dict[str, Tensor]:
        return {name: m.weight for name, m in eligible(self.model).items()}

    def encode(self, pairs: Parallel, max_tokens: int | None = None) -> Split:
        return Split.encode(pairs, self.tokenizer, max_tokens)

    def collate(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], indices: list[int]) -> Batch:
        return collate(src, tgt, indices)

    def logits(self, module: nn.Module, batch: Batch) -> Tensor:
        return module(batch.src, batch.tgt_in)[0]

    def search(self, beam_size: int | None = None, length_penalty: float | None = None) -> SearchConfig:
        d = self.cfg.decode
        return dataclasses.replace(d, beam_size=d.beam_size if beam_size is None else beam_size,
                                   length_penalty=d.length_penalty if length_penalty is None else length_penalty)

    def translator(self, beam_size: int | None = None, batch_sentences: int = 64, device: Any = "cpu",
                   length_penalty: float | None = None) -> Translator:
        return Translator(self.model, self.tokenizer, self.search(beam_size, length_penalty),  # type: ignore[arg-type]
                          batch_sentences=batch_sentences, device=device)

    def search_key(self, beam_size: int | None = None) -> str:
        s = self.search(beam_size)
        return f"beam={s.beam_size} lp={s.length_penalty}\n"

    def encode_packed(self, extra: dict[str, Any] | None = None, huffman: bool = False,
                      half_dense: bool = False) -> tuple[bytes, dict[str, int], int]:
        return encode_packed(self.model, self.cfg, self.tokenizer, extra, huffman, half_dense)  # type: ignore[arg-type]

    def tokenizer_files(self) -> Tokenizer:
        return self.tokenizer

    def checkpoint(self, cfg: RunConfig, **state: Any) -> dict[str, Any]:
        return make_checkpoint(cfg, self.tokenizer, self.model, **state)

    def export(self, fmt: str, output: Path, quantization: str = "float32") -> str:
        from ..export import ctranslate2

        if fmt != "ctranslate2":
            raise UsageError("--format hf exports Hugging Face models (a model directory or a .sfz packed from one)")
        out = ctranslate2.export(self.model, self.tokenizer, output, quantization)  # type: ignore[arg-type]
        return f"CTranslate2 model ({quantization}) with its SentencePiece model: {out}"

    def attention_probe(self, beam_size: int | None = None) -> "TransformerProbe":
        return TransformerProbe(self.model, self.tokenizer, self.search(beam_size))  # type: ignore[arg-type]


class TransformerProbe:
    """A shrinkformer model: its own attention recording and beam search."""

    def __init__(self, model: Transformer, tok: Tokenizer, search: SearchConfig, batch: int = 32) -> None:
        self.model, self.tok, self.search, self.batch = model, tok, search, batch
        self.beam_size = search.beam_size

    def record(self, sources: list[str], targets: list[str]) -> Recorded:
        self.model.eval()
        src_ids, tgt_ids = self.tok.encode(sources), self.tok.encode(targets)
        layers: dict[str, list[Tensor]] = {}
        with torch.no_grad():
            for start in range(0, len(sources), self.batch):
                idx = list(range(start, min(start + self.batch, len(sources))))
                b = collate([src_ids[i] for i in idx], [tgt_ids[i] for i in idx], idx)
                _, attn = self.model(b.src, b.tgt_in, need_weights=True)
                s_len, t_len = b.src.ne(PAD).sum(1), b.tgt_in.ne(PAD).sum(1)
                keep_real(layers, "encoder", attn.encoder_self, s_len, s_len)
                keep_real(layers, "decoder", attn.decoder_self, t_len, t_len)
        return Recorded(layers)

    def self_attention(self) -> dict[str, nn.Module]:
        return {name.removesuffix(".self_attn"): m for name, m in self.model.attention_modules().items()
                if name.endswith(".self_attn")}

    def translate(self, sources: list[str]) -> list[str]:
        return Translator(self.model, self.tok, self.search).translate(sources)
