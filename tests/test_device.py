"""Tests of tangtoc.device: choosing, validating, explaining and describing devices.

The ``meta`` device stands in for a second device on CPU-only machines. CUDA is faked where a test needs
it: ``tangtoc.device.cuda_facts`` (what decides availability) and ``torch.cuda.current_device`` (what
``_canonical`` and the automatic choice call) are replaced, and no tensor is ever made on the fake GPU.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import tangtoc as tt
from tangtoc import device
from tangtoc.device import CudaFacts, why_no_cuda
from tangtoc.errors import DeviceUnavailableError, InvalidDeviceError, TangtocError

CPU = torch.device("cpu")
META = torch.device("meta")

needs_cpu_only_build = pytest.mark.skipif(
    torch.version.cuda is not None, reason="checks the behaviour of a CPU-only PyTorch build"
)
needs_no_accelerator = pytest.mark.skipif(
    torch.cuda.is_available() or device._mps_available() or device._xpu_available(),
    reason="checks the choice on a machine without an accelerator",
)


def facts(built: bool = True, count: int = 1, driver: bool = True, visible: str | None = None) -> CudaFacts:
    return CudaFacts(
        built_with_cuda=built,
        device_count=count,
        driver_present=driver,
        visible_devices=visible,
        torch_version="9.9.9+test",
    )


@pytest.fixture(autouse=True)
def _no_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests run outside torchrun; a LOCAL_RANK left in a developer's shell must not change the choice.
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    """Pretend this machine has ``count`` usable GPUs (and no MPS/XPU); returns the installer."""

    def install(count: int, visible: str | None = None, current: int = 0) -> None:
        monkeypatch.setattr(device, "cuda_facts", lambda: facts(count=count, visible=visible))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(device, "_mps_available", lambda: False)
        monkeypatch.setattr(device, "_xpu_available", lambda: False)
        device._validated.cache_clear()

    return install


# --------------------------------------------------------------------------------------------- pick_device


@needs_no_accelerator
def test_pick_device_without_accelerator_is_cpu() -> None:
    assert tt.pick_device() == CPU


def test_pick_device_without_gpus_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_facts", lambda: facts(built=False, count=0, driver=False))
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    monkeypatch.setattr(device, "_xpu_available", lambda: False)
    assert tt.pick_device() == CPU


@pytest.mark.parametrize("prefer", [None, "cpu", CPU, "auto"])
def test_env_var_beats_the_argument(monkeypatch: pytest.MonkeyPatch, prefer) -> None:
    monkeypatch.setenv("TANGTOC_DEVICE", "meta")
    assert tt.pick_device(prefer) == META


def test_prefer_is_used_when_env_var_is_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tt.pick_device("meta") == META
    monkeypatch.setenv("TANGTOC_DEVICE", "")
    assert tt.pick_device("meta") == META


@needs_cpu_only_build
def test_unavailable_env_device_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANGTOC_DEVICE", "cuda")
    with pytest.raises(DeviceUnavailableError, match=r"CPU-only.*TANGTOC_DEVICE='cuda'"):
        tt.pick_device("cpu")


def test_unavailable_env_device_names_the_env_var_with_fake_gpu(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda(1)
    monkeypatch.setenv("TANGTOC_DEVICE", "cuda:5")
    with pytest.raises(DeviceUnavailableError, match=r"index 5 is out of range.*TANGTOC_DEVICE='cuda:5'"):
        tt.pick_device()


def test_invalid_env_device_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANGTOC_DEVICE", "gpu")
    with pytest.raises(InvalidDeviceError, match="TANGTOC_DEVICE"):
        tt.pick_device("cpu")


# ------------------------------------------------------------------------------ explicit requests validated


@needs_cpu_only_build
# Explicit ids: conftest skips any test whose keywords include "cuda", and a parameter id is a keyword.
@pytest.mark.parametrize(
    "spec",
    ["cuda", "cuda:0", " CUDA ", 0, torch.device("cuda", 0)],
    ids=["str-plain", "str-indexed", "str-padded-upper", "int-0", "torch-device"],
)
def test_cuda_on_cpu_only_build_says_why(spec) -> None:
    with pytest.raises(DeviceUnavailableError, match=r"'cuda(:0)?' was requested, but this PyTorch build is CPU-only"):
        tt.pick_device(spec)
    with pytest.raises(DeviceUnavailableError, match="CPU-only"):
        tt.resolve(spec)


def test_errors_subclass_the_builtin_exceptions() -> None:
    assert issubclass(DeviceUnavailableError, RuntimeError)
    assert issubclass(InvalidDeviceError, ValueError)
    assert issubclass(DeviceUnavailableError, TangtocError)
    assert issubclass(InvalidDeviceError, TangtocError)


@pytest.mark.parametrize(
    ("spec", "meant"),
    [
        ("gpu", "cuda"),
        ("cdua", "cuda"),
        ("GPU", "cuda"),
        ("nvidia", "cuda"),
        ("cuda0", "cuda:0"),
        ("cdua:1", "cuda:1"),
        ("apple", "mps"),
        ("cpux", "cpu"),
    ],
)
def test_misspelt_device_suggests_the_right_name(spec: str, meant: str) -> None:
    with pytest.raises(InvalidDeviceError, match=re.escape(f"unknown device {spec!r}. Did you mean {meant!r}?")):
        tt.pick_device(spec)
    with pytest.raises(ValueError, match=re.escape(f"Did you mean {meant!r}?")):
        tt.resolve(spec)


def test_unknown_device_without_close_match_lists_valid_names() -> None:
    with pytest.raises(InvalidDeviceError, match=r"unknown device 'zzz'\. Valid names: auto, cpu, cuda") as info:
        tt.resolve("zzz")
    assert "Did you mean" not in str(info.value)


def test_alias_suggestion_keeps_the_index() -> None:
    with pytest.raises(InvalidDeviceError, match=re.escape("Did you mean 'cuda:1'?")):
        tt.resolve("gpu:1")


@pytest.mark.parametrize(
    ("spec", "problem", "meant"),
    [
        ("cpu:abc", "'abc' after ':' is not a device index", "cpu"),
        ("CUDA:x", "'x' after ':' is not a device index", "cuda"),
        ("gpu:-1", "'-1' after ':' is not a device index", "cuda"),
        ("meta:0:1", "'0:1' after ':' is not a device index", "meta"),
        ("cuda:", "nothing after ':' is a device index", "cuda"),
    ],
)
def test_a_bad_index_suggests_the_device_without_it(spec: str, problem: str, meant: str) -> None:
    expected = f"unknown device {spec!r}: {problem} (0, 1, ...). Did you mean {meant!r}?"
    with pytest.raises(InvalidDeviceError, match=re.escape(expected)):
        tt.pick_device(spec)
    with pytest.raises(InvalidDeviceError, match=re.escape(expected)):
        tt.resolve(spec)


@pytest.mark.parametrize(("spec", "index"), [(128, 128), (256, 256), ("cuda:200", 200), ("cpu:300", 300)])
def test_an_index_past_8_bits_is_refused_not_wrapped(spec: str | int, index: int) -> None:
    # torch.device("cuda", 256) is cuda:0: PyTorch keeps the index in 8 bits.
    with pytest.raises(InvalidDeviceError, match=rf"device index must be <= 127, got {index}:.*wrap around"):
        tt.resolve(spec)


def test_a_leading_zero_is_read_as_the_index() -> None:
    assert tt.resolve("meta:01") == META  # torch.device("meta:01") itself raises "Invalid device string"


@pytest.mark.parametrize("spec", ["", "  "])
def test_the_empty_string_is_refused_not_taken_for_auto(spec: str) -> None:
    expected = rf"the device is an empty string \({re.escape(repr(spec))}\)\. Fix: pass 'auto' for the best device"
    with pytest.raises(InvalidDeviceError, match=expected):
        tt.resolve(spec)
    with pytest.raises(InvalidDeviceError, match=expected):
        tt.pick_device(spec)


@pytest.mark.parametrize("argv", [["bench", "--device", ""], ["train", "mlp", "--steps", "1", "--device", ""]])
def test_the_cli_refuses_an_empty_device(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from tangtoc.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the device is an empty string" in err and "Traceback" not in err


def test_cuda_index_out_of_range(fake_cuda) -> None:
    fake_cuda(1)
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:3' was requested, but index 3 is out of range"):
        tt.pick_device("cuda:3")
    with pytest.raises(DeviceUnavailableError, match="out of range"):
        tt.resolve("cuda:3")


# ------------------------------------------------------------------------------------------- why_no_cuda


@pytest.mark.parametrize(
    ("cuda", "index", "expected"),
    [
        pytest.param(
            facts(built=False, count=0, driver=False),
            None,
            r"^this PyTorch build is CPU-only \(torch 9\.9\.9\+test, torch\.version\.cuda is None\)\. "
            r"No NVIDIA driver was found either\. Fix: install a CUDA build.*download\.pytorch\.org/whl/cu",
            id="cpu-only-no-driver",
        ),
        pytest.param(
            facts(built=False, count=0, driver=True),
            0,
            r"CPU-only.*An NVIDIA driver IS present, so the GPU is there but this PyTorch cannot use it\. Fix",
            id="cpu-only-with-driver",
        ),
        pytest.param(
            facts(built=False, count=0, driver=True, visible=""),
            None,
            r"^this PyTorch build is CPU-only",
            id="cpu-only-wins-over-visible-devices",
        ),
        pytest.param(
            facts(count=0, visible=""),
            None,
            r"^CUDA_VISIBLE_DEVICES='' hides every GPU from this process\. Fix: `unset CUDA_VISIBLE_DEVICES`",
            id="visible-empty",
        ),
        pytest.param(
            facts(count=0, visible="-1"),
            0,
            r"^CUDA_VISIBLE_DEVICES='-1' hides every GPU",
            id="visible-minus-one",
        ),
        pytest.param(
            facts(count=0, driver=False, visible=" NoDevFiles "),
            None,
            r"^CUDA_VISIBLE_DEVICES=' NoDevFiles ' hides every GPU",
            id="visible-nodevfiles",
        ),
        pytest.param(
            facts(count=0, driver=False),
            None,
            r"^PyTorch has CUDA support but no NVIDIA driver was found.*Fix: install the NVIDIA driver.*--gpus all",
            id="cuda-build-no-driver",
        ),
        pytest.param(
            facts(count=0, driver=False, visible="0,1"),
            None,
            r"^PyTorch has CUDA support but no NVIDIA driver was found",
            id="cuda-build-no-driver-visible-set",
        ),
        pytest.param(
            facts(count=0, driver=True),
            None,
            r"driver is present, but torch\.cuda\.device_count\(\) is 0; the driver may be older",
            id="cuda-build-driver-but-no-device",
        ),
        pytest.param(
            facts(count=1),
            3,
            r"^index 3 is out of range: 1 CUDA device visible \(cuda:0\)\. Fix: use one of cuda:0\.$",
            id="out-of-range",
        ),
        pytest.param(
            facts(count=2),
            2,
            r"^index 2 is out of range: 2 CUDA devices visible \(cuda:0, cuda:1\)\. Fix: use one of cuda:0, cuda:1",
            id="out-of-range-plural",
        ),
        pytest.param(
            facts(count=1, visible="2"),
            1,
            r"^index 1 is out of range: 1 CUDA device visible \(cuda:0\) \(CUDA_VISIBLE_DEVICES='2' limits what "
            r"this process sees; indices are renumbered from 0\)\.",
            id="out-of-range-with-visible-devices",
        ),
    ],
)
def test_why_no_cuda_explains(cuda: CudaFacts, index: int | None, expected: str) -> None:
    reason = why_no_cuda(cuda, index)
    assert reason is not None
    assert re.search(expected, reason), reason


def test_why_no_cuda_out_of_range_without_visible_devices_has_no_hint() -> None:
    reason = why_no_cuda(facts(count=1), 1)
    assert reason is not None
    assert "CUDA_VISIBLE_DEVICES" not in reason


@pytest.mark.parametrize(
    ("cuda", "index"),
    [(facts(count=1), None), (facts(count=1), 0), (facts(count=2), 1), (facts(count=1, visible="3"), 0)],
)
def test_why_no_cuda_is_none_when_usable(cuda: CudaFacts, index: int | None) -> None:
    assert why_no_cuda(cuda, index) is None


@pytest.mark.parametrize(
    ("visible", "hides"),
    [(None, False), ("", True), ("-1", True), (" none ", True), ("void", True), ("0", False), ("0,1", False)],
)
def test_visible_hides_all(visible: str | None, hides: bool) -> None:
    assert facts(count=0, visible=visible).visible_hides_all is hides


def test_cuda_facts_reflects_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    got = device.cuda_facts()
    assert got.visible_devices == "7"
    assert got.built_with_cuda is (torch.version.cuda is not None)
    if not got.built_with_cuda:
        assert got.device_count == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device.cuda_facts().visible_devices is None


# ------------------------------------------------------------------------------------------ faked CUDA


@pytest.mark.parametrize(("count", "local_rank", "expected"), [(2, "1", 1), (2, None, 0), (4, "3", 3)])
def test_automatic_choice_follows_local_rank(
    monkeypatch: pytest.MonkeyPatch, fake_cuda, count: int, local_rank: str | None, expected: int
) -> None:
    fake_cuda(count)
    if local_rank is not None:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert tt.pick_device() == torch.device("cuda", expected)


def test_automatic_choice_without_local_rank_uses_current_device(fake_cuda) -> None:
    fake_cuda(2, current=1)
    assert tt.pick_device() == torch.device("cuda", 1)


def test_local_rank_beyond_the_gpus_names_local_rank(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda(1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(DeviceUnavailableError, match=r"^torchrun set LOCAL_RANK=3, but index 3 is out of range"):
        tt.pick_device()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cuda", ("cuda", 0)),
        ("cuda:1", ("cuda", 1)),
        (1, ("cuda", 1)),
        (0, ("cuda", 0)),
        (torch.device("cuda"), ("cuda", 0)),
        ("CUDA:1", ("cuda", 1)),
    ],
)
def test_explicit_cuda_with_fake_gpus(fake_cuda, spec, expected: tuple[str, int]) -> None:
    fake_cuda(2)
    assert tt.pick_device(spec) == torch.device(*expected)
    assert tt.resolve(spec) == torch.device(*expected)


def test_resolve_gives_plain_cuda_the_current_index(fake_cuda) -> None:
    fake_cuda(2, current=1)
    assert tt.resolve("cuda") == torch.device("cuda", 1)


def test_hidden_gpus_are_explained_by_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_facts", lambda: facts(count=0, visible="-1"))
    with pytest.raises(DeviceUnavailableError, match="CUDA_VISIBLE_DEVICES='-1' hides every GPU"):
        tt.pick_device("cuda")


# ------------------------------------------------------------------------------------------- int specs


def test_int_spec_is_a_cuda_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_facts", lambda: facts(built=False, count=0, driver=False))
    with pytest.raises(DeviceUnavailableError, match=r"^device 'cuda:2' was requested"):
        tt.resolve(2)


@pytest.mark.parametrize("spec", [-1, -7])
def test_negative_int_is_invalid(spec: int) -> None:
    with pytest.raises(InvalidDeviceError, match=rf"device index must be >= 0, got {spec}\."):
        tt.resolve(spec)
    with pytest.raises(ValueError, match="must be >= 0"):
        tt.pick_device(spec)


@pytest.mark.parametrize(("spec", "tname"), [(1.5, "float"), (True, "bool"), (b"cpu", "bytes")])
def test_wrong_type_is_a_type_error(spec, tname: str) -> None:
    pattern = rf"device must be a str, int or torch\.device, got {tname}: {re.escape(repr(spec))}\."
    with pytest.raises(TypeError, match=pattern):
        tt.resolve(spec)
    with pytest.raises(TypeError, match=pattern):
        tt.pick_device(spec)


# ---------------------------------------------------------------------------------------------- resolve


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("cpu", CPU), (" CPU ", CPU), (CPU, CPU), ("meta", META), (torch.device("meta"), META)],
)
def test_resolve(spec, expected: torch.device) -> None:
    assert tt.resolve(spec) == expected


@pytest.mark.parametrize("spec", [None, "auto", " AUTO "])
def test_resolve_auto_is_pick_device(monkeypatch: pytest.MonkeyPatch, spec) -> None:
    assert tt.resolve(spec) == tt.pick_device()
    monkeypatch.setenv("TANGTOC_DEVICE", "meta")
    assert tt.resolve(spec) == META


@pytest.mark.parametrize("spec", ["cpu:0", "meta:0"])
def test_resolve_indexed_cpu_compares_equal_to_tensor_device(spec: str) -> None:
    kind = spec.partition(":")[0]
    assert tt.resolve(spec) == torch.empty(1, device=kind).device


@pytest.mark.skipif(device._mps_available(), reason="MPS is available here")
def test_mps_unavailable() -> None:
    with pytest.raises(DeviceUnavailableError, match=r"^device 'mps' was requested, but .*Fix: use 'cpu' or 'auto'"):
        tt.resolve("mps")


def test_mps_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="this PyTorch build has no MPS support"):
        tt.resolve("mps")
    device._validated.cache_clear()
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    with pytest.raises(DeviceUnavailableError, match=r"MPS needs macOS 12\.3 or newer"):
        tt.resolve("mps:0")


def test_xpu_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_xpu_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match=r"^device 'xpu:0' was requested, but torch\.xpu\.is_available"):
        tt.resolve("xpu:0")


def test_unsupported_kind_is_refused() -> None:
    with pytest.raises(DeviceUnavailableError, match=r"^device 'hpu' is not a kind tangtoc supports \(auto, cpu"):
        tt.resolve(torch.device("hpu"))


def test_failures_are_not_cached(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    monkeypatch.setattr(device, "cuda_facts", lambda: facts(count=0, driver=False))
    with pytest.raises(DeviceUnavailableError):
        tt.resolve("cuda:1")
    fake_cuda(2)
    assert tt.resolve("cuda:1") == torch.device("cuda", 1)


# --------------------------------------------------------------------------------------------- describe


def test_describe_cpu() -> None:
    info = tt.describe("cpu")
    assert isinstance(info, tt.DeviceInfo)
    assert info.kind == "cpu"
    assert info.index is None
    assert info.label == "cpu"
    assert info.cpu_cores >= 1
    assert info.cpu_model.strip()
    assert info.name == info.cpu_model
    assert info.torch_version == torch.__version__
    assert info.cuda_version == torch.version.cuda
    assert info.torch_threads == torch.get_num_threads()
    # Unknown for a CPU: None, never a guess.
    assert info.peak_flops is None
    assert info.memory_bandwidth is None
    assert info.spec_source is None
    assert info.compute_capability is None
    assert info.total_memory is None or info.total_memory > 0
    if info.total_memory is not None and info.free_memory is not None:
        assert 0 <= info.free_memory <= info.total_memory


def test_describe_is_frozen() -> None:
    info = tt.describe("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.kind = "cuda"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.peak_flops = {"float32": 1.0}  # type: ignore[misc]


def test_describe_meta() -> None:
    info = tt.describe(torch.device("meta"))
    assert info.kind == "meta"
    assert info.label == "meta"
    assert "meta" in info.name
    assert info.total_memory is None
    assert info.free_memory is None
    assert info.peak_flops is None
    assert info.bf16_supported is False
    assert info.torch_version == torch.__version__


def test_describe_defaults_to_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANGTOC_DEVICE", "meta")
    assert tt.describe().kind == "meta"


def test_describe_refuses_unavailable_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_xpu_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="'xpu:0' was requested"):
        tt.describe("xpu:0")


@pytest.mark.cuda
def test_describe_cuda() -> None:
    info = tt.describe("cuda")
    assert info.kind == "cuda"
    assert info.index == torch.cuda.current_device()
    assert info.name == torch.cuda.get_device_name(info.index)
    assert info.total_memory is not None and info.free_memory is not None
    assert 0 < info.free_memory <= info.total_memory
    assert info.compute_capability == torch.cuda.get_device_capability(info.index)
    assert (info.peak_flops is None) == (info.spec_source is None) == (info.memory_bandwidth is None)


# ---------------------------------------------------------------------------- synchronize, available_devices


@pytest.mark.parametrize("dev", [CPU, META])
def test_synchronize_is_a_noop_on_cpu_and_meta(monkeypatch: pytest.MonkeyPatch, dev: torch.device) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("an accelerator was synchronised")

    monkeypatch.setattr(torch.cuda, "synchronize", boom)
    monkeypatch.setattr(torch.mps, "synchronize", boom)
    monkeypatch.setattr(torch.xpu, "synchronize", boom)
    assert tt.synchronize(dev) is None


def test_synchronize_waits_on_the_given_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(d))
    tt.synchronize(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)]


def test_available_devices_starts_with_cpu() -> None:
    found = tt.available_devices()
    assert found[0] == CPU
    assert found.count(CPU) == 1


def test_available_devices_lists_each_gpu(fake_cuda) -> None:
    fake_cuda(2)
    assert tt.available_devices() == [CPU, torch.device("cuda", 0), torch.device("cuda", 1)]


def _tf32_settings() -> tuple:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize(("tf32_matmul", "tf32_conv"), [(True, False), (False, True)])
def test_float32_math_sets_and_restores_both_flags(tf32_matmul: bool, tf32_conv: bool) -> None:
    before = _tf32_settings()
    with (
        pytest.raises(RuntimeError, match="inside"),
        tt.device.float32_math(tf32_matmul=tf32_matmul, tf32_conv=tf32_conv),
    ):
        assert tt.device.tf32_matmul_enabled() is tf32_matmul
        if hasattr(torch.backends.cudnn, "conv"):
            assert torch.backends.cudnn.conv.fp32_precision == ("tf32" if tf32_conv else "ieee")
        raise RuntimeError("inside")
    assert _tf32_settings() == before


def test_tf32_state_is_read_whichever_api_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that used torch's newer per-backend setting makes the legacy getter raise; we must not."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has only the legacy API")
    saved = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
            torch.get_float32_matmul_precision()
        assert tt.device.tf32_matmul_enabled() is True
        with tt.device.float32_math(tf32_matmul=False):
            assert tt.device.tf32_matmul_enabled() is False
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved
