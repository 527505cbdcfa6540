"""The command line as a user meets it: help, exit codes, JSON that parses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tangtoc import doctor
from tangtoc.cli import main


def test_help_lists_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "doctor" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: tangtoc" in capsys.readouterr().out


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_doctor_json_parses_and_exit_code_matches_health(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == (0 if data["healthy"] else 1)
    assert data["environment"]["devices"][0]["kind"] == "cpu"


def test_doctor_json_lists_each_problem_with_its_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")  # a problem doctor always reports
    code = main(["doctor", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and not data["healthy"]
    (problem,) = [p for p in data["problems"] if "CUDA_LAUNCH_BLOCKING" in p["title"]]
    assert {"code", "title", "detail", "fix"} <= set(problem) and problem["fix"]


def test_doctor_text_shows_environment_block(capsys: pytest.CaptureFixture[str]) -> None:
    main(["doctor"])
    out = capsys.readouterr().out
    assert "copy this block into your issue" in out
    assert "device cpu:" in out


def test_doctor_reports_a_problem_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "CUDA_LAUNCH_BLOCKING is set" in out
    assert "unset CUDA_LAUNCH_BLOCKING" in out
    assert any(p.code == "cuda-launch-blocking" for p in doctor.diagnose().problems)


def test_python_dash_m_works() -> None:
    proc = subprocess.run([sys.executable, "-m", "tangtoc", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tangtoc ")
