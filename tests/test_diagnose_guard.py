"""device_guard: every buggy model in tests/buggy_models.py is stopped with the culprit named (a device mix before
the kernel runs, a dtype mix once PyTorch refuses it), and code that plain PyTorch runs is never refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import buggy_models as bm
from tangtoc.diagnose import DeviceMismatchError, device_guard
from tangtoc.diagnose.guard import DtypeMismatchError, OffDeviceInput

BUGGY_SOURCE = Path(bm.__file__).read_text().splitlines()


def bug_line(marker: str) -> int:
    """The line of tests/buggy_models.py carrying ``# BUG: <marker>``."""
    return next(i for i, line in enumerate(BUGGY_SOURCE, 1) if f"# BUG: {marker}" in line)


def function_modes() -> int:
    return torch._C._len_torch_function_stack()


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("name", list(bm.CASES))
def test_guard_names_the_culprit(name: str) -> None:
    case = bm.CASES[name]()
    with (
        pytest.raises(DeviceMismatchError, match=case.guard_match) as caught,
        device_guard(case.model, **case.guard_kwargs),
    ):
        case.run()
    message = str(caught.value)
    assert case.culprit in message
    assert "\nMost likely cause: " in message and "\nFix: " in message


def test_without_the_guard_an_embedding_on_meta_takes_cpu_ids_silently() -> None:
    # Why the guard checks devices itself: on meta, PyTorch's embedding kernel never complains.
    case = bm.embedding_fed_cpu_ids()
    assert case.run().device.type == "meta"


@pytest.mark.parametrize("name", ["conv_fed_cpu_image", "model_not_moved", "plain_attribute_mask"])
def test_without_the_guard_pytorch_names_neither_module_nor_tensor(name: str) -> None:
    case = bm.CASES[name]()
    with pytest.raises(RuntimeError, match=r"^Tensor on device \w+ is not on the expected device \w+!$"):
        case.run()  # first kernels (conv, linear, matmul) accept the CPU operand; a later one fails, anonymously


def test_a_tensor_created_in_forward_is_named_with_its_line_and_module() -> None:
    case = bm.created_in_forward()
    with pytest.raises(DeviceMismatchError) as caught, device_guard(case.model):
        case.run()
    line = bug_line("created without device=")
    assert f"created by torch.zeros at tests/buggy_models.py:{line} in the forward of `model`" in str(caught.value)
    assert caught.value.module == "model"
    assert caught.value.culprits == ("other",)
    assert (caught.value.found, caught.value.expected) == ("cpu", "meta")


def test_a_one_element_tensor_is_a_mismatch_but_a_0d_scalar_is_not() -> None:
    case = bm.one_element_cpu_tensor()
    with pytest.raises(DeviceMismatchError, match=r"`other`: shape \(1,\), float32, on cpu"), device_guard(case.model):
        case.run()
    model, x, *_ = bm.healthy()
    with device_guard(model):
        assert model(x).shape == (4, bm.CLASSES)  # x * torch.tensor(0.5): legal on any device


def test_healthy_training_step_passes_untouched() -> None:
    model, x, y, criterion, opt = bm.healthy()
    with device_guard(model, optimizer=opt, criterion=criterion):
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        model.to("meta")  # moving inside the guard is not a mix (Module._apply compares old and new tensors)
    assert loss.device.type == "meta"


def test_loss_weights_are_named_by_role_when_the_loss_is_not_guarded() -> None:
    case = bm.loss_weights_on_cpu()
    x, y = case.batch
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 1.0]))
    with (
        pytest.raises(DeviceMismatchError, match=r"cross_entropy got tensors on cpu and meta") as caught,
        device_guard(case.model),
    ):
        criterion(case.model(x), y)
    message = str(caught.value)
    assert "`weight`: shape (3,), float32, on cpu — the class weights of the loss" in message
    assert "Fix: create them on the device (`nn.CrossEntropyLoss(weight=w.to('meta'))`)" in message


def test_a_module_with_its_own_tensors_on_two_devices() -> None:
    layer = nn.Linear(4, 2).to("meta")
    layer.bias = nn.Parameter(torch.zeros(2))  # replaced on the CPU
    with (
        pytest.raises(
            DeviceMismatchError,
            match=r"`model` \(Linear\) has its own parameters and buffers on 2 "
            r"devices(.|\n)*`model.bias`: shape \(2,\), float32, on cpu",
        ) as caught,
        device_guard(layer),
    ):
        layer(torch.randn(3, 4, device="meta"))
    assert caught.value.culprits == ("model.bias",)


