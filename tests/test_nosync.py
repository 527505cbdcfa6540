"""no_sync: a region fails at the first host-device sync, naming the call and its line; host data never does."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tangtoc.diagnose.nosync import SyncError, SyncWarning, TorchSyncWarnings, no_sync
from tangtoc.errors import TangtocError

SOURCE = Path(__file__).read_text().splitlines()
THIS = "tests/test_nosync.py"


def line_of(marker: str) -> int:
    """The line of this file carrying ``# sync: <marker>``."""
    return next(i for i, line in enumerate(SOURCE, 1) if line.rstrip().endswith(f"# sync: {marker}"))


def modes() -> tuple[int, int]:
    """How many torch function and dispatch modes are active: a guard must leave none behind."""
    return torch._C._len_torch_function_stack(), torch._C._len_torch_dispatch_stack()


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def test_host_data_with_no_device_intent_is_never_a_sync() -> None:
    # Last round the audit called reads of CPU-only tensors GPU syncs: on a GPU these stay on the host too.
    with no_sync() as guard:
        losses = torch.zeros(3)
        losses[0] = torch.tensor(0.5)
        losses.mean().item()
        print(losses)
        if losses.sum() > 0:
            losses.tolist()
        losses.cpu().numpy()
        np.asarray(losses)
        f"{losses[0]:.3f}"
        losses[losses > 0].nonzero()
        losses.to("cpu")
    assert guard.found == []


def test_item_on_a_model_output_raises_naming_the_call_and_its_line(model: nn.Module) -> None:
    x = torch.randn(3, 4)
    with (
        pytest.raises(SyncError, match=r"^`loss\.item\(\)` at tests/test_nosync\.py:\d+ waits for the GPU: ") as e,
        no_sync() as guard,
    ):
        loss = model(x).sum()
        loss.item()  # sync: item
    sync = e.value.sync
    assert (sync.op, sync.call, sync.location.line, sync.inferred) == (".item()", "loss.item()", line_of("item"), True)
    assert "reads a value on the host, so the CPU waits for all queued GPU work" in str(e.value)
    assert "fix: fetch values at log intervals" in str(e.value)
    assert "No GPU in use, so nothing waited here; on a GPU the tensor would be there" in str(e.value)
    assert guard.found == [sync]


@pytest.mark.parametrize(
    ("read", "op", "call"),
    [
        (lambda out: print(out), "print(tensor) / repr", "print(out)"),
        (lambda out: bool(out.sum() > 0), "bool(tensor) / if tensor:", "bool(out.sum() > 0)"),
        (lambda out: out.tolist(), ".tolist()", "out.tolist()"),
        (lambda out: out.cpu(), ".cpu()", "out.cpu()"),
        (lambda out: f"{out.sum():.3f}", "format(tensor) / f-string", 'f"{out.sum():.3f}"'),
        (lambda out: out[out > 0], "x[bool mask]", "out[out > 0]"),
        (lambda out: float(out.sum()), "float(tensor)", "float(out.sum())"),
    ],
    ids=["print", "bool", "tolist", "cpu", "f-string", "mask", "float"],
)
def test_every_host_read_of_a_device_tensor_raises(
    model: nn.Module, read: Callable[[torch.Tensor], object], op: str, call: str
) -> None:
    out = model(torch.randn(3, 4))
    with pytest.raises(SyncError) as e, no_sync():
        read(out)
    assert (e.value.sync.op, e.value.sync.call) == (op, call)


def test_a_blocking_copy_to_the_device_waits_and_a_non_blocking_one_does_not_on_the_cpu() -> None:
    device = "cpu"  # what `"cuda" if torch.cuda.is_available() else "cpu"` gives here
    batch = torch.randn(8, 4)
    with (
        pytest.raises(SyncError, match=r"`batch\.to\(device\)` at .* copies to the device and waits: a copy without"),
        no_sync(),
    ):
        batch.to(device)
    with (
        pytest.raises(SyncError, match=r"`torch\.tensor\(\[0, 1\], device=device\)` at .* copies to the device"),
        no_sync(),
    ):
        torch.tensor([0, 1], device=device)
    # Pinning needs a GPU: on the CPU whether the batch would be pinned cannot be told, so the move passes.
    with pytest.raises(SyncError, match=r"`moved\.sum\(\)\.item\(\)`"), no_sync() as guard:
        moved = batch.to(device, non_blocking=True)
        assert guard.found == []
        moved.sum().item()  # what was moved to the device is on it


def test_a_whole_training_step_is_clean_when_it_reads_nothing(model: nn.Module) -> None:
    opt = torch.optim.AdamW(model.parameters())  # AdamW reads its step counter on the host: a host tensor
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with no_sync() as guard:
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    assert guard.found == []


