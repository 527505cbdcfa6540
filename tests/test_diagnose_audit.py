"""audit: per step, each sync, copy and CPU-born tensor at the user's line; the library's own work is not blamed."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F
from torch.optim.optimizer import _global_optimizer_post_hooks

import tangtoc as tt
from tangtoc.cli import main
from tangtoc.diagnose import Audit, StopAudit, audit, mark_step
from tangtoc.diagnose.audit_report import AuditReport
from tangtoc.diagnose.runner import run_script
from tangtoc.errors import TangtocError

SOURCE = Path(__file__).read_text().splitlines()
THIS = "tests/test_diagnose_audit.py"


def line_of(marker: str) -> int:
    """The line of this file carrying ``# audit: <marker>``."""
    return next(i for i, line in enumerate(SOURCE, 1) if line.rstrip().endswith(f"# audit: {marker}"))


def found(report: AuditReport) -> set[tuple[int, str]]:
    return {(f.location.line, f.op) for f in report.findings if f.location and str(f.location).startswith(THIS)}


def sync_heavy_steps(steps: int) -> None:
    """A CPU training loop with one of each host-side read, on marked lines."""
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    opt = torch.optim.Adam(model.parameters())  # Adam reads its CPU step counter with .item(): not the user's
    data = torch.randn(64, 8, device="cpu")
    for step in range(steps):
        x = data[step * 4 : step * 4 + 4].to("cpu")  # planted: .to()
        logits = model(x)
        loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))  # planted: torch.tensor
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # planted: .item()
        logits.tolist()  # planted: .tolist()
        logits.detach().numpy()  # planted: .numpy()
        np.asarray(logits.detach())  # planted: np.asarray(tensor)
        float(loss.detach())  # planted: float(tensor)
        int(logits.argmax())  # planted: int(tensor)
        range(logits.argmax())  # planted: tensor as an index
        f"{loss:.3f}"  # planted: format(tensor) / f-string
        repr(loss)  # planted: print(tensor) / repr
        if loss > 0:  # planted: bool(tensor) / if tensor:
            pass
        logits[logits > 0]  # planted: x[bool mask]
        logits[logits < 0] = 0  # planted: x[bool mask] = v
        logits.nonzero()  # planted: nonzero
        torch.unique(logits)  # planted: unique
        logits.masked_select(logits > 0)  # planted: masked_select
        torch.equal(logits, logits)  # planted: torch.equal / allclose
        torch.repeat_interleave(torch.tensor([1, 2], device="cpu"))  # planted: repeat_interleave
        logits.cpu()  # planted: .cpu()
        torch.zeros(3, device="cpu")  # explicit device=: on a GPU run this is the GPU, so not reported here
        tt.fetch(loss)  # the fix: the library's own read is not counted


def test_every_host_side_read_is_found_at_its_line_on_a_cpu_machine() -> None:
    with audit() as a:
        sync_heavy_steps(3)
    report = a.report()
    lines, first = inspect.getsourcelines(sync_heavy_steps)
    planted = {
        (first + i, line.split("# planted: ")[1].rstrip()) for i, line in enumerate(lines) if "# planted:" in line
    }
    assert found(report) == planted
    assert report.device == "cpu" and report.cpu_only
    assert report.mode == "unnamed"  # no device named (only "cpu" literally): every host read is listed
    assert all(f.cpu_only for f in report.findings)
    (item,) = [f for f in report.findings if f.op == ".item()"]
    assert item.detail == "would synchronize on a GPU (all on the CPU here)"
    assert "tt.fetch(loss, acc)" in item.fix


def test_steps_end_at_optimizer_step_and_the_limit_stops_the_loop_cleanly() -> None:
    reached = []
    with audit(steps=2) as a:
        sync_heavy_steps(10)
        reached.append("after the loop")  # never runs: StopAudit ends the block
    report = a.report()
    assert not reached
    assert (report.step_source, report.stopped, len(report.steps)) == ("optimizer.step()", True, 2)
    # The reads after opt.step() belong to the next step: step 1 is set-up plus the first forward pass.
    # 17 planted syncs, and the blocking copy back of `.cpu()`.
    assert [s.syncs for s in report.steps] == [0, 18]


def test_a_loops_except_exception_does_not_swallow_the_stop() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 0
    with audit(steps=1):
        for _ in range(5):
            try:
                model(torch.ones(1, 2)).sum().backward()
                opt.step()
                steps += 1
            except Exception:
                pass
    assert steps == 0  # StopAudit (a BaseException) left the loop at the first step


