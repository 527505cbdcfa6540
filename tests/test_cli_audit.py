"""`tangtoc audit SCRIPT`: the script runs as `python SCRIPT` would, and every planted sync is found at its line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tangtoc.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sync_heavy.py"
CORPUS = ROOT / "tests" / "audit_corpus"
TRAIN_LOOP = """
import torch
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range({steps}):
    model(torch.ones(1, 2, device="cpu")).sum().backward()
    opt.step()
"""


def planted(path: Path, device: str = "cpu") -> set[tuple[int, str]]:
    """(line, what the audit must report) for every ``# planted: <op>`` comment in ``path``; a ``# planted on
    cuda: <op>`` comment counts only for a run on that device (a script may take another branch there)."""
    lines = path.read_text().splitlines()
    marks = ((i, re.search(r"  # planted(?: on (\w+))?: (.+)$", line)) for i, line in enumerate(lines, 1))
    return {(i, m.group(2)) for i, m in marks if m and m.group(1) in (None, device)}


def script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def audit_json(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    code = main(["audit", *args, "--json", str(out)])
    return code, json.loads(out.read_text())


def test_every_planted_sync_copy_and_cpu_tensor_of_the_example_is_found_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = audit_json(tmp_path, str(EXAMPLE), "--steps", "3")
    assert code == 0
    found = {(f["location"]["line"], f["op"]) for f in report["findings"]}
    assert found == planted(EXAMPLE)
    assert all(f["location"]["file"].endswith("sync_heavy.py") for f in report["findings"])
    out = capsys.readouterr().out
    assert "tangtoc audit: " in out and "3 step(s) (steps end at optimizer.step())" in out
    assert "The script names a device, so what it moves or creates there" in out
    assert "listed are the lines that would synchronize or copy on a GPU" in out
    assert "loss = loss.mean() + 0.1 * hard.mean()" not in out  # only planted lines are listed
    assert "torch.randn — tensor created on the CPU; 1× in set-up, before the first step" in out
    assert "create it on the device once, in set-up (`torch.randn(..., device=device)`)" in out
    assert "set-up (before the first step, outside the loop): 0 sync, 4 copy" in out  # model.to(device): not listed


def test_the_fixed_example_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = audit_json(tmp_path, str(EXAMPLE), "--fixed", "--steps", "3")
    assert code == 0
    assert report["findings"] == []
    assert [s["syncs"] for s in report["steps"]] == [0, 0, 0]
    assert "No syncs, copies or CPU-born tensors found in the audited steps." in capsys.readouterr().out


def test_the_script_runs_as_python_would_run_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    path = script(
        tmp_path,
        "import json, sys\nimport helper\n"
        'print(json.dumps({"argv": sys.argv, "name": __name__, "helper": helper.VALUE}))\n'
        + TRAIN_LOOP.format(steps=3),
    )
    argv_before, path_before = sys.argv[:], sys.path[:]
    assert main(["audit", str(path), "--lr", "0.1", "--steps", "2", "-v"]) == 0
    seen = json.loads(capsys.readouterr().out.splitlines()[0])
    assert seen == {"argv": [str(path), "--lr", "0.1", "-v"], "name": "__main__", "helper": 42}
    assert (sys.argv, sys.path) == (argv_before, path_before)


def test_options_before_the_script_leave_its_own_flags_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, "import sys\nprint(sys.argv[1:])\n" + TRAIN_LOOP.format(steps=3))
    assert main(["audit", "--steps", "1", str(path), "--steps", "100"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "['--steps', '100']"
    assert "1 step(s)" in out


def test_a_script_that_ends_early_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(script(tmp_path, TRAIN_LOOP.format(steps=2)))]) == 0
    assert "the script ended after 2 of 10 steps" in capsys.readouterr().out


def test_the_scripts_exit_status_is_passed_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(script(tmp_path, TRAIN_LOOP.format(steps=2) + "raise SystemExit(3)\n"))]) == 3
    assert main(["audit", str(script(tmp_path, TRAIN_LOOP.format(steps=2) + "import sys; sys.exit('bad')\n"))]) == 1
    assert capsys.readouterr().err.startswith("bad\n")


def test_a_script_that_raises_shows_its_own_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = script(
        tmp_path, TRAIN_LOOP.format(steps=2) + "def load():\n    raise ValueError('no such column')\nload()\n"
    )
    assert main(["audit", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert f'File "{path}", line 10, in <module>' in err and f'File "{path}", line 9, in load' in err
    assert "ValueError: no such column" in err
    assert "runpy" not in err and "tangtoc" not in err.split("ValueError")[0]
    assert (
        f"tangtoc audit: {path} raised ValueError: no such column; the report covers the 2 step(s) before the error."
        in err
    )


def test_a_syntax_error_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    path = script(tmp_path, f"open({str(marker)!r}, 'w').close()\nfor x in range(3) print(x)\n")
    assert main(["audit", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"tangtoc audit: {path} has a syntax error, so nothing was run:" in err
    assert "SyntaxError" in err and "line 2" in err
    assert not marker.exists()


def test_a_missing_script_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "no_such_train.py"]) == 2
    assert "tangtoc audit: error: no such file: 'no_such_train.py'. Give the path of a Python script" in (
        capsys.readouterr().err
    )


def test_a_script_without_optimizer_steps_is_told_to_mark_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, "import torch\nfor _ in range(3):\n    torch.ones(2, device='cpu').sum().item()\n")
    assert main(["audit", str(path)]) == 1
    captured = capsys.readouterr()
    assert "finished without calling optimizer.step() or backward(), so there were no steps to audit" in captured.err
    assert "`from tangtoc.diagnose import mark_step` then `mark_step()` at the end of each iteration" in captured.err
    assert ".item() — would synchronize on a GPU" in captured.out  # the whole run is still reported


def test_marked_steps_are_audited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = (
        "import torch\nfrom tangtoc.diagnose import mark_step\n"
        "for _ in range(5):\n    torch.ones(2, device='cpu').sum().item()\n    mark_step()\n"
    )
    assert main(["audit", str(script(tmp_path, body)), "--steps", "2"]) == 0
    assert "2 step(s) (steps end at mark_step())" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--steps", "many"], "--steps takes a whole number of steps, got 'many'"),
        (["--json"], "--json needs a value"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["audit", str(script(tmp_path, TRAIN_LOOP.format(steps=1))), *args]) == 2
    assert f"tangtoc audit: error: {message}" in capsys.readouterr().err


def test_end_to_end_as_a_command(tmp_path: Path) -> None:
    path = script(tmp_path, TRAIN_LOOP.format(steps=5) + "print('done')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tangtoc", "audit", str(path), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 step(s)" in proc.stdout and "done" not in proc.stdout  # stopped after 2 steps


def test_no_script_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit"]) == 2
    assert "give the training script to run" in capsys.readouterr().err


def test_an_unwritable_json_path_is_refused_before_the_script_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    path = script(tmp_path, f"open({str(marker)!r}, 'w').close()\n" + TRAIN_LOOP.format(steps=2))
    assert main(["audit", str(path), "--json", "/proc/no/such/dir/r.json"]) == 2
    assert "--json: cannot create the folder /proc/no/such/dir" in capsys.readouterr().err
    assert not marker.exists()


# The corpus: script, its arguments ({device}: the device it runs on), and what ends its steps.
CORPUS_CASES = [
    ("nanogpt_train.py", ["--device={device}"], "optimizer.step()"),
    ("hf_accelerate_loop.py", [], "optimizer.step()"),
    ("transformer_encoder_causal.py", [], "optimizer.step()"),
    ("dataset_getitem.py", [], "optimizer.step()"),
    ("manual_sgd.py", [], "backward()"),
    ("lstm_packed.py", [], "optimizer.step()"),
]


def audit_corpus(tmp_path: Path, name: str, args: list[str], device: str) -> dict:
    path = CORPUS / name
    args = [a.format(device=device) for a in args]
    if name == "nanogpt_train.py":
        args.append(f"--out_dir={tmp_path}")
    code, report = audit_json(tmp_path, str(path), *args, "--steps", "3")
    assert code == 0
    return report


@pytest.mark.parametrize(("name", "args", "step_source"), CORPUS_CASES)
def test_corpus_every_finding_is_at_its_planted_line_and_nothing_else_is_reported(
    tmp_path: Path, name: str, args: list[str], step_source: str
) -> None:
    report = audit_corpus(tmp_path, name, args, "cpu")
    assert (report["mode"], report["step_source"], len(report["steps"])) == ("inferred", step_source, 3)
    assert {(f["location"]["line"], f["op"]) for f in report["findings"]} == planted(CORPUS / name)


@pytest.mark.cuda
@pytest.mark.parametrize(("name", "args", "step_source"), CORPUS_CASES)
def test_corpus_on_cuda_what_is_observed_is_what_the_cpu_run_inferred(
    tmp_path: Path, name: str, args: list[str], step_source: str
) -> None:
    report = audit_corpus(tmp_path, name, args, "cuda")
    assert (report["mode"], report["step_source"], len(report["steps"])) == ("observed", step_source, 3)
    # Kernels that sync inside their CUDA implementation, on autograd's device threads, have no Python line:
    # the CPU run cannot infer them, and they are not planted.
    located = [f for f in report["findings"] if f["location"] is not None]
    assert {(f["location"]["line"], f["op"]) for f in located} == planted(CORPUS / name, "cuda")


def corpus_findings(tmp_path: Path, name: str) -> dict[str, dict]:
    """The findings of a corpus script audited for 3 steps, by the op they report."""
    _, report = audit_json(tmp_path, str(CORPUS / name), "--steps", "3")
    return {f["op"]: f for f in report["findings"]}


def test_corpus_syncs_and_copies_inside_libraries_name_the_library_function(tmp_path: Path) -> None:
    hf = corpus_findings(tmp_path, "hf_accelerate_loop.py")
    assert hf["bool(tensor) / if tensor:"]["via"].startswith("transformers.masking_utils.")
    assert hf[".to()"]["via"] == (
        "transformers.tokenization_utils_base.BatchEncoding.to (from accelerate.data_loader.DataLoaderShard.__iter__)"
    )
    assert "DataLoaderConfiguration(non_blocking=True)" in hf[".to()"]["fix"]
    causal = corpus_findings(tmp_path, "transformer_encoder_causal.py")["bool(tensor) / if tensor:"]
    assert causal["via"] == "torch.nn.modules.transformer._detect_is_causal_mask"
    assert "`encoder(x, mask=mask, is_causal=True)`" in causal["fix"]
    _, lstm = audit_json(tmp_path, str(CORPUS / "lstm_packed.py"), "--steps", "3")
    (packing,) = [f for f in lstm["findings"] if f["via"]]
    assert packing["via"] == "torch.nn.utils.rnn.pack_padded_sequence"
    assert "pass `enforce_sorted=True`" in packing["fix"]


def test_corpus_advice_fits_the_place(tmp_path: Path) -> None:
    found = corpus_findings(tmp_path, "dataset_getitem.py")
    in_getitem = found["torch.randn"]
    assert "Dataset.__getitem__ or a collate function" in in_getitem["why"]
    assert "num_workers" in in_getitem["fix"] and "device=" not in in_getitem["fix"]
    copy = found[".to()"]
    assert copy["detail"].endswith("non_blocking from pageable memory: synchronous in practice")
    assert "pin_memory=True" in copy["fix"]


def test_manual_sgd_counts_backward_calls_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(CORPUS / "manual_sgd.py"), "--steps", "2"]) == 0
    assert "2 step(s) (steps end at backward(), as no optimizer.step() was seen)" in capsys.readouterr().out


def test_a_script_that_never_names_a_device_is_told_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(script(tmp_path, TRAIN_LOOP.format(steps=2)))]) == 0
    assert "the script never names a device (no `.to(device)`, no `device=`)" in capsys.readouterr().out


def test_a_script_that_raises_before_its_first_step_reports_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, "import torch\nx = torch.ones(2, device='cpu').sum().item()\nraise KeyError('vocab')\n")
    assert main(["audit", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"tangtoc audit: {path} raised KeyError: 'vocab'; the report covers the run (it ended before its first " in (
        err
    )
    assert "finished without calling optimizer.step()" not in err


def test_an_interrupted_audit_reports_the_steps_done_marked_partial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = TRAIN_LOOP.format(steps=2) + "model(torch.ones(1, 2)).sum().item()\nraise KeyboardInterrupt\n"
    out_json = tmp_path / "r.json"
    assert main(["audit", str(script(tmp_path, body)), "--steps", "5", "--json", str(out_json)]) == 130
    captured = capsys.readouterr()
    assert "2 step(s) (steps end at optimizer.step(); PARTIAL: interrupted after 2 of 5 steps)" in captured.out
    assert "tangtoc audit: interrupted; the report above is partial: it covers the 2 step(s) before." in captured.err
    report = json.loads(out_json.read_text())
    assert len(report["steps"]) == 2
    assert report["run"] == {"exit_status": 130, "error": None, "interrupted": True}


THREADED_LOOP = """
import threading, torch
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
done = []
def work():
    for _ in range(4):
        loss = model(torch.ones(1, 2)).sum()
        loss.backward()
        opt.step()
        loss.item()
    done.append(True)
