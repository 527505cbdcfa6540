"""What fit() shows while it runs and what its final loss is: progress off a terminal, the last step's loss."""

from __future__ import annotations

import importlib.util
import io
import re

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F

from tangtoc.console import ProgressBar, _draws_live
from tangtoc.train import FitEvent, fit


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)) for _ in range(n)]


def test_off_a_terminal_each_log_point_prints_one_line_as_it_happens(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []

    def at_log_point(event: FitEvent) -> None:
        if event.kind == "log":  # the line must be out already, not at the end of the run
            seen.append(capsys.readouterr().err)

    fit(nn.Linear(4, 2), _batches(6), loss_fn=F.mse_loss, steps=6, log_every=2, device="cpu", callbacks=[at_log_point])
    assert [len(s.splitlines()) for s in seen] == [1, 1, 1]
    # On the CPU no peak is published: each line says there is no MFU (the summary says why, once).
    no_mfu = r"MFU n/a"
    head = r"train step {}/6 \| loss \d+\.\d{{4}} \| lr 0\.001 \| [\d,]+ samples/s \| "  # lr: the default optimizer's
    line = head + no_mfu + r" \| \d+\.\d s elapsed\n"
    for step, text in zip((2, 4, 6), seen, strict=True):
        assert re.fullmatch(line.format(step), text), text


def test_evaluations_get_their_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    data = _batches(5)
    fit(nn.Linear(4, 2), data[:4], loss_fn=F.mse_loss, steps=4, log_every=2, eval_data=data[4:], eval_every=2,
        device="cpu")  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "train step 2/4",
        "eval step 2",
        "train step 4/4",
        "eval step 4",
    ]
    assert re.fullmatch(r"eval step 4 \| eval loss \d+\.\d{4}", lines[-1])


def test_progress_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    fit(nn.Linear(4, 2), _batches(4), loss_fn=F.mse_loss, steps=4, log_every=2, device="cpu", progress=False)
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_the_bar_and_no_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with ProgressBar(4, 0, True, console) as bar:
        bar.update(2, {"loss": 1.5, "samples_per_s": 10.0, "elapsed_s": 0.1})
    assert "train step" not in out.getvalue() and "loss 1.5000" in out.getvalue()


@pytest.mark.parametrize("widgets", [True, False])
def test_a_notebook_gets_the_bar_only_where_rich_can_draw_it(widgets: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (object() if widgets else None) if name == "ipywidgets" else real(name, *a),
    )
    assert _draws_live(Console(file=io.StringIO(), force_jupyter=True)) is widgets
    assert not _draws_live(Console(file=io.StringIO(), force_jupyter=False, force_terminal=False))


def test_the_final_loss_says_its_steps_and_the_last_step_loss_is_read_too() -> None:
    model = nn.Linear(4, 2)
    data = _batches(6)
    # lr=0: every step sees the same weights, so each step's loss is known beforehand.
    result = fit(model, data, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), loss_fn=F.mse_loss, steps=6,
                 log_every=4, device="cpu", progress=False)  # fmt: skip
    with torch.no_grad():
        losses = [F.mse_loss(model(x), y).item() for x, y in data]
    assert result.loss_steps == (5, 6)
    assert result.loss == pytest.approx(sum(losses[4:]) / 2)
    assert result.last_step_loss == pytest.approx(losses[5])


@pytest.mark.parametrize(("wait_per_batch", "share"), [(0.0, 0.0), (1e6, 1.0)])
def test_fit_reports_the_share_of_time_spent_waiting_for_batches(
    monkeypatch: pytest.MonkeyPatch, wait_per_batch: float, share: float
) -> None:
    # issue 14 item 5: fit's own data-wait share, from the clock around the data iterator's next(); here a fake
    # clock says how long each next() took, so the share is known exactly (capped at the whole interval).
    import importlib

    import torch.nn.functional as F

    from tangtoc.train import fit

    ticks = iter(range(10**6))
    monkeypatch.setattr(importlib.import_module("tangtoc.train.run"), "now", lambda: next(ticks) * wait_per_batch)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(4)]
    result = fit(torch.nn.Linear(3, 2), batches, loss_fn=F.cross_entropy, steps=8, log_every=4, progress=False)
    assert result.data_wait_share == pytest.approx(share)
    assert all(r["data_wait_share"] == pytest.approx(share) for r in result.history if r["kind"] == "train")


def test_each_log_line_shows_mfu_with_the_peak_and_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    fit(nn.Linear(4, 2), _batches(4), loss_fn=F.mse_loss, steps=4, log_every=2, device="cpu", peak_flops=2e12)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert re.search(r" \| MFU \d+\.\d% of 2\.0 TFLOP/s \(peak_flops= given by the user\) \| ", line), line
