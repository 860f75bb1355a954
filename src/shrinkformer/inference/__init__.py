"""A packed model inside a torch process: compressed layers in their inference form (``layers``:
the packed bytes stay packed, products in tiles), the runtime's native kernels called on torch
tensors (``native``), and the runtime's engine built over a torch model's own tensors (``engine``),
so the torch side decodes with the one engine and search of ``runtime/``."""