threads = [threading.Thread(target=work) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print("workers finished:", len(done))
"""


def test_steps_in_other_threads_are_neither_stopped_nor_reported_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", str(script(tmp_path, THREADED_LOOP)), "--steps", "2"]) == 1
    captured = capsys.readouterr()
    assert "workers finished: 2" in captured.out  # no stop exception was raised in the workers
    assert (
        "Not seen: 8 optimizer step(s) taken in other threads. Only the thread that runs the script is audited; "
        "what those threads sync or copy is not in this report." in captured.out
    )
    assert "No syncs, copies or CPU-born tensors found" not in captured.out
    assert "ran its 8 optimizer step(s) in other threads than the one that runs the script" in captured.err


def test_a_folder_is_said_to_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(tmp_path)]) == 2
    assert f"tangtoc audit: error: {str(tmp_path)!r} is a folder, not a script." in capsys.readouterr().err


def test_a_script_python_refuses_for_its_encoding_is_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "latin.py"
    path.write_bytes(b"# caf\xe9\n" + f"open({str(marker)!r}, 'w').close()\n".encode())
    assert main(["audit", str(path)]) == 1
    assert (
        f"tangtoc audit: {path} is not valid utf-8 text (byte b'\\xe9' at offset 5: invalid continuation byte), "
        "so Python refuses to run it and nothing was run." in capsys.readouterr().err
    )
    assert not marker.exists()


def test_an_ascii_terminal_gets_ascii_not_a_crash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tangtoc", "audit", str(EXAMPLE), "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "    x[bool mask] -- would synchronize on a GPU (all on the CPU here); 1.0x/step, ~20 us/step" in proc.stdout
