"""`tangtoc advise` as a user runs it: a factory that cannot be loaded gives a clear message and exit 2; a run
prints measured and predicted numbers and a recommendation, and writes JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tangtoc.cli import main

HERE = Path(__file__).parent
FAST = ["--min-time", "0.01", "--threads", "1"]


@pytest.fixture
def factories_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_module_xyz:make", r"cannot import module 'no_such_module_xyz' \(No module named"),
        ("advise_factories", "--factory must look like module:function"),
        ("advise_factories:missing", r"module 'advise_factories' has no attribute 'missing'\. It defines: .*good"),
        ("advise_factories:NOT_A_FUNCTION", "advise_factories:NOT_A_FUNCTION is a int, not a function"),
        ("advise_factories:returns_model_only", r"returned a Sequential; expected \(model, example_batch\) or"),
        ("advise_factories:returns_three_wrong", "returned a str as the model"),
        ("advise_factories:returns_batch_without_tensors", "example batch: the example batch holds no tensor"),
        ("advise_factories:loss_not_scalar", "loss_fn must return the loss as a one-element tensor"),
        (
            "advise_factories:pair_without_loss_fn",
            r"without a loss_fn the model is called as model\(\*batch\) and must return its loss, but the batch is "
            r"a tuple of 2 and the model's forward\(input\) does not take that \(Sequential.forward\(\) takes 2",
        ),
    ],
)
@pytest.mark.usefixtures("factories_on_path")
def test_factory_errors_are_usage_errors(factory: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--factory", factory, *FAST]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long messages
    assert re.search(message, err), err
    assert "Traceback" not in err


@pytest.mark.usefixtures("factories_on_path")
def test_a_factory_that_raises_shows_its_own_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--factory", "advise_factories:raises"]) == 2
    err = capsys.readouterr().err
    assert "--factory: advise_factories:raises() raised FileNotFoundError: weights.pt not found (simulated)" in err
    assert "Traceback from your code:" in err
    assert "in raises" in err and "in _load_weights" in err  # their frames...
    assert "cli/advise.py" not in err  # ...not tangtoc's loader


@pytest.mark.usefixtures("factories_on_path")
def test_a_step_that_fails_is_a_failed_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--factory", "advise_factories:shapes_do_not_multiply", *FAST]) == 1
    err = capsys.readouterr().err
    assert "a training step of advise_factories:shapes_do_not_multiply (Sequential) failed" in err
    assert "cannot be multiplied" in err and "Traceback" not in err


@pytest.mark.usefixtures("factories_on_path")
def test_any_error_of_the_users_step_is_a_message_with_their_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--factory", "advise_factories:id_outside_vocabulary", *FAST]) == 1
    err = capsys.readouterr().err
    assert "failed: IndexError: index out of range in self" in err
    assert "Where, in your code:" in err and "advise_factories.py" in err and "return self.head(" in err
    assert "Traceback" not in err


def test_a_module_that_fails_on_import_shows_its_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "broken_workload.py"
    script.write_text("import torch\nraise RuntimeError('boom at import')\n")
    assert main(["advise", "--factory", f"{script}:make"]) == 2
    err = capsys.readouterr().err
    assert "importing" in err and "raised RuntimeError: boom at import" in err
    assert "broken_workload.py" in err and "Traceback from your code:" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # The library's own messages: the CLI no longer validates what advise() and workloads validate.
        (["--steps", "10", "--epochs", "1", "--dataset-size", "100"], "give either steps, or epochs and dataset_size"),
        (["--epochs", "2"], "epochs and dataset_size go together"),
        (["--target", "h1000"], r"unknown target GPU 'h1000'; known: auto, a100"),
        (["--size", "huge"], "unknown mlp size 'huge'; the sizes are: large, small, mini, tiny"),
        (["--batch-size", "0"], "batch_size must be an int >= 1, got 0"),
        (["--launch-us", "-1"], r"launch_overhead_s must be >= 0"),
        (["--factory", "x:y", "gpt"], "--factory replaces the built-in model"),
        (["--json", "/proc/no/such/dir/a.json"], "--json: cannot create the folder /proc/no/such/dir"),
        (["--factory", "no/such/file.py:make"], "no such file 'no/such/file.py'"),
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_a_builtin_run_prints_measured_predicted_and_a_recommendation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "advice.json"
    argv = ["advise", "cnn", "--batch-size", "4", "--target", "t4", "--steps", "100", "--json", str(out_json), *FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in (
        "Measured here",
        "Predicted, not measured",
        "Recommendation:",
        "Where the answer flips",
        "Assumptions of the predictions:",
        "NVIDIA T4 Tensor Core GPU datasheet",
        "fp16",
    ):
        assert text in out, text
    data = json.loads(out_json.read_text())
    advice = data["advice"]
    assert advice["verdict"] in ("cpu", "gpu", "gpu-with-changes")
    assert advice["job_steps"] == 100 and advice["batch_size"] == 4
    assert {p["target"] for p in advice["predicted"]} == {"t4"}
    assert advice["measured"][0]["device"] == "cpu"


@pytest.mark.usefixtures("factories_on_path")
@pytest.mark.parametrize("factory", ["advise_factories:good", "advise_factories:good_without_loss"])
def test_a_user_factory_is_advised(factory: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--factory", factory, "--epochs", "1", "--dataset-size", "1600", *FAST]) == 0
    out = capsys.readouterr().out
    assert f"tangtoc advise: {factory}" in out and "1 epochs x 1,600 samples / batch 16 = 100 steps" in out
    assert "Recommendation:" in out


@pytest.mark.usefixtures("factories_on_path")
@pytest.mark.parametrize("factory", ["advise_factories:hf_causal_lm", "advise_factories:nanogpt_style"])
def test_models_that_return_their_loss_are_advised(factory: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A Hugging Face model on a dict batch with labels, and a (logits, loss) model: no loss_fn, no adapter."""
    pytest.importorskip("transformers")
    assert main(["advise", "--factory", factory, "--steps", "10", "--target", "h100", *FAST]) == 0
    out = capsys.readouterr().out
    assert "Recommendation:" in out and "Counted per step" in out and "batch 4" in out