def test_mark_step_defines_the_steps() -> None:
    mark_step()  # no audit active: nothing happens
    with audit() as a:
        for _ in range(3):
            torch.ones(2, device="cpu").sum().item()  # audit: marked .item()
            mark_step()
        torch.ones(2, device="cpu").sum().item()  # after the last mark: counted apart
    report = a.report()
    assert report.step_source == "mark_step()"
    assert [s.syncs for s in report.steps] == [1, 1, 1]
    assert report.events_after_last_step == 1
    assert found(report) == {(line_of("marked .item()"), ".item()")}


def test_without_steps_the_whole_run_is_reported() -> None:
    with audit() as a:
        torch.ones(2, device="cpu").sum().item()
    report = a.report()
    assert report.step_source is None and report.steps == ()
    assert [f.op for f in report.findings] == [".item()"]


def test_real_copies_are_counted_with_bytes_and_memory_kind() -> None:
    batch = {"x": torch.randn(4, 8), "ids": torch.arange(4)}
    with audit(device="meta") as a:
        for _ in range(2):
            x = torch.randn(4, 8).to("meta")  # audit: a real copy
            moved = tt.to_device(batch, "meta")  # audit: a copy inside a library call
            torch.asarray(torch.ones(16), device="meta")  # audit: a copy only the aten layer sees
            torch.as_tensor([[1.0, 2.0]], device="meta")  # audit: host data copied at creation
            torch.empty(4, 8, device="meta").copy_(x.new_empty(4, 8, device="cpu"))  # audit: copy_
            mark_step()
    assert moved["x"].device.type == "meta"
    report = a.report()
    by_line = {f.location.line: f for f in report.findings if f.kind == "copy"}
    real = by_line[line_of("a real copy")]
    assert (real.op, real.count, real.bytes) == (".to()", 2, 2 * 4 * 8 * 4)
    assert real.detail == "cpu→meta copy, pageable, blocking"
    assert by_line[line_of("a copy inside a library call")].count == 4  # two tensors per step, at the user's line
    assert by_line[line_of("a copy only the aten layer sees")].op == "aten._to_copy"
    at_creation = by_line[line_of("host data copied at creation")]
    assert (at_creation.op, at_creation.detail) == ("torch.as_tensor", "cpu→meta copy, pageable, blocking")
    assert by_line[line_of("copy_")].op == ".copy_()"
    assert [s.copies for s in report.steps] == [6, 6]  # each copy once: the aten layer does not recount them


def test_on_an_accelerator_cpu_reads_are_not_syncs_and_only_cpu_born_tensors_that_meet_it_are_reported() -> None:
    host = torch.ones(2)
    with audit(device="meta") as a:
        for _ in range(2):
            host.sum().item()  # a CPU tensor's value: no device to wait for
            torch.zeros(3, device="cpu") * 2  # never meets the device: it stays on the host in any run
            (torch.zeros(3, device="cpu") + 1).to("meta")  # audit: born on the CPU inside a step
            mark_step()
    report = a.report()
    assert not report.cpu_only and report.mode == "observed"
    line = line_of("born on the CPU inside a step")
    assert found(report) == {(line, "torch.zeros"), (line, ".to()")}
    (born,) = [f for f in report.findings if f.kind == "cpu-tensor"]
    assert "while the model computes on meta" in born.why


def test_set_up_is_what_runs_before_the_loop_and_a_later_one_off_is_once_in_its_step() -> None:
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with audit() as a:
        torch.randn(100_000)  # audit: set-up
        torch.ones(1, device="cpu").item()  # a set-up sync: counted, not listed
        for step in range(4):
            model(torch.ones(1, 4, device="cpu")).sum().backward()
            opt.step()
            torch.ones(1, device="cpu").item()  # audit: in the loop
            if step == 2:
                torch.ones(1, device="cpu").tolist()  # audit: one-off
    report = a.report()
    ops = [(f.location.line, f.steps_seen, f.first_step, f.setup_count) for f in report.findings]
    # The reads after opt.step() belong to the next step: the loop's read is in steps 2-4, the one-off in step 4.
    assert ops == [(line_of("in the loop"), 3, 2, 0), (line_of("one-off"), 1, 4, 0), (line_of("set-up"), 0, 0, 1)]
    assert report.setup is not None and (report.setup.syncs, report.setup.cpu_tensors) == (1, 1)
    assert [s.syncs for s in report.steps] == [0, 1, 1, 2]


