"""The sizes of a compressed model and the ratios quoted from them.

Three ratios, because people mean three things by "compression ratio":
- file: the fp32 safetensors file over the packed file, both with the tokenizer inside;
- model: the fp32 bytes of every parameter over the packed file without its tokenizer (headers,
  codebooks and masks counted) — how model sizes are usually given;
- scope: the compressed layers' fp32 weights over their packed tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..compress import codecs, count_params
from ..data.tokenizer import Tokenizer
from .format import PackedFile, fp32_size


@dataclass(frozen=True)
class ModelSizes:
    fp32_file_bytes: int  # the model decompressed, as an fp32 safetensors file with the tokenizer
    packed_file_bytes: int
    tokenizer_bytes: int
    params: int  # every parameter, a shared (tied) one once
    scope_params: int  # the compressed layers' weights
    scope_packed_bytes: int
    huffman_file_bytes: int | None = None
    scope_huffman_bytes: int | None = None

    @classmethod
    def measure(cls, model: nn.Module, tokenizer: Tokenizer | dict[str, bytes], packed: PackedFile,
                huffman: PackedFile | None = None) -> "ModelSizes":
        return cls(fp32_size(model, tokenizer), packed.file_bytes, packed.tokenizer_bytes, count_params(model),
                   sum(c.shape.numel() for c in codecs(model).values()), sum(packed.layer_bytes.values()),
                   huffman.file_bytes if huffman else None,
                   sum(huffman.layer_bytes.values()) if huffman else None)

    @property
    def compression_ratio(self) -> float:
        return self.fp32_file_bytes / self.packed_file_bytes

    @property
    def model_compression_ratio(self) -> float:
        return 4 * self.params / (self.packed_file_bytes - self.tokenizer_bytes)

    @property
    def scope_compression_ratio(self) -> float | None:
        return 4 * self.scope_params / self.scope_packed_bytes if self.scope_packed_bytes else None

    @property
    def huffman_compression_ratio(self) -> float | None:
        return self.fp32_file_bytes / self.huffman_file_bytes if self.huffman_file_bytes else None

    @property
    def huffman_scope_compression_ratio(self) -> float | None:
        return 4 * self.scope_params / self.scope_huffman_bytes if self.scope_huffman_bytes else None

    def to_dict(self) -> dict[str, float | int | None]:
        ratios = {name: None if getattr(self, name) is None else round(getattr(self, name), 3)
                  for name in ("compression_ratio", "model_compression_ratio", "scope_compression_ratio",
                               "huffman_compression_ratio", "huffman_scope_compression_ratio")}
        return {**asdict(self), **ratios}
