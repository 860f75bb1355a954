"""Model families behind one interface (``base.ModelAdapter``): our Transformer and Hugging Face
sequence-to-sequence models. ``shrinkformer.loading`` chooses the adapter for a path; everything
above it (retraining, budgets, the pipeline, the sweep, the CLI) holds an adapter and never asks
which family it is."""

from .base import ModelAdapter, PairBatch

__all__ = ["ModelAdapter", "PairBatch"]
