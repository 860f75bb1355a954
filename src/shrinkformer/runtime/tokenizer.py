"""The runtime's own SentencePiece tokenizer (``csrc/tokenizer.c``) through the native library:
what the page's WebAssembly build tokenizes with, id for id the sentencepiece package's encoding
(tests/test_tokenizer.py). The Python runtime itself keeps the sentencepiece package."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from ..errors import CheckpointError
from . import native


class NativeTokenizer:
    def __init__(self, proto: bytes) -> None:
        lib = native.library()
        if lib is None:
            raise RuntimeError("the native library is not available")
        self.lib, self._proto = lib, proto
        self.model = lib.spm_load(proto, len(proto))
        if not self.model:
            raise MemoryError("out of memory loading the SentencePiece model")
        error = lib.spm_error(self.model).decode()
        if error:
            lib.spm_free(self.model)
            self.model = None
            raise CheckpointError(f"tokenizer: {error}")

    def __del__(self) -> None:
        if getattr(self, "model", None):
            self.lib.spm_free(self.model)

    def __len__(self) -> int:
        return self.lib.spm_size(self.model)

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        cap = 2 * len(data) + 8
        while True:
            ids = (ctypes.c_int64 * cap)()
            n = self.lib.spm_encode(self.model, data, len(data), ids, cap)
            if n < 0:
                raise MemoryError("out of memory tokenizing")
            if n <= cap:
                return list(ids[:n])
            cap = n

    def decode(self, ids: Sequence[int]) -> str:
        arr = (ctypes.c_int64 * max(1, len(ids)))(*ids)
        cap = 8 * len(ids) + 16
        while True:
            out = ctypes.create_string_buffer(cap)
            n = self.lib.spm_decode(self.model, arr, len(ids), out, cap)
            if n <= cap:
                return out.raw[:n].decode("utf-8", errors="replace")
            cap = n
