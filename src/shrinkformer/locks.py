"""Who runs what: a training run directory, a ``compress`` work directory and a sweep row belong to
the one process that holds their lock, so two commands never write one state.

The lock is an OS lock (``flock``) on a small file that also says who holds it (pid, host, command,
since when): the kernel releases it when the process dies, however it dies, so a lock is never
stale. On NFS, Linux emulates ``flock`` with POSIX record locks, which the server arbitrates: jobs
on several machines sharing one cache directory exclude each other as processes on one do. The
file is removed on release; a process that was waiting on the removed file notices and takes the
new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import OutputError, ShrinkformerError

log = logging.getLogger(__name__)


class BusyError(ShrinkformerError):
    """Another process holds what this command would write."""

    exit_code = 2


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, in words (what its file says)."""
    try:
        info = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info['pid']} on {info.get('host', '?')} since {since} ({info.get('command', '?')})"


@contextlib.contextmanager
def hold(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the lock file ``path`` for ``what`` (e.g. "run directory runs/x") during the block.
    Held elsewhere: raise BusyError naming the holder, or with ``wait`` wait for it (saying so)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or type(err).__name__}") from None
    fd = _acquire(path, what, wait)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300]}
        with contextlib.suppress(OSError):  # who holds it is a courtesy; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before the release: whoever waits on this file sees it gone and retries
        os.close(fd)


def _acquire(path: Path, what: str, wait: bool) -> int:
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err.strerror or type(err).__name__}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise OutputError(f"cannot lock {path}: {err.strerror}") from None
            who = holder(path)
            if not wait:
                os.close(fd)
                raise BusyError(f"{what} is in use by {who}; wait for it to finish, or stop it") from None
            if not announced:
                log.info("waiting for %s: it is in use by %s", what, who)
                announced = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder removed it as we waited: take the one that is there now


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