def test_the_error_is_a_runtime_error_for_existing_handlers() -> None:
    case = bm.conv_fed_cpu_image()
    with pytest.raises(RuntimeError, match="got `images` on cpu"), device_guard(case.model):
        case.run()


@pytest.mark.parametrize("name", ["conv_fed_cpu_image", "created_in_forward", "optimizer_loaded_before_move"])
def test_hooks_and_modes_are_removed_on_every_exit_path(name: str) -> None:
    case = bm.CASES[name]()
    before_hooks, before_modes = hooks(case.model), function_modes()
    guard = device_guard(case.model, **case.guard_kwargs)
    with pytest.raises(DeviceMismatchError), guard:
        assert hooks(case.model) > before_hooks
        assert function_modes() == before_modes + 1
        case.run()
    assert (hooks(case.model), function_modes()) == (before_hooks, before_modes)
    opt = case.guard_kwargs.get("optimizer")
    if opt is not None:
        assert not opt._optimizer_step_pre_hooks
    with guard:  # the same guard can be entered again
        pass
    assert (hooks(case.model), function_modes()) == (before_hooks, before_modes)


def test_as_a_decorator_and_nested() -> None:
    case = bm.embedding_fed_cpu_ids()
    guard = device_guard(case.model)

    @guard
    def forward(ids: torch.Tensor) -> torch.Tensor:
        return case.model(ids)

    good = torch.randint(0, 50, (2, 7), device="meta")
    with guard:  # a guarded function called inside the same guard: installed once, removed once
        assert forward(good).shape == (2, bm.CLASSES)
        assert function_modes() >= 1
    with pytest.raises(DeviceMismatchError, match="got `token_ids` on cpu"):
        forward(torch.randint(0, 50, (2, 7)))
    assert hooks(case.model) == 0


def test_indexing_with_cpu_indices_is_legal_but_a_cpu_table_is_not() -> None:
    table = torch.randn(10, 4, device="meta")
    with device_guard(nn.Linear(4, 4).to("meta")):
        assert table[torch.tensor([1, 2])].shape == (2, 4)  # CPU indices into a tensor on any device: legal
        table[torch.tensor([0])] = torch.tensor(0.0)
        with pytest.raises(DeviceMismatchError, match=r"Tensor.__getitem__ got tensors on cpu and meta"):
            torch.randn(10)[torch.tensor([1, 2], device="meta")]


def test_packed_sequence_lengths_stay_on_the_cpu_without_a_false_alarm() -> None:
    lstm = nn.LSTM(4, 3).to("meta")
    packed = pack_padded_sequence(torch.randn(5, 2, 4, device="meta"), torch.tensor([5, 3]))  # batch_sizes: CPU
    with device_guard(lstm):
        out, _ = lstm(packed)
    assert out.data.device.type == "meta"


def test_allow_skips_a_function_that_mixes_devices_on_purpose() -> None:
    ids, table = torch.tensor([1, 2]), torch.randn(10, 4, device="meta")
    model = nn.Embedding(10, 4).to("meta")
    with pytest.raises(DeviceMismatchError, match="embedding got tensors on cpu and meta"), device_guard(model):
        F.embedding(ids, table)
    with device_guard(model, allow=[F.embedding]):
        assert F.embedding(ids, table).device.type == "meta"
    with device_guard(model):  # a move before the operation is not a mix
        assert F.embedding(ids.to("meta"), table).device.type == "meta"


def test_the_users_line_is_reported() -> None:
    case = bm.embedding_fed_cpu_ids()
    with pytest.raises(DeviceMismatchError) as caught, device_guard(case.model):
        case.model(torch.randint(0, 50, (2, 7)))  # the call the error must point at
    assert re.search(r"called at tests/test_diagnose_guard.py:\d+: case.model\(torch.randint", str(caught.value))


def test_a_functional_call_outside_any_module_is_checked() -> None:
    model = nn.Linear(4, 2).to("meta")
    with (
        pytest.raises(DeviceMismatchError, match=r"linear got tensors on cpu and meta; expected all on meta"),
        device_guard(model),
    ):
        F.linear(torch.randn(3, 4), model.weight)


