"""Result files written safely: atomic, never through a planted link, never over a non-file, errors that say why."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from tangtoc import files
from tangtoc.cli import main
from tangtoc.errors import OutputError

FAST = ["small-ops", "--op-sizes", "100", "--min-time", "0.01"]


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    assert files.write_atomic(target, '{"new": 1}') == target
    assert target.read_text() == '{"new": 1}'
    files.write_atomic(target, lambda f: f.write(b"by a writer"))
    assert target.read_bytes() == b"by a writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_anything_but_a_regular_file_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "out.json"
    expected = {"symlink": "a symbolic link", "fifo": "a FIFO", "folder": "a folder"}[kind]
    {"symlink": lambda: target.symlink_to(victim), "fifo": lambda: os.mkfifo(target), "folder": target.mkdir}[kind]()
    with pytest.raises(OutputError, match=f"refusing to write .*out.json: it is {expected}, and tangtoc replaces"):
        files.write_atomic(target, "data")
    assert victim.read_text() == "precious"


def test_a_full_disk_is_named_and_the_temporary_file_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    target = tmp_path / "out.json"
    with pytest.raises(OutputError, match=r"could not write .*out.json: no space left on the device holding .*, 0.0 "):
        files.write_atomic(target, "x" * 100)
    assert list(tmp_path.iterdir()) == []


def test_bench_refuses_a_planted_symlink_before_measuring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "b.json").symlink_to(victim)
    assert main(["bench", *FAST, "--json", str(tmp_path / "b.json")]) == 2
    assert "--json: refusing to write" in capsys.readouterr().err
    assert victim.read_text() == "precious"


def test_bench_never_follows_a_link_planted_at_the_old_temporary_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "b.json.tmp").symlink_to(victim)  # the name bench used for its temporary file until now
    assert main(["bench", *FAST, "--json", str(tmp_path / "b.json")]) == 0
    assert victim.read_text() == "precious" and (tmp_path / "b.json").read_text().startswith("{")


def test_a_write_failing_after_the_work_still_shows_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tangtoc.bench import report

    def disk_full(path: Path, *args: object) -> None:
        raise OutputError(f"could not write {path}: no space left on the device holding {path.parent}.")

    monkeypatch.setattr(report, "write_json", disk_full)
    assert main(["bench", *FAST, "--json", str(tmp_path / "b.json")]) == 1
    captured = capsys.readouterr()
    assert "add 1e+02" in captured.out  # the table is printed
    assert "tangtoc bench: error: could not write" in captured.err and "Traceback" not in captured.err
    assert "The measurements are in the tables above." in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "100000"], r"--threads: expected 1 to \d+ \(the cores this process may use\), got 100000"),
        (["--matmul-sizes", "inf"], "expected comma-separated positive integers like 256,1024, got 'inf'"),
        (["--op-sizes", "1e400"], "expected comma-separated positive integers like 256,1024, got '1e400'"),
    ],
)
def test_hostile_numbers_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["bench", "small-ops", *argv])
    except SystemExit as e:  # argparse's own exit for a bad value
        code = e.code
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_new_file_gets_the_usual_permissions_and_a_replaced_one_keeps_its_own(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh = files.write_atomic(tmp_path / "new.json", "{}")
        assert fresh.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        files.write_atomic(kept, "new")
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_fit_never_writes_through_a_link_planted_in_its_folder(tmp_path: Path) -> None:
    # issue 13 item 1: `ln -s ~/victim ckpt/metrics.jsonl` made the victim hold JSON lines
    import torch
    import torch.nn.functional as F

    from tangtoc.train import fit

    victim = tmp_path / "victim"
    victim.write_text("precious")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "metrics.jsonl").symlink_to(victim)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    with pytest.raises(OutputError, match=r"refusing to write .*metrics.jsonl: it is a symbolic link"):
        fit(torch.nn.Linear(3, 2), batches, loss_fn=F.cross_entropy, steps=1, progress=False, checkpoint_dir=ckpt)
    assert victim.read_text() == "precious"
