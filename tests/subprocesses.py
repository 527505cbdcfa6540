"""Launching test subprocesses that fork (torchrun and its ranks) on a loaded machine.

On a shared machine, ``fork`` can fail for a moment with EAGAIN (too many processes or threads at once): in this
process as ``BlockingIOError`` from ``subprocess.Popen``, or inside the launched command, which then dies printing
the same error (torchrun starting its ranks, a rank starting gloo's threads). Neither says anything about the code
under test, so :func:`run_in_session` waits for the load to pass and launches again; any other failure is
returned at once. The launch is repeated as it was (same command, same folders): fork fails as processes start,
before a run has written anything.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

PAUSES_S = (1.0, 3.0, 9.0)  # the waits before each new launch: the load of a few test runs passes within seconds
OUT_OF_PROCESSES = re.compile(r"BlockingIOError|Resource temporarily unavailable|can't start new thread")


def run_in_session(
    cmd: list[str], *, env: dict[str, str], timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a session of its own and return its exit status and output; when it runs longer than
    ``timeout_s``, kill the whole session (a launcher *and* its ranks) and fail the test with what it printed.

    A launch that fork refused (EAGAIN, see the module docstring) is repeated after each pause of
    :data:`PAUSES_S`; the last one's result (or error) is what the test sees.
    """
    for pause in PAUSES_S:
        try:
            proc = _run_once(cmd, env, timeout_s, cwd)
        except BlockingIOError:
            pass
        else:
            if proc.returncode == 0 or not OUT_OF_PROCESSES.search(proc.stderr):
                return proc
        time.sleep(pause)
    return _run_once(cmd, env, timeout_s, cwd)


def _run_once(
    cmd: list[str], env: dict[str, str], timeout_s: float, cwd: Path | None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, cwd=cwd)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} hung for {timeout_s} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