def test_modes_hooks_and_synchronize_are_restored_on_every_exit_path() -> None:
    sync = torch.cuda.synchronize
    modes = torch._C._len_torch_function_stack()
    with pytest.raises(ZeroDivisionError), audit():
        assert torch.cuda.synchronize is not sync
        raise ZeroDivisionError
    assert torch.cuda.synchronize is sync
    assert torch._C._len_torch_function_stack() == modes
    assert not _global_optimizer_post_hooks
    with audit():  # a new audit can start
        pass


def test_audits_do_not_nest() -> None:
    with audit(), pytest.raises(TangtocError, match="an audit is already active in this process; audits do not nest"):
        audit().__enter__()


def test_bad_step_count() -> None:
    with pytest.raises(ValueError, match=r"audit\(steps=...\) must be at least 1, got 0"):
        audit(steps=0)


def test_stop_audit_is_not_an_exception() -> None:
    assert issubclass(StopAudit, BaseException) and not issubclass(StopAudit, Exception)


def test_report_serialises_to_json() -> None:
    with audit(steps=2) as a:
        sync_heavy_steps(5)
    data = json.loads(json.dumps(a.report().to_dict()))
    assert data["device"] == "cpu" and data["stopped_at_limit"] is True
    assert data["mode"] == "unnamed" and data["setup"]["step"] == 0
    assert {"via", "first_step", "setup_count"} <= set(data["findings"][0])
    assert data["cost_model"]["sync_seconds"] > 0
    first = data["findings"][0]
    assert {"file", "line", "function", "code"} == set(first["location"])
    assert first["location"]["file"] == THIS


@pytest.mark.cuda
def test_real_cuda_syncs_and_pinned_copies() -> None:
    host = torch.randn(1024).pin_memory()
    with audit(device="cuda") as a:
        for _ in range(2):
            x = host.to("cuda", non_blocking=True)  # audit: pinned copy
            x.sum().item()  # audit: cuda item
            torch.cuda.synchronize()  # audit: cuda synchronize
            mark_step()
    report = a.report()
    by_line = {f.location.line: f for f in report.findings}
    assert by_line[line_of("pinned copy")].detail == "cpu→cuda copy, pinned, non-blocking"
    assert by_line[line_of("cuda item")].detail == "synchronizes the host with the device"
    assert by_line[line_of("cuda synchronize")].op == "torch.cuda.synchronize()"