@pytest.mark.usefixtures("factories_on_path")
def test_batch_size_is_passed_to_a_factory_that_takes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's LSTM classifier at the batch asked for: its recurrent FLOPs are counted, not 0."""
    out_json = tmp_path / "lstm.json"
    argv = ["advise", "--factory", "advise_factories:lstm_classifier", "--batch-size", "8", "--steps", "10"]
    assert main([*argv, "--target", "h100", "--json", str(out_json), *FAST]) == 0
    assert "batch 8" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert (data["schema"], data["schema_version"]) == ("tangtoc.advise", 1)
    ops = {o["op"]: o for o in data["advice"]["count"]["ops"]}
    lstm = ops.get("aten.mkldnn_rnn_layer") or ops["aten.mm"]  # oneDNN's one op, or the per-step matmuls
    assert lstm["flops"] > 0 and lstm["flops_counted"] and data["advice"]["uncounted"] == []


@pytest.mark.usefixtures("factories_on_path")
@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "advise_factories:good",
            r"--batch-size: advise_factories:good\(\) has no batch_size parameter, so its example batch decides the "
            r"batch size\. Fix: drop --batch-size, or give the factory one \(def good\(batch_size=16\)",
        ),
        (
            "advise_factories:ignores_batch_size",
            r"--batch-size 4: advise_factories:ignores_batch_size\(batch_size=4\) returned an example batch of 16",
        ),
    ],
)
def test_batch_size_a_factory_cannot_honour_is_refused(
    factory: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["advise", "--factory", factory, "--batch-size", "4", *FAST]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err), err


def test_a_json_that_cannot_be_written_after_the_run_keeps_the_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The path was writable when checked, before the work; by the end a folder stands there (any change to the
    disk during a long run): the advice is printed, the failure said, exit 1, no traceback."""
    target = tmp_path / "advice.json"
    script = tmp_path / "workload.py"
    script.write_text(
        "import pathlib, torch, torch.nn.functional as F\n"
        "def make():\n"
        f"    pathlib.Path({str(target)!r}).mkdir()  # the file's path becomes a folder during the run\n"
        "    return torch.nn.Linear(8, 3), (torch.randn(16, 8), torch.randint(0, 3, (16,))), F.cross_entropy\n"
    )
    assert main(["advise", "--factory", f"{script}:make", "--steps", "10", "--json", str(target), *FAST]) == 1
    captured = capsys.readouterr()
    assert "Recommendation:" in captured.out and f"wrote {target}" not in captured.out
    err = " ".join(captured.err.split())
    assert f"tangtoc advise: error: refusing to write {target}: it is a folder" in err, err
    assert "The advice is above." in err and "Traceback" not in err