def test_compiled_models_run_under_the_guard_and_are_still_checked() -> None:
    # Regression: dynamo could not build its guards for a mode holding a set of functions (torch 2.13).
    model, x, *_ = bm.healthy()
    with device_guard(model):
        assert torch.compile(model, backend="eager")(x).shape == (4, bm.CLASSES)
    case = bm.created_in_forward()
    compiled = torch.compile(case.model, backend="eager")
    with (
        pytest.raises(DeviceMismatchError, match=r"created by torch.zeros at tests/buggy_models\.py"),
        device_guard(case.model),
    ):
        compiled(case.batch)


@pytest.mark.cuda
def test_on_cuda_the_guard_speaks_before_pytorch() -> None:
    model = bm.TokenClassifier().cuda()
    match = "got `token_ids` on cpu, but its parameters are on cuda:0"
    with pytest.raises(DeviceMismatchError, match=match), device_guard(model):
        model(torch.randint(0, 50, (2, 7)))


# ------------------------------------------------------------------ no false positives (issue 11, item 7)


class MovesItsLabels(nn.Module):
    """Like a Hugging Face model: takes `labels` wherever they are and moves them to the logits' device itself."""

    def __init__(self, move: bool = True) -> None:
        super().__init__()
        self.head = nn.Linear(8, bm.CLASSES)
        self.move = move

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.head(x)
        return F.cross_entropy(logits, labels.to(logits.device) if self.move else labels)


def test_an_input_the_module_moves_itself_is_recorded_not_refused() -> None:
    model = MovesItsLabels().to(bm.ACCEL)
    guard = device_guard(model)
    with guard:
        for _ in range(2):
            assert model(bm.features(), labels=bm.labels(torch.device("cpu"))).device == bm.ACCEL
    assert guard.off_device_inputs == (OffDeviceInput("model", "labels", "cpu", "meta", calls=2),)


def test_when_an_operation_does_mix_that_input_the_error_names_it() -> None:
    model = MovesItsLabels(move=False).to(bm.ACCEL)
    with (
        pytest.raises(
            DeviceMismatchError,
            match=r"`model` \(MovesItsLabels\) got `labels` on cpu, but its parameters "
            r"are on meta(.|\n)*called at tests/test_diagnose_guard.py:\d+: model\(bm.features\(\), labels=",
        ) as caught,
        device_guard(model),
    ):
        model(bm.features(), labels=bm.labels(torch.device("cpu")))
    assert caught.value.culprits == ("labels",)