def test_once_a_device_is_named_host_tensors_are_not_would_be_syncs() -> None:
    device = "cpu"  # what `"cuda" if torch.cuda.is_available() else "cpu"` gives on this machine
    model = nn.Linear(4, 2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = torch.tensor([0, 1])
    with audit() as a:
        history = torch.zeros(3)  # eval losses: a host tensor in any run
        for step in range(3):
            x = torch.randn(2, 4, device=device)
            loss = F.cross_entropy(model(x), labels.to(device))  # audit: the same host tensor, copied every step
            opt.zero_grad()
            loss.backward()
            opt.step()
            history[step] = loss.item()  # audit: a device read
            history.mean().item()  # a host read: not a GPU sync
            x.cpu().sum().item()  # audit: back to the host
            if history[step] > 100:  # a host read
                break
    report = a.report()
    assert report.mode == "inferred"
    assert found(report) == {
        (line_of("the same host tensor, copied every step"), ".to()"),
        (line_of("a device read"), ".item()"),
        (line_of("back to the host"), ".cpu()"),
    }
    by_op = {f.op: f for f in report.findings}
    assert (by_op[".to()"].count, by_op[".to()"].steps_seen) == (3, 3)
    assert by_op[".cpu()"].detail == "would copy on a GPU (all on the CPU here)"


def test_host_data_put_on_the_device_would_be_copied() -> None:
    device = "cpu"
    with audit() as a:
        buffer = torch.zeros(4, device=device)
        for step in range(2):
            torch.tensor([step, step + 1], device=device)  # audit: a list copied to the device
            buffer.copy_(torch.arange(4.0))  # audit: a host tensor copied in
            torch.zeros(2).copy_(buffer[:2])  # audit: and back out
            mark_step()
    by_line = {f.location.line: f for f in a.report().findings if f.kind == "copy"}
    assert found(a.report()) == {
        (line_of("a list copied to the device"), "torch.tensor"),
        (line_of("a host tensor copied in"), ".copy_()"),
        (line_of("a host tensor copied in"), "torch.arange"),  # made for the device: make it there
        (line_of("and back out"), ".copy_()"),  # the host buffer receiving it is no CPU-born finding
    }
    assert "copies host memory to the device" in by_line[line_of("a host tensor copied in")].why
    assert "brings a result back to the host" in by_line[line_of("and back out")].why


def test_a_line_naming_the_cpu_is_a_host_move_not_the_device() -> None:
    with audit() as a:
        for _ in range(2):
            x = torch.ones(3).to("cpu")  # the CPU on purpose: not a device, and nothing to copy
            x.sum().item()
            mark_step()
    assert a.report().mode == "unnamed"


def test_a_cpu_tensor_that_never_meets_the_device_is_not_reported_and_one_that_does_is() -> None:
    device = "cpu"
    weight = torch.randn(4, 4, device=device)
    with audit() as a:
        for _ in range(2):
            ix = torch.randint(0, 10, (4,))  # indexes a host list: stays on the host
            [list(range(10))[i] for i in ix]
            bias = torch.zeros(4)  # audit: meets the device
            weight @ torch.ones(4, 1, device=device) + bias
            mark_step()
    report = a.report()
    assert found(report) == {(line_of("meets the device"), "torch.zeros")}
    assert "device=x.device" in report.findings[0].fix


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("mask", torch.ones(4))  # a buffer: moves with the model
        self.offset = torch.zeros(4)  # audit: a plain attribute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.mask + self.offset


def test_a_plain_tensor_attribute_is_told_to_become_a_buffer_and_a_buffer_is_not() -> None:
    device = "cpu"
    with audit() as a:
        model = _Scaled().to(device)
        for _ in range(2):
            model(torch.ones(1, 4, device=device))
            mark_step()
    report = a.report()
    assert found(report) == {(line_of("a plain attribute"), "torch.zeros")}
    (f,) = report.findings
    assert "created in a module's __init__ as a plain tensor attribute" in f.why
    assert "self.register_buffer(name, tensor, persistent=False)" in f.fix
    assert (f.setup_count, f.steps_seen) == (1, 0)


def test_a_library_read_of_a_device_tensor_is_reported_at_the_users_line_naming_the_library() -> None:
    device = "cpu"
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).to(device)
    encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).to(device)
    mask = nn.Transformer.generate_square_subsequent_mask(5, device=device)
    with audit() as a:
        for _ in range(2):
            encoder(torch.ones(1, 5, 8, device=device), mask=mask)  # audit: reads the mask inside
            encoder(torch.ones(1, 5, 8, device=device), mask=mask, is_causal=True)  # the hint: no read
            mark_step()
    (f,) = a.report().findings
    assert (f.location.line, f.op, f.via) == (
        line_of("reads the mask inside"),
        "bool(tensor) / if tensor:",
        "torch.nn.modules.transformer._detect_is_causal_mask",
    )
    assert f.why.startswith("inside torch.nn.modules.transformer._detect_is_causal_mask, which this line calls: ")


def _manual_sgd(steps: int, accumulate: int) -> Audit:
    device = "cpu"
    model = nn.Linear(4, 1).to(device)
    x = torch.ones(8, 4, device=device)
    with audit() as a:
        for _ in range(steps):
            for _ in range(accumulate):
                model(x).pow(2).mean().backward()
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-0.1)
            model.zero_grad()
    return a


@pytest.mark.parametrize("accumulate", [1, 3])
def test_without_an_optimizer_each_backward_whose_gradients_were_used_is_a_step(accumulate: int) -> None:
    report = _manual_sgd(4, accumulate).report()
    assert (report.step_source, len(report.steps)) == ("backward()", 4)


def test_with_an_optimizer_accumulated_backward_calls_are_one_step() -> None:
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with audit() as a:
        for _ in range(3):
            for _ in range(2):
                model(torch.ones(2, 4, device="cpu")).sum().backward()
            opt.step()
            opt.zero_grad()
    report = a.report()
    assert (report.step_source, len(report.steps)) == ("optimizer.step()", 3)


def test_backward_steps_stop_at_the_limit() -> None:
    with audit(steps=2) as a:
        _manual_sgd_body(10)
    assert (a.report().step_source, len(a.report().steps), a.report().stopped) == ("backward()", 2, True)


def _manual_sgd_body(steps: int) -> None:
    w = torch.ones(4, requires_grad=True)
    for _ in range(steps):
        (w * 2).sum().backward()
        w.grad = None


def test_a_leaf_moved_to_the_device_keeps_its_gradient() -> None:
    device = "cpu"
    with audit() as a:
        w = torch.ones(3, requires_grad=True).to(device)
        grads = []
        for _ in range(2):
            (w * 2).sum().backward()
            grads.append(w.grad)
            w.grad = None
    assert all(g is not None for g in grads) and len(grads) == 2  # `w` is still the leaf autograd fills
    assert a.report().step_source == "backward()"