def test_a_transformers_step_is_clean_without_a_padding_mask_and_names_the_library_read_with_one() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    device = "cpu"  # what `"cuda" if torch.cuda.is_available() else "cpu"` gives here
    ids, mask = torch.randint(0, 64, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0  # padding
    with no_sync() as guard:
        batch = {"input_ids": ids.to(device, non_blocking=True)}
        model(**batch, labels=batch["input_ids"]).loss.backward()
    assert guard.found == []
    with pytest.raises(SyncError) as e, no_sync():
        batch = {"input_ids": ids.to(device, non_blocking=True), "attention_mask": mask.to(device, non_blocking=True)}
        model(**batch, labels=batch["input_ids"])  # sync: transformers
    sync = e.value.sync
    assert (sync.call, sync.location.line) == ('model(**batch, labels=batch["input_ids"])', line_of("transformers"))
    assert sync.via is not None and sync.via.startswith("transformers.masking_utils.")
    assert "transformers reads the attention mask on the host in every forward" in str(e.value)


def test_warn_mode_warns_once_per_line_at_the_users_line_and_goes_on(model: nn.Module) -> None:
    x = torch.randn(3, 4)
    with warnings.catch_warnings(record=True) as shown, no_sync(on_sync="warn") as guard:
        warnings.simplefilter("always")
        for _ in range(3):
            loss = model(x).sum()
            total = loss.item()  # sync: warned item
            loss.detach().cpu()  # sync: warned cpu
    assert isinstance(total, float)
    ours = [w for w in shown if w.category is SyncWarning]
    assert [(w.filename.endswith(THIS), w.lineno) for w in ours] == [
        (True, line_of("warned item")),
        (True, line_of("warned cpu")),
    ]
    assert [s.call for s in guard.found] == ["loss.item()", "loss.detach().cpu()"]
    assert str(ours[0].message) == guard.found[0].message


def test_a_caught_error_does_not_let_the_same_sync_pass_the_second_time(model: nn.Module) -> None:
    out = model(torch.randn(3, 4))
    with no_sync():
        for _ in range(2):
            with pytest.raises(SyncError):
                out.sum().item()


def test_as_a_decorator_each_call_is_a_region_of_its_own(model: nn.Module) -> None:
    @no_sync
    def step(x: torch.Tensor) -> torch.Tensor:
        return model(x).sum()

    @no_sync
    def read(x: torch.Tensor) -> float:
        return model(x).sum().item()

    @no_sync(on_sync="warn")
    def logged(x: torch.Tensor) -> float:
        return model(x).sum().item()

    before = modes()
    assert step(torch.randn(2, 4)).shape == () and step.__name__ == "step"
    assert isinstance(step(torch.randn(2, 4)).item(), float)  # read by the caller, outside the region
    with pytest.raises(SyncError, match=r"`model\(x\)\.sum\(\)\.item\(\)` at tests/test_nosync\.py:\d+"):
        read(torch.randn(2, 4))
    with pytest.warns(SyncWarning, match=r"`model\(x\)\.sum\(\)\.item\(\)` at tests/test_nosync\.py:\d+"):
        assert isinstance(logged(torch.randn(2, 4)), float)
    assert modes() == before


def test_hooks_are_removed_on_every_exit_path(model: nn.Module) -> None:
    before = modes()
    with pytest.raises(ZeroDivisionError), no_sync():
        assert modes() == (before[0] + 1, before[1] + 1)
        raise ZeroDivisionError
    with pytest.raises(SyncError), no_sync():
        model(torch.randn(1, 4)).sum().item()
    assert modes() == before


def test_on_an_accelerator_only_real_syncs_count(model: nn.Module) -> None:
    device_tensor = torch.randn(3, device="meta")
    with no_sync(device="meta") as guard:
        model(torch.randn(3, 4)).sum().item()  # the model is on the CPU while the code computes on meta: host work
    assert guard.found == []
    with (
        pytest.raises(SyncError, match=r"`device_tensor\.sum\(\)\.item\(\)` at .* waits for the GPU") as e,
        no_sync(device="meta"),
    ):
        device_tensor.sum().item()
    assert not e.value.sync.inferred and "No GPU in use" not in str(e.value)


def test_other_threads_are_not_guarded(model: nn.Module) -> None:
    out = model(torch.randn(3, 4))
    read: list[float] = []
    with no_sync():
        worker = threading.Thread(target=lambda: read.append(out.sum().item()))
        worker.start()
        worker.join()
    assert len(read) == 1


def test_bad_arguments_and_a_guard_entered_twice_are_refused() -> None:
    with pytest.raises(ValueError, match=r"no_sync\(on_sync=...\) must be 'raise' or 'warn', got 'error'"):
        no_sync(on_sync="error")  # type: ignore[call-overload]
    guard = no_sync()
    with guard, pytest.raises(TangtocError, match="this no_sync guard is already active"):
        guard.__enter__()


def test_the_debug_modes_warnings_in_the_guarded_thread_become_its_verdict_and_others_pass_on() -> None:
    # PyTorch's sync debug mode is process-global: armed at "warn", its warning is this region's only in the thread
    # that entered it. Without CUDA the warning is raised here by hand, with PyTorch's own text.
    found: list[str] = []
    text = "called a synchronizing CUDA operation (Triggered internally at c10/cuda/CUDAFunctions.cpp:150.)"
    with warnings.catch_warnings(record=True) as passed:
        warnings.simplefilter("default")
        shown = warnings.showwarning
        with TorchSyncWarnings(lambda: found.append("here"), threading.get_ident()):
            for _ in range(2):
                warnings.warn(text, UserWarning, stacklevel=1)  # "default" would show the second one no more
            other = threading.Thread(target=lambda: warnings.warn(text, UserWarning, stacklevel=1))
            other.start()
            other.join()
            warnings.warn("unrelated", UserWarning, stacklevel=1)
        assert warnings.showwarning is shown
    assert found == ["here", "here"]
    assert [str(w.message) for w in passed] == [text, "unrelated"]


@pytest.mark.cuda
def test_cuda_item_raises_before_it_waits_and_the_debug_mode_is_restored(model: nn.Module) -> None:
    model = model.cuda()
    mode = torch.cuda.get_sync_debug_mode()
    with pytest.raises(SyncError, match=r"`loss\.item\(\)` at .* waits for the GPU") as e, no_sync():
        loss = model(torch.randn(3, 4, device="cuda")).sum()
        assert torch.cuda.get_sync_debug_mode() == 1
        loss.item()
    assert not e.value.sync.inferred
    assert torch.cuda.get_sync_debug_mode() == mode


@pytest.mark.cuda
def test_cuda_syncs_the_debug_mode_misses_are_caught_and_what_it_alone_sees_too() -> None:
    host = torch.randn(1024)
    with pytest.raises(SyncError, match=r"`torch\.cuda\.synchronize\(\)` at"), no_sync():
        torch.cuda.synchronize()
    with pytest.raises(SyncError, match=r"non_blocking=True from pageable \(unpinned\) memory"), no_sync():
        host.to("cuda", non_blocking=True)
    with no_sync() as guard:
        host.pin_memory().to("cuda", non_blocking=True)
    assert guard.found == []
    # A stream's synchronize() is no tensor operation: the hooks do not see it, PyTorch's debug mode does.
    with pytest.raises(SyncError, match=r"current_stream\(\)\.synchronize\(\)` at .* waits for the GPU"), no_sync():
        torch.cuda.current_stream().synchronize()


@pytest.fixture
def gpt2() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def test_a_batch_moved_before_the_region_is_not_copied_again_by_transformers_loss(gpt2: torch.nn.Module) -> None:
    # The plugin's own pattern: fixtures (the model, the batch on the device) are set up outside the region. On a
    # GPU transformers' `labels.to(logits.device)` then moves nothing; the CPU run must not call it a blocking copy.
    device = "cpu"  # what `"cuda" if torch.cuda.is_available() else "cpu"` gives here
    batch = {"input_ids": torch.randint(0, 64, (2, 8)).to(device)}
    batch["labels"] = batch["input_ids"]
    with no_sync() as guard:
        gpt2(**batch).loss.backward()
    assert guard.found == []


def test_host_data_made_in_the_region_and_moved_by_transformers_still_raises(gpt2: torch.nn.Module) -> None:
    ids = torch.randint(0, 64, (2, 8))
    with pytest.raises(SyncError, match=r"copies to the device and waits: inside transformers\.") as e, no_sync():
        gpt2(input_ids=ids.to("cpu", non_blocking=True), labels=torch.tensor([[1] * 8] * 2))
    assert e.value.sync.via is not None


def test_a_move_the_user_asks_a_library_for_still_counts() -> None:
    transformers = pytest.importorskip("transformers")
    batch = transformers.BatchEncoding({"input_ids": torch.randint(0, 64, (2, 8))})  # from a tokenizer, on the host
    with pytest.raises(SyncError, match=r"`batch\.to\(device\)` at .* copies to the device and waits"), no_sync():
        device = "cpu"  # what `"cuda" if torch.cuda.is_available() else "cpu"` gives here
        batch.to(device)


def test_the_transformer_encoder_fast_path_fails_a_guarded_region() -> None:
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2).eval()
    x, mask = torch.randn(2, 5, 16), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    device = "cpu"  # what `"cuda" if torch.cuda.is_available() else "cpu"` gives here (a literal "cpu" means host)
    with torch.no_grad(), pytest.raises(SyncError, match=r"fast path .* turns the mask into a nested"), no_sync():
        enc(x.to(device, non_blocking=True), src_key_padding_mask=mask.to(device, non_blocking=True))
