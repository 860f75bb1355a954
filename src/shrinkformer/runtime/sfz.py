"""Reading a packed model file (``.sfz``) with numpy alone: the safetensors layout (an 8-byte
header length, a JSON header, the tensors' bytes), the format name and version, and the SHA-256
over the metadata and every tensor that ``pack/format.py`` writes. Tensors are views of the
file's bytes, not copies."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError

FORMAT, VERSION = "shrinkformer-packed", 1
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "U8": np.uint8, "I8": np.int8, "I16": np.int16,
           "I32": np.int32, "I64": np.int64, "BOOL": np.bool_}


@dataclass
class PackedFile:
    """A checked packed file: its metadata (JSON values decoded) and tensors by name."""

    path: Path
    meta: dict[str, str]
    tensors: dict[str, np.ndarray]

    def json(self, key: str, default: Any = None) -> Any:
        return json.loads(self.meta[key]) if key in self.meta else default


def digest(meta: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over the metadata (but the digest itself) and every tensor's name and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).view(np.uint8).tobytes() if tensors[name].size else b"")
    return h.hexdigest()


def header(data: bytes | memoryview, path: Path) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"{path}: truncated packed file")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: truncated or corrupt packed file (header of {n} bytes in a {len(data)}-byte file)")
    try:
        parsed = json.loads(bytes(data[8:8 + n]))
        if not isinstance(parsed, dict):
            raise ValueError
        return parsed
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt packed file (unreadable header)") from None


def read(path: str | Path) -> PackedFile:
    """The file's metadata and tensors, checked: format, version, layout, checksum."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    head = header(data, path)
    meta = head.pop("__metadata__", {}) or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a shrinkformer packed file")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(f"{path}: packed format version {meta.get('version')} is not supported "
                              f"(this shrinkformer reads version {VERSION})")
    start = 8 + int.from_bytes(data[:8], "little")
    body = memoryview(data)[start:]
    tensors = {}
    for name, info in head.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            begin, end = (int(v) for v in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
            if not 0 <= begin <= end <= len(body) or (end - begin) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise ValueError(f"tensor {name!r} does not fit the file")
            tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt packed file ({str(err)[:120]})") from None
    if digest(meta, tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupt")
    return PackedFile(path, meta, tensors)
