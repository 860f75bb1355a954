"""Writing files so that a reader, or a run resumed after SIGKILL, sees the old file or the new one,
never half of one; and saying in one line why an output cannot be written.

Missing parent directories are created, for every output of every command. A target that exists
and is not a regular file (``/dev/null``, ``/dev/full``, a FIFO) is written in place: replacing a
device node with a file is never what a user meant.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _special(path: Path) -> bool:
    try:
        return not stat.S_ISREG(path.stat().st_mode) and not path.is_dir()
    except OSError:
        return False


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def ensure_parent(path: Path) -> None:
    """Create ``path``'s directory; a one-line error when that cannot be done."""
    _make_dir(path.parent, path)


def _make_dir(directory: Path, path: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot write {path}: a parent of it is a file, not a directory") from None
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None


def check_writable(path: Path, directory: bool = False) -> None:
    """Fail now, before hours of work, if ``path`` (a file, or with ``directory`` a directory) cannot
    be written: a parent that is a file, a read-only directory, a full disk."""
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise OutputError(f"cannot write into {path}: it is a file, not a directory")
        target_dir = path
    else:
        if path.is_dir():
            raise OutputError(f"cannot write {path}: it is a directory")
        if _special(path):
            return
        target_dir = path.parent
    _make_dir(target_dir, path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".shrinkformer-probe.")
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None


# Errors that can only mean the output could not be stored, wherever in the block they surface
# (a buffered write fails when the buffer spills). Other errors raised inside the block are the
# caller's (a failed download, say) and pass through unchanged.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


class _Recording:
    """A file that remembers the storage error its writes raised. Some writers (``torch.save``'s
    zip writer) catch the OSError and raise their own error without its cause; this keeps it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@contextlib.contextmanager
def _body(path: Path, recording: _Recording) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno in STORAGE_ERRNOS:
            raise OutputError(f"cannot write {path}: {_reason(err)}") from None
        raise
    except Exception:
        if recording.error is not None and recording.error.errno in STORAGE_ERRNOS:
            raise OutputError(f"cannot write {path}: {_reason(recording.error)}") from None
        raise


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file to fill; it replaces ``path`` only when the block ends without an error."""
    path = Path(path)
    if _special(path):
        try:
            f = open(path, "wb", buffering=0)  # unbuffered: a failed write must not fail again at close
        except OSError as err:
            raise OutputError(f"cannot write {path}: {_reason(err)}") from None
        recording = _Recording(f)
        with _body(path, recording), f:
            yield recording  # type: ignore[misc]
            f.flush()
        return
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    ensure_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None
    try:
        recording = _Recording(os.fdopen(fd, "wb"))
        with _body(path, recording):  # outside the file: closing it flushes, and that may fail too
            with recording._f as f:
                yield recording  # type: ignore[misc]
                f.flush()
                os.fsync(f.fileno())
        with _body(path, recording):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; these are ordinary files
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
