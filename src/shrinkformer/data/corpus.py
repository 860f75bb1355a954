"""Reading and validating parallel text: ``{split}.{lang}`` or ``{split}.{lang}.gz``, one sentence a
line, line N of the source translating line N of the target."""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)


def split_file(data_dir: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    have = sorted({p.name.split(".")[0] for p in data_dir.iterdir() if p.name.count(".") >= 1})
    raise DataError(f"no {split}.{lang} or {split}.{lang}.gz in {data_dir} (splits there: {', '.join(have) or 'none'})")


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (gzip if named .gz), without line endings."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte {raw[err.start]:#04x})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


@dataclass
class Parallel:
    source: list[str]
    target: list[str]

    def __len__(self) -> int:
        return len(self.source)


def read_parallel(data_dir: Path, split: str, src_lang: str, tgt_lang: str,
                  limit: int | None = None) -> Parallel:
    """Read one split. Pairs where either side is empty are skipped (and counted in the log);
    every other inconsistency is an error naming the file."""
    src_path, tgt_path = split_file(data_dir, split, src_lang), split_file(data_dir, split, tgt_lang)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                        "parallel files must have the same number of lines")
    pairs = [(s.strip(), t.strip()) for s, t in zip(src, tgt)]
    kept = [(s, t) for s, t in pairs if s and t]
    if len(kept) < len(pairs):
        log.warning("%s/%s: skipped %d pair(s) with an empty side", data_dir, split, len(pairs) - len(kept))
    if not kept:
        raise DataError(f"{src_path}: no non-empty sentence pairs")
    if limit is not None:
        kept = kept[:limit]
    return Parallel([s for s, _ in kept], [t for _, t in kept])