def test_an_optimizer_calling_super_step_is_one_step_per_call() -> None:
    class Clipped(torch.optim.SGD):  # a user's optimizer: torch wraps its step() and SGD's, so hooks run twice
        def step(self, closure=None):  # type: ignore[no-untyped-def]
            return super().step(closure)

    model = nn.Linear(2, 2)
    torch.optim.SGD(model.parameters(), lr=0.1)  # SGD's own step() is wrapped once an SGD is made
    opt = Clipped(model.parameters(), lr=0.1)
    with audit() as a:
        for _ in range(3):
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
    assert len(a.report().steps) == 3


def test_the_trainers_nan_inf_check_gets_its_own_fix() -> None:
    from tangtoc.diagnose.audit_findings import _library_advice
    from tangtoc.diagnose.audit_report import EventKey

    key = EventKey("sync", "bool", None, cpu_only=True, via="transformers.trainer.Trainer._run_epoch")
    _, fix = _library_advice(key, "why", "generic")
    assert fix.endswith("`TrainingArguments(logging_nan_inf_filter=False)` removes these syncs")


def test_a_report_reads_as_what_tangtoc_audit_prints(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "sync_heavy.py"
    assert main(["audit", str(example), "--steps", "3"]) == 0
    cli = capsys.readouterr().out
    cli = cli[cli.index("tangtoc audit: ") :]  # after the script's own prints
    a = audit(steps=3)
    assert run_script(example, [], a).status == 0
    report = a.report()
    assert report.text(script=str(example)) + "\n" == cli
    # Without the script's name, the same report: print(report), a rich console and a notebook cell show it.
    assert str(report).splitlines()[1:] == cli.splitlines()[1:]
    assert str(report).startswith("tangtoc audit: 3 step(s) (steps end at optimizer.step()); model on cpu\n")
    console = Console(record=True, width=10_000)
    console.print(report)
    assert console.export_text() == f"{report}\n"
    assert report._repr_html_().startswith("<pre>tangtoc audit: 3 step(s)") and "AuditReport(" not in str(report)
    assert "x[bool mask]" in str(report) and "why: " in str(report) and "fix: " in str(report)


def test_a_report_says_when_the_code_ended_before_the_steps_asked_and_when_it_was_interrupted() -> None:
    with audit(steps=5) as a:
        model = nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
    report = a.report()
    assert report.steps_asked == 5 and report.to_dict()["steps_asked"] == 5
    assert "2 step(s) (steps end at optimizer.step(); the script ended after 2 of 5 steps)" in str(report)
    assert "(steps end at optimizer.step(); PARTIAL: interrupted after 2 of 5 steps)" in report.text(interrupted=True)
    with audit() as unlimited:
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    assert "1 step(s) (steps end at optimizer.step()); model on cpu" in str(unlimited.report())


def test_a_report_without_steps_counts_the_whole_run_not_per_step() -> None:
    # An eval loop has no optimizer.step(): the report covers the whole run, so "3.0×/step" misstated it.
    model = torch.nn.Linear(4, 2).to("cpu")
    with tt.audit() as audit:
        for _ in range(3):
            model(torch.randn(2, 4).to("cpu", non_blocking=True)).sum().item()
    text = str(audit.report())
    assert "0 step(s) (no steps: the whole run)" in text
    assert "/step" not in text.split("µs/step are estimates")[0], text
    assert "3× in the run, ~60 µs" in text, text


def _encoder(nested: bool) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested).eval()


@pytest.mark.parametrize("nested", [True, False])
def test_the_transformer_encoder_fast_path_reads_its_padding_mask_on_the_host(nested: bool) -> None:
    # In eval or no_grad with a src_key_padding_mask, nn.TransformerEncoder turns the mask into a nested tensor
    # inside C++ (aten._nested_tensor_from_mask_left_aligned), which waits for the GPU; the Python layer never sees
    # it, and on the CPU only device intent can tell that it would.
    enc, x = _encoder(nested), torch.randn(2, 5, 16)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    device = "cpu"  # what `"cuda" if torch.cuda.is_available() else "cpu"` gives here (a literal "cpu" means host)
    with torch.no_grad(), audit() as a:
        enc(x.to(device, non_blocking=True), src_key_padding_mask=mask.to(device, non_blocking=True))
    syncs = [f for f in a.report().findings if f.kind == "sync"]
    if nested:
        assert [f.op for f in syncs] == ["padding mask to a nested tensor"]
        assert "enable_nested_tensor=False" in syncs[0].fix
    else:
        assert syncs == []
