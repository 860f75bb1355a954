"""What compression, retraining, budgets, scoring and packing need from a model, and nothing else.

The shared code (``workflow/retrain.py``, ``train/loop.py``, ``workflow/budget.py``, ``workflow/pipeline.py``,
``experiments/sweep.py``) works on token ids and teacher-forced logits: an adapter turns text into
ids its own way (``encode``), pads them into a ``Batch`` (``collate``), runs its model forward
(``logits``), translates with its own search (``translator``) and packs itself (``encode_packed``).
The loss, the optimizer, clipping, distillation, snapshots and resumption live once, above it.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Protocol, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..compress.api import CompressionReport, compress
from ..compress.base import MethodConfig
from ..compress.scopes import select
from ..config import RunConfig
from ..data.batching import Batch, token_batches
from ..data.corpus import Parallel
from ..data.splits import Split
from ..data.tokenizer import Tokenizer
from ..io import atomic_write
from ..model.probe import AttentionProbe
from ..pack.format import PackedFile


class TextTranslator(Protocol):
    """Lines in, translations out, in input order; what ``adapter.translator()`` returns."""

    beam_size: int

    def translate(self, lines: Sequence[str]) -> list[str]: ...

    def stream(self, lines: Iterable[str], chunk: int = 256) -> Iterator[str]: ...


class ModelAdapter(ABC):
    """One model family. ``model`` is the module compression changes in place; ``cfg`` holds the
    data it is read, retrained and scored on (and the training and decoding defaults)."""

    family: ClassVar[str]
    model: nn.Module
    cfg: RunConfig

    @abstractmethod
    def fingerprint(self) -> str:
        """SHA-256 of the model itself (architecture, tokenizer, weights), whatever file held it."""

    @abstractmethod
    def with_model(self, model: nn.Module) -> "ModelAdapter":
        """The same family, tokenizer and settings around another module (a trial copy)."""

    @abstractmethod
    def encode(self, pairs: Parallel, max_tokens: int | None = None) -> Split:
        """Token ids of both sides; pairs with a side of ``max_tokens`` or more are dropped."""

    @abstractmethod
    def collate(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], indices: list[int]) -> Batch:
        """Padded ids: the source as the encoder reads it, the decoder's input and the targets."""

    @abstractmethod
    def logits(self, module: nn.Module, batch: Batch) -> Tensor:
        """Teacher-forced logits (B, T, V) aligned with ``batch.tgt_out``. ``module`` is the model
        or a wrapper of it (data parallel, the distillation teacher)."""

    @abstractmethod
    def translator(self, beam_size: int | None = None, batch_sentences: int = 64, device: Any = "cpu",
                   length_penalty: float | None = None) -> TextTranslator:
        """The family's own search; ``beam_size`` None: the model's own default."""

    @abstractmethod
    def search_key(self, beam_size: int | None = None) -> str:
        """What decides the translations besides the weights (the teacher cache's key)."""

    @abstractmethod
    def encode_packed(self, extra: dict[str, Any] | None = None, huffman: bool = False,
                      half_dense: bool = False) -> tuple[bytes, dict[str, int], int]:
        """The ``.sfz`` bytes, each compressed layer's bytes, and the tokenizer's bytes."""

    @abstractmethod
    def tokenizer_files(self) -> Tokenizer | dict[str, bytes]:
        """The tokenizer as ``pack.sizes`` counts it in the fp32 reference size."""

    @abstractmethod
    def checkpoint(self, cfg: RunConfig, **state: Any) -> dict[str, Any]:
        """A payload whose ``model`` entry is the state dict (``train/loop.py``'s ``last.pt``)."""

    @abstractmethod
    def attention_probe(self, beam_size: int | None = None) -> AttentionProbe:
        """Self-attention recorded and rewritten for ``experiments/attention.py``."""

    @abstractmethod
    def export(self, fmt: str, output: Path, quantization: str = "float32") -> str:
        """Write the model for another engine (``ctranslate2`` or ``hf``) into the new directory
        ``output``; returns what was written, in words. A format the family has no route to is a
        ``UsageError`` saying which route it has."""

    @property
    def valid_limit(self) -> int | None:
        """Validation sentences decoded after each retraining step."""
        return self.cfg.data.valid_limit

    @abstractmethod
    def candidates(self) -> dict[str, Tensor]:
        """The weights a budget may compress, by module name."""

    def compress(self, config: MethodConfig, scopes: Sequence[str], include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> CompressionReport:
        """``compress.compress`` on the model, with whatever the family's structure asks (tied
        tables compressed once)."""
        return compress(self.model, config, list(scopes), list(include), list(exclude))

    def check_scopes(self, scopes: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        """Raise ``UsageError`` for a scope or pattern that matches no module of this model."""
        select(self.model, list(scopes), list(include), list(exclude))

    def write_packed(self, path: Path, extra: dict[str, Any] | None = None, huffman: bool = False,
                     half_dense: bool = False) -> PackedFile:
        """Write atomically; what was written."""
        data, layer_bytes, tokenizer_bytes = self.encode_packed(extra, huffman, half_dense)
        with atomic_write(path) as f:
            f.write(data)
        return PackedFile(Path(path), len(data), layer_bytes, tokenizer_bytes)

    def loss_batches(self, split: Split, sentences: int, batch_tokens: int) -> list["PairBatch"]:
        """Small fixed batches from the first ``sentences`` pairs (small, so per-batch squared
        gradients average over many batches): what the sensitivity estimates read."""
        n = min(sentences, len(split.src))
        lengths = [max(len(split.src[i]), len(split.tgt[i])) + 1 for i in range(n)]
        return [PairBatch(self, self.collate([split.src[i] for i in idx], [split.tgt[i] for i in idx], idx))
                for idx in token_batches(lengths, batch_tokens, shuffle=False)]

    def retraining_config(self, **train: Any) -> RunConfig:
        """``cfg`` with retraining's own training settings."""
        run = copy.deepcopy(self.cfg)
        run.train = dataclasses.replace(self.cfg.train, **train)
        return run


@dataclass
class PairBatch:
    """A batch of pairs and the adapter that runs it: the mean teacher-forced cross-entropy
    (``workflow/sensitivity.py``'s ``LossBatch``)."""

    adapter: ModelAdapter
    batch: Batch

    @property
    def tokens(self) -> int:
        return self.batch.target_tokens

    def loss(self, model: nn.Module) -> Tensor:
        logits = self.adapter.logits(model, self.batch)
        return F.cross_entropy(logits.flatten(0, 1).float(), self.batch.tgt_out.flatten(),
                               ignore_index=self.batch.pad)
