"""A Hugging Face sequence-to-sequence model (``huggingface/model.py``) as a ``ModelAdapter``: its
own tokenizer, its forward pass, its ``generate()``, its ``.sfz`` header.

Batches are built as the model's ``labels=`` path builds them (the decoder reads the labels shifted
right behind ``decoder_start_token_id``), so the shared loop's cross-entropy is the model's own loss;
the loop adds label smoothing, clipping, distillation and resumption exactly as for ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn

from ..checkpoint import FORMAT, VERSION
from ..compress.api import CompressionReport, compress
from ..compress.base import MethodConfig
from ..compress.scopes import select
from ..config import RunConfig
from ..data.batching import Batch, pad
from ..data.corpus import Parallel
from ..data.splits import Split
from ..huggingface.attention import HFProbe
from ..huggingface.model import (HFModel, export_pretrained, is_position_table, tie_compressed_embeddings,
                                 tied_to_input, encode_packed, fingerprint, tokenizer_files)
from ..huggingface.translate import HFTranslator
from ..errors import UsageError
from .base import ModelAdapter

VALID_SENTENCES = 100  # greedy validation BLEU after each step: a progress signal, not a result


def freeze_position_tables(model: nn.Module) -> None:
    """Sinusoidal position tables are constants that ``save_pretrained`` does not store; some
    transformers versions load them trainable, and retraining would move them out of the file."""
    for module in model.modules():
        if is_position_table(module):
            for p in module.parameters():
                p.requires_grad_(False)


class HuggingFaceAdapter(ModelAdapter):
    family = "huggingface"

    def __init__(self, hf: HFModel) -> None:
        self.hf, self.model, self.cfg = hf, hf.model, RunConfig(data=hf.data)
        freeze_position_tables(hf.model)
        tie_compressed_embeddings(hf.model, *tied_to_input(hf.model))  # a trial copy compressed elsewhere
        tok = hf.tokenizer
        self.pad_id = tok.pad_token_id
        self.start_id = getattr(hf.model.config, "decoder_start_token_id", None)
        if self.start_id is None:
            self.start_id = self.pad_id

    @property
    def tokenizer(self) -> Any:
        return self.hf.tokenizer

    def fingerprint(self) -> str:
        return fingerprint(self.hf)

    def with_model(self, model: nn.Module) -> "HuggingFaceAdapter":
        return HuggingFaceAdapter(HFModel(model, self.hf.tokenizer, self.hf.source, self.hf.data, self.hf.extra))

    def candidates(self) -> dict[str, Tensor]:
        """Every Linear under the encoder and decoder, and the tied embedding table once."""
        weights = {name: m.weight for name, m in select(self.model, ["all"]).items()}
        owner, _ = tied_to_input(self.model)
        if owner is not None and isinstance(self.model.get_submodule(owner), nn.Embedding):
            weights[owner] = self.model.get_submodule(owner).weight
        return weights

    def compress(self, config: MethodConfig, scopes: Sequence[str], include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> CompressionReport:
        """The tied embeddings are one table: chosen under any of its names, the input embedding is
        compressed once and the other names point at it (``tie_compressed_embeddings``); sinusoidal
        position tables are never chosen."""
        chosen = select(self.model, list(scopes), list(include), list(exclude))
        owner, aliases = tied_to_input(self.model)
        skip = [n for n, m in chosen.items() if is_position_table(m) or n in aliases]
        include = list(include) + ([owner] if owner and owner not in chosen and any(n in aliases for n in chosen)
                                   else [])
        report = compress(self.model, config, list(scopes), include, list(exclude) + skip)
        tie_compressed_embeddings(self.model, owner, aliases)
        return report

    @property
    def valid_limit(self) -> int | None:
        return min(self.cfg.data.valid_limit or VALID_SENTENCES, VALID_SENTENCES)

    def encode(self, pairs: Parallel, max_tokens: int | None = None) -> Split:
        tok = self.hf.tokenizer
        src = tok(list(pairs.source))["input_ids"] if pairs.source else []
        tgt = tok(text_target=list(pairs.target))["input_ids"] if pairs.target else []
        if max_tokens is not None:
            keep = [i for i in range(len(src)) if len(src[i]) <= max_tokens and len(tgt[i]) <= max_tokens]
            if len(keep) < len(src):
                pairs = Parallel([pairs.source[i] for i in keep], [pairs.target[i] for i in keep])
                src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
        return Split(pairs, src, tgt)

    def collate(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], indices: list[int]) -> Batch:
        # The ids end with the tokenizer's EOS already; the decoder reads the labels shifted right.
        return Batch(pad(src, self.pad_id), pad([[self.start_id] + list(t[:-1]) for t in tgt], self.pad_id),
                     pad(tgt, self.pad_id), indices, self.pad_id)

    def logits(self, module: nn.Module, batch: Batch) -> Tensor:
        return module(input_ids=batch.src, attention_mask=batch.src.ne(self.pad_id).long(),
                      decoder_input_ids=batch.tgt_in).logits

    def default_beam(self) -> int:
        generation = getattr(self.model, "generation_config", None)
        return int(getattr(generation, "num_beams", None) or 5)

    def translator(self, beam_size: int | None = None, batch_sentences: int = 64, device: Any = "cpu",
                   length_penalty: float | None = None) -> HFTranslator:
        if length_penalty is not None:
            raise UsageError("--length-penalty applies to shrinkformer models; a Hugging Face model keeps its own")
        return HFTranslator(self.model, self.hf.tokenizer, beam_size or self.default_beam(), batch_sentences)

    def search_key(self, beam_size: int | None = None) -> str:
        return f"generate num_beams={beam_size or self.default_beam()}\n"

    def encode_packed(self, extra: dict[str, Any] | None = None, huffman: bool = False,
                      half_dense: bool = False) -> tuple[bytes, dict[str, int], int]:
        return encode_packed(self.hf, extra, huffman, half_dense)

    def tokenizer_files(self) -> dict[str, bytes]:
        return tokenizer_files(self.hf.tokenizer)

    def export(self, fmt: str, output: Path, quantization: str = "float32") -> str:
        if fmt != "hf":
            raise UsageError("a Hugging Face model goes to CTranslate2 through its own converter: export --format hf, "
                             "then ct2-transformers-converter --model DIR")
        if output.exists():
            raise UsageError(f"{output} exists; choose a new directory for the export")
        return f"Hugging Face model directory (decompressed weights, tokenizer): {export_pretrained(self.hf, output)}"

    def attention_probe(self, beam_size: int | None = None) -> HFProbe:
        return HFProbe(self.hf, beam_size or self.default_beam())

    def checkpoint(self, cfg: RunConfig, **state: Any) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "family": self.family, "config": cfg.to_dict(),
                "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}, **state}