class PackedEncoder(nn.Module):
    """The usual RNN-over-padded-batch module: `lengths` must be a CPU tensor (pack_padded_sequence refuses others)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 3, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return h[-1]  # (B, hidden): the state after each sequence's last real step


def test_rnn_lengths_on_the_cpu_are_legal_inside_the_guard() -> None:
    model = PackedEncoder().to(bm.ACCEL)
    guard = device_guard(model)
    x = torch.randn(3, 5, 4, device=bm.ACCEL)
    with guard:
        assert model(x, torch.tensor([2, 5, 3])).shape == (3, 3)
        # Sorted lengths, so that unpacking needs no host copy of meta indices (pad_packed_sequence calls .cpu()).
        packed, _ = model.lstm(pack_padded_sequence(x, torch.tensor([5, 3, 2]), batch_first=True))
        padded, lengths = pad_packed_sequence(packed, batch_first=True)
    assert (padded.device, lengths.device) == (bm.ACCEL, torch.device("cpu"))
    assert guard.off_device_inputs == (OffDeviceInput("model", "lengths", "cpu", "meta", calls=1),)


class Concatenates(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.prefix = nn.Parameter(torch.zeros(1, 8))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.prefix, rows])


def test_a_device_error_pytorch_raises_in_an_allowed_function_still_names_the_input() -> None:
    model = Concatenates().to(bm.ACCEL)
    with (
        pytest.raises(DeviceMismatchError, match=r"`model` \(Concatenates\) got `rows` on cpu") as caught,
        device_guard(model, allow=[torch.cat]),  # the operation layer looks away; PyTorch's meta cat refuses
    ):
        model(torch.randn(3, 8))
    assert str(caught.value.__cause__) == "Tensor on device cpu is not on the expected device meta!"


def test_nested_guards_name_a_dtype_error_once() -> None:
    case = bm.numpy_float64_batch()
    with (
        pytest.raises(DtypeMismatchError, match=r"^linear got tensors in float64") as caught,
        device_guard(case.model),
        device_guard(case.model.head),
    ):
        case.run()
    assert type(caught.value.__cause__) is RuntimeError


def test_a_0d_cpu_buffer_is_a_scalar_not_a_spread() -> None:
    layer = nn.Linear(4, 2).to(bm.ACCEL)
    layer.register_buffer("temperature", torch.tensor(2.0))  # registered after the move: stays a CPU scalar
    with device_guard(layer):
        assert (layer(torch.randn(3, 4, device=bm.ACCEL)) / layer.temperature).device == bm.ACCEL


def test_slice_assignment_copies_from_any_device_but_index_put_does_not() -> None:
    out = torch.zeros(4, 3, device=bm.ACCEL)
    with device_guard(nn.Linear(3, 3).to(bm.ACCEL)):
        out[0] = torch.ones(3)  # out[0].copy_(...): legal from the CPU
        out[1:3, :2] = torch.ones(2, 2)
        with pytest.raises(DeviceMismatchError, match=r"Tensor.__setitem__ got tensors on cpu and meta"):
            out[torch.tensor([0, 1], device=bm.ACCEL)] = torch.ones(2, 3)  # index_put_: values must be on meta


# ------------------------------------------------------------------------- dtypes (issue 17, trap 2)


@pytest.mark.parametrize("name", list(bm.DTYPE_CASES))
def test_a_float64_culprit_is_named_with_its_origin_and_the_fix(name: str) -> None:
    case = bm.DTYPE_CASES[name]()
    with pytest.raises(DtypeMismatchError, match=case.guard_match) as caught, device_guard(case.model):
        case.run()
    message = str(caught.value)
    assert case.culprit in message
    assert "tt.to_device(batch, device, float_dtype=torch.float32)" in message
    assert "`tt.as_tensor(arr, device, dtype=torch.float32)`" in message
    assert (caught.value.found, caught.value.expected) == ("float64", "float32")
    assert isinstance(caught.value.__cause__, RuntimeError)  # PyTorch's own error, kept


def test_the_dtype_error_is_a_runtime_error_with_the_culprits_argument() -> None:
    case = bm.numpy_float64_batch()
    with (
        pytest.raises(RuntimeError, match="mat1 and mat2 must have the same dtype") as caught,
        device_guard(case.model),
    ):
        case.run()
    assert caught.value.culprits == ("input",)
    assert caught.value.module == "body.0"


def test_a_half_model_fed_float32_is_told_to_convert_or_autocast() -> None:
    model, x = bm.Classifier().to(torch.bfloat16), bm.features(torch.device("cpu"))
    with (
        pytest.raises(
            DtypeMismatchError,
            match=r"`input`: shape \(4, 8\), float32, on cpu; input `x` of `model`"
            r"(.|\n)*Fix: run the forward pass under `torch.autocast",
        ) as caught,
        device_guard(model),
    ):
        model(x)
    assert (caught.value.found, caught.value.expected) == ("float32", "bfloat16")


def test_legal_dtype_mixes_and_other_errors_pass_through() -> None:
    model = bm.Classifier()
    x = bm.features(torch.device("cpu"))
    with device_guard(model):
        assert (x + x.double()).dtype == torch.float64  # type promotion: legal, so the guard stays silent
        with pytest.raises(RuntimeError, match=r"^mat1 and mat2 shapes cannot be multiplied") as caught:
            model(torch.randn(4, 5))
    assert type(caught.value) is RuntimeError  # not a dtype error: PyTorch's own, untouched


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((5,), {}, r"^device_guard: model must be a torch\.nn\.Module, got int: 5\. Fix: pass the model"),
        (
            (nn.Linear(2, 2),),
            {"criterion": torch.ones(2)},
            r"^device_guard: criterion must be a torch\.nn\.Module, got Tensor: tensor\(\[1\., 1\.\]\)\. Fix: pass "
            r"modules only",
        ),
        (
            (nn.Linear(2, 2),),
            {"optimizer": 5},
            r"^device_guard: optimizer must be a torch\.optim\.Optimizer or None, got int: 5\. Fix:",
        ),
    ],
)
def test_arguments_of_the_wrong_type_are_named_when_the_guard_is_made(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):  # not an AttributeError from inside, at the first `with`
        device_guard(*args, **kwargs)
