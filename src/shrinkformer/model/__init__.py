from .config import MODEL_PRESETS, ModelConfig
from .search import SearchConfig, beam_search
from .transformer import BOS, EOS, PAD, UNK, Attentions, Transformer

__all__ = ["MODEL_PRESETS", "ModelConfig", "SearchConfig", "beam_search", "Transformer", "Attentions",
           "PAD", "UNK", "BOS", "EOS"]
