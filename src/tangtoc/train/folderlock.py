"""One writer per folder: a run holds an exclusive lock on the folder it writes checkpoints and metrics into.

Two runs writing into one folder destroy each other's work: each save deleted the other's half-written temporary
file, and each run rewrote ``metrics.jsonl`` when it started while the other kept appending to the file it had
replaced. So a writer holds an exclusive ``fcntl.flock`` on ``<folder>/.tangtoc.lock`` and a second one is refused
with a :class:`~tangtoc.errors.FolderInUseError` naming the holder's PID and host, which the holder writes into the
lock file. The operating system drops the lock when the holding process ends, however it ends (SIGKILL, the OOM
killer), so a killed run never blocks the next one. The file itself stays: deleting it would let a later writer
lock a new file while an older one still holds the deleted one.

Within a process the lock is re-entrant for the thread that holds it (fit holds the folder while its saves and its
metrics log take it again); another thread is refused like another process, since ``flock`` arbitrates between
separate ``open()`` calls even in one process. On Linux NFS clients ``flock`` is carried out as a byte-range lock
that the server arbitrates, so it also holds between machines sharing the folder. Windows has no ``fcntl``: there
no lock is taken.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tangtoc.errors import FolderInUseError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".tangtoc.lock"


@dataclass(slots=True)
class _Hold:
    fd: int
    thread: int
    count: int


_held: dict[tuple[int, int], _Hold] = {}  # by the folder's (device, inode): one entry per folder this process holds
_registry = threading.Lock()


class FolderLock:
    """This thread's exclusive hold on ``directory`` (which must exist), taken at construction: a
    :class:`~tangtoc.errors.FolderInUseError` when another process or thread holds it. ``doing`` says what the
    holder is doing there, for that message ("write checkpoints"). Release with :meth:`release` or a ``with``
    block; taking it again from the same thread only counts up, and the last release lets it go."""

    def __init__(self, directory: Path, doing: str) -> None:
        self._key: tuple[int, int] | None = None
        if fcntl is None:
            return
        st = os.stat(directory)
        key = (st.st_dev, st.st_ino)
        me = threading.get_ident()
        with _registry:
            hold = _held.get(key)
            if hold is not None and hold.thread == me:
                hold.count += 1
            else:
                _held[key] = _Hold(_lock(directory, doing), me, 1)  # raises when another holds it
        self._key = key

    def release(self) -> None:
        """Let the folder go (once per construction; a second call does nothing)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _registry:
            hold = _held[key]
            hold.count -= 1
            if hold.count == 0:
                del _held[key]
                # Unlock before closing: a child forked meanwhile (a DataLoader worker) shares the open file, and
                # closing our copy alone would leave the lock held by it.
                fcntl.flock(hold.fd, fcntl.LOCK_UN)
                os.close(hold.fd)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holds(directory: Path) -> bool:
    """Whether this thread holds ``directory`` (so nobody else writes there until it lets go)."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    with _registry:
        hold = _held.get((st.st_dev, st.st_ino))
        return hold is not None and hold.thread == threading.get_ident()


def _lock(directory: Path, doing: str) -> int:
    # O_NOFOLLOW: a link planted at the lock's name must not make us create or truncate a file elsewhere.
    path, writable = directory / LOCK_NAME, True
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except PermissionError:
        # Another user's lock file in a folder both write to (a shared, group-writable run folder): flock needs
        # no write access, so the lock holds; only this holder's PID cannot be recorded in it.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        writable = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, host = _holder(fd)
        os.close(fd)
        raise FolderInUseError(_busy(directory, doing, pid, host), pid=pid, host=host) from None
    except BaseException:
        os.close(fd)
        raise
    if writable:  # in place, not with files.write_atomic: replacing the file would leave the lock on the old inode
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> tuple[int | None, str | None]:
    """The PID and host the holder wrote, or ``(None, None)`` when it has not written them yet."""
    fields = os.pread(fd, 512, 0).decode(errors="replace").split()
    if len(fields) == 2 and fields[0].isdigit():
        return int(fields[0]), fields[1]
    return None, None


def _busy(directory: Path, doing: str, pid: int | None, host: str | None) -> str:
    if pid is None:
        who = "another process (it has not written its PID yet)"
    elif pid == os.getpid() and host == socket.gethostname():
        who = f"this process (PID {pid}): another thread, or a fit() that has not returned"
    else:
        who = f"the process with PID {pid} on {host}"
    return (
        f"cannot {doing} in {directory}: {who} is writing there. Two runs in one folder delete each other's "
        "checkpoints and overwrite each other's metrics, so one writer at a time holds it. Fix: give this run "
        "another folder (checkpoint_dir (--checkpoint-dir in the CLI)), or wait for that run to end or stop it; "
        "to continue its training, resume once it has stopped."
    )
