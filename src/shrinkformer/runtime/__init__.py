"""The torch-free runtime: packed ``.sfz`` models loaded with numpy, run by the native library
(``csrc/``: layer kernels, decoding step, encoder, beam selection) or, without it, by numpy.
``Translator.load(path).translate(lines)``; ``shrinkformer-translate MODEL.sfz`` on the command line.
Nothing here imports torch: the torch side (``translate.py``, ``evaluate``) runs this same engine."""

from __future__ import annotations


def __getattr__(name: str):
    if name == "Translator":  # loaded on first use: importing the package stays cheap
        from .translator import Translator
        return Translator
    raise AttributeError(name)


__all__ = ["Translator"]
