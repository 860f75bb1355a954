"""Model hyper-parameters and the named presets."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass
class ModelConfig:
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.3
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    pre_norm: bool = True
    tie_embeddings: bool = True
    max_positions: int = 1024
    # Set from the tokenizer when a model is built for a corpus; kept here so a checkpoint is
    # self-describing.
    vocab_size: int = 8000

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise UsageError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff", "vocab_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


MODEL_PRESETS: dict[str, ModelConfig] = {
    # Tests and smoke runs: trains in seconds on a CPU.
    "tiny": ModelConfig(d_model=32, n_heads=2, encoder_layers=2, decoder_layers=2, d_ff=64,
                        dropout=0.1, attention_dropout=0.0, vocab_size=400),
    # The CPU default, sized for Multi30k.
    "small": ModelConfig(d_model=256, n_heads=4, encoder_layers=3, decoder_layers=3, d_ff=1024,
                         dropout=0.3, attention_dropout=0.1, vocab_size=8000),
    # "Transformer base" as in Vaswani et al. and the study.
    "base": ModelConfig(d_model=512, n_heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048,
                        dropout=0.1, attention_dropout=0.0, pre_norm=False, vocab_size=32000),
    "big": ModelConfig(d_model=1024, n_heads=16, encoder_layers=6, decoder_layers=6, d_ff=4096,
                       dropout=0.3, attention_dropout=0.0, pre_norm=False, vocab_size=32000),
}
