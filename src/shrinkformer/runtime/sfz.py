"""Reading a packed model file (``.sfz``): the safetensors layout (an 8-byte header length, a JSON
header, the tensors' bytes), the format name and version, and the SHA-256 over the metadata and
every tensor that ``pack/format.py`` writes. ``read_raw`` needs the standard library alone (the
runtime's numpy-free loader, ``direct.py``); ``read`` gives the tensors as numpy views of the
file's bytes, not copies."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from .build import sha256

FORMAT, VERSION = "shrinkformer-packed", 1
_ITEMSIZE = {"F32": 4, "F16": 2, "F64": 8, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}
_NUMPY = {"F32": "float32", "F16": "float16", "F64": "float64", "U8": "uint8", "I8": "int8", "I16": "int16",
          "I32": "int32", "I64": "int64", "BOOL": "bool"}


# Plain classes, not dataclasses: importing dataclasses (inspect, ast, dis) costs the runtime's
# process 2.7 MB, a tenth of it at batch 1.
class Entry:
    __slots__ = ("dtype", "shape", "data", "offset")

    def __init__(self, dtype: str, shape: tuple[int, ...], data: memoryview, offset: int) -> None:
        self.dtype = dtype  # safetensors' name: "F32", "U8", ...
        self.shape = shape
        self.data = data  # the tensor's bytes in the file
        self.offset = offset  # where they start in RawFile.data

    @property
    def count(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class _File:
    __slots__ = ("path", "meta")

    def json(self, key: str, default: object = None) -> object:
        """A metadata value, JSON-decoded."""
        return json.loads(self.meta[key]) if key in self.meta else default


class RawFile(_File):
    """A checked packed file: its metadata and each tensor's bytes."""

    __slots__ = ("entries", "data")

    def __init__(self, path: Path, meta: dict[str, str], entries: dict[str, Entry], data: bytearray) -> None:
        self.path, self.meta, self.entries = path, meta, entries
        self.data = data  # the whole file (writable, so ctypes can point into it)


class PackedFile(_File):
    """A checked packed file: its metadata and tensors by name (numpy arrays, views of the file)."""

    __slots__ = ("tensors",)

    def __init__(self, path: Path, meta: dict[str, str], tensors: dict) -> None:
        self.path, self.meta, self.tensors = path, meta, tensors


def _digest(meta: dict[str, str], tensors: dict[str, bytes | memoryview]) -> str:
    h = sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name])
    return h.hexdigest()


def digest(meta: dict[str, str], tensors: dict) -> str:
    """SHA-256 over the metadata (but the digest itself) and every tensor's name and bytes."""
    def raw(t) -> bytes | memoryview:
        if isinstance(t, (bytes, bytearray, memoryview)):
            return t
        import numpy as np
        return np.ascontiguousarray(t).view(np.uint8).tobytes() if t.size else b""
    return _digest(meta, {k: raw(v) for k, v in tensors.items()})


def header(data: bytes | memoryview, path: Path) -> dict[str, object]:
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


def read_raw(path: str | Path) -> RawFile:
    """The file's metadata and tensors' bytes, checked: format, version, layout, checksum."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = bytearray(path.stat().st_size)
            del data[f.readinto(data):]  # (a file that shrank meanwhile)
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
    entries = {}
    for name, info in head.items():
        try:
            size = _ITEMSIZE[info["dtype"]]
            begin, end = (int(v) for v in info["data_offsets"])
            entry = Entry(info["dtype"], tuple(int(s) for s in info["shape"]), body[begin:end], start + begin)
            if not 0 <= begin <= end <= len(body) or (end - begin) != size * entry.count:
                raise ValueError(f"tensor {name!r} does not fit the file")
            entries[name] = entry
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt packed file ({str(err)[:120]})") from None
    if _digest(meta, {k: e.data for k, e in entries.items()}) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupt")
    return RawFile(path, meta, entries, data)


def read(path: str | Path) -> PackedFile:
    """``read_raw``'s file with its tensors as numpy arrays (views of the file's bytes)."""
    import numpy as np

    raw = read_raw(path)
    tensors = {name: np.frombuffer(e.data, dtype=_NUMPY[e.dtype]).reshape(e.shape) for name, e in raw.entries.items()}
    return PackedFile(raw.path, raw.meta, tensors)


def require_own_model(packed: RawFile | PackedFile) -> None:
    """The runtime serves shrinkformer's own Transformer; another family says so in one line."""
    if "config" in packed.meta:
        return
    family = packed.json("huggingface", {}).get("architectures", ["a Hugging Face model"]) \
        if "huggingface" in packed.meta else ["another model family"]
    raise CheckpointError(f"{packed.path}: {family[0] if family else 'a Hugging Face model'} runs only with the "
                          f"torch install (pip install 'shrinkformer[train]'); the runtime serves shrinkformer's "
                          f"own Transformer")
