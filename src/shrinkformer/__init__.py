"""shrinkformer: make Transformer translation models small, and measure what it costs."""

__version__ = "0.1.0"
