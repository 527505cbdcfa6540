"""The launch helper of the fork-heavy tests: a fork refused under load is launched again, nothing else is."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from subprocesses import run_in_session

# Fails like a launcher whose fork was refused, `fails` times (counted in a file), then succeeds.
FLAKY = """
import pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
if n < int(sys.argv[2]):
    sys.exit(print("BlockingIOError: [Errno 11] Resource temporarily unavailable", file=sys.stderr) or 1)
print("ran")
"""


def _run(tmp_path: Path, code: str, *args: str) -> tuple[int, str, int]:
    count = tmp_path / "count"
    proc = run_in_session([sys.executable, "-c", code, str(count), *args], env=dict(os.environ), timeout_s=60)
    return proc.returncode, proc.stdout, int(count.read_text())


def test_a_launch_that_fork_refused_is_launched_again(tmp_path: Path) -> None:
    assert _run(tmp_path, FLAKY, "1") == (0, "ran\n", 2)


def test_any_other_failure_is_returned_at_once(tmp_path: Path) -> None:
    other = FLAKY.replace("BlockingIOError: [Errno 11] Resource temporarily unavailable", "ValueError: no")
    assert _run(tmp_path, other, "1") == (1, "", 1)
