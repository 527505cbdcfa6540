"""Writing result files safely: atomically, never through a planted symlink, never over something that is not a
regular file, and with a message that says why when the disk refuses.

Every file tangtoc writes beside a user's work (bench's JSON and PNG, metrics, checkpoints) goes through
:func:`write_atomic`: the bytes go to a new temporary file created with ``O_EXCL`` in the target's own folder (so a
symlink planted under a predictable temporary name is never followed, and the final rename stays on one file
system), are flushed to disk, and replace the target in one ``os.replace``. A reader sees the old file or the new
one, never half of one. The target itself may be absent or a regular file; a symlink, a device node, a FIFO or a
folder at that path is refused, not replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tangtoc.errors import OutputError


def check_target(path: Path) -> None:
    """Raise :class:`OutputError` unless ``path`` is absent or a regular file (checked without following links)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else
            "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "not a regular file")  # fmt: skip
    raise OutputError(
        f"refusing to write {path}: it is {kind}, and tangtoc replaces only regular files. Choose another path, or "
        "remove it first if it is yours."
    )


def describe_write_error(e: OSError, path: Path, nbytes: int | None) -> str:
    """Why writing ``nbytes`` to ``path`` failed, in words (the one wording of a refused write, for the CLI's
    reports of a run that failed after its work)."""
    if e.errno == errno.ENOSPC:
        need = f", {nbytes / 2**20:.1f} MiB needed" if nbytes is not None else ""
        return f"no space left on the device holding {path.parent}{need}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied in {path.parent} (read-only, immutable or not yours)"
    if e.errno == errno.EROFS:
        return f"{path.parent} is on a read-only file system"
    return f"{e.strerror or e}"


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (changing it is process-wide)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would give: the old file's, else 0o666 less the umask (mkstemp
    makes its file 0o600, which would hide a checkpoint or a plot from the rest of a team)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def write_atomic(path: str | Path, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Replace ``path`` with ``data`` (bytes, text as UTF-8, or a function that writes into the open file) in one
    step; raises :class:`OutputError` saying what could not be written and why. Returns the path."""
    path = Path(path)
    check_target(path)
    payload = data.encode() if isinstance(data, str) else data
    nbytes = len(payload) if isinstance(payload, bytes) else None
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # O_CREAT | O_EXCL
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            if isinstance(payload, bytes):
                f.write(payload)
            else:
                payload(f)
            f.flush()
            os.fsync(f.fileno())
        check_target(path)  # refuse a link planted while we wrote
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OutputError(f"could not write {path}: {describe_write_error(e, path, nbytes)}.") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # only our own temporary file
    return path
