"""doctor.find_problems is a pure function of an Environment: every check is driven by a made-up one."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tangtoc import doctor
from tangtoc.device import CudaFacts, describe

HEALTHY_CUDA = CudaFacts(built_with_cuda=True, device_count=1, driver_present=True, visible_devices=None)


def make_env(**changes: object) -> doctor.Environment:
    base = doctor.Environment(
        python="3.11.7",
        platform="Linux",
        cpu_model="Test CPU",
        cpu_cores=8,
        packages={"torch": "2.13.0"},
        cuda=HEALTHY_CUDA,
        devices=(describe("cpu"),),
        env_vars={},
        shm_bytes=16 << 30,
        c_compiler="/usr/bin/cc",
        cxx_compiler="/usr/bin/c++",
    )
    return dataclasses.replace(base, **changes)


def gpu(capability: tuple[int, int], tf32: bool):
    return dataclasses.replace(
        describe("cpu"),
        kind="cuda",
        index=0,
        name="NVIDIA H100 80GB HBM3",
        compute_capability=capability,
        tf32_matmul=tf32,
    )


def codes(env: doctor.Environment) -> list[str]:
    return [p.code for p in doctor.find_problems(env)]


def test_a_healthy_environment_has_no_problems() -> None:
    assert codes(make_env()) == []


@pytest.mark.parametrize(
    ("changes", "code", "fix"),
    [
        ({"cuda": CudaFacts(False, 0, True, None)}, "cpu-only-torch-with-gpu", "download.pytorch.org/whl/cu"),
        ({"cuda": CudaFacts(True, 0, True, "")}, "cuda-visible-devices-hides-all", "unset CUDA_VISIBLE_DEVICES"),
        ({"cuda": CudaFacts(True, 0, True, "-1")}, "cuda-visible-devices-hides-all", "unset CUDA_VISIBLE_DEVICES"),
        ({"devices": (gpu((9, 0), tf32=False),)}, "tf32-off", 'set_float32_matmul_precision\\("high"\\)'),
        ({"env_vars": {"CUDA_LAUNCH_BLOCKING": "1"}}, "cuda-launch-blocking", "unset CUDA_LAUNCH_BLOCKING"),
        ({"shm_bytes": 64 << 20}, "small-shm", "--shm-size"),
        ({"cxx_compiler": None}, "no-compiler", "build-essential"),
        ({"c_compiler": None}, "no-compiler", "build-essential"),
    ],
)
def test_each_problem_is_found_with_its_fix(changes: dict, code: str, fix: str) -> None:
    problems = doctor.find_problems(make_env(**changes))
    assert [p.code for p in problems] == [code]
    assert re.search(fix, problems[0].fix), problems[0].fix


@pytest.mark.parametrize(
    "changes",
    [
        {"cuda": CudaFacts(False, 0, False, None)},  # CPU-only build on a machine without a GPU: fine
        {"cuda": CudaFacts(False, 0, False, "")},  # hiding GPUs where there are none is harmless
        {"devices": (gpu((7, 5), tf32=False),)},  # TF32 does not exist before Ampere
        {"devices": (gpu((8, 0), tf32=True),)},
        {"env_vars": {"CUDA_LAUNCH_BLOCKING": "0"}},
        {"shm_bytes": None},  # no /dev/shm (macOS): not a problem
        {"cuda": CudaFacts(False, 0, False, None), "c_compiler": None},  # no GPU: only C++ is needed
    ],
)
def test_no_false_alarm(changes: dict) -> None:
    assert codes(make_env(**changes)) == []


def test_small_shm_message_gives_the_size() -> None:
    (p,) = doctor.find_problems(make_env(shm_bytes=64 << 20))
    assert "64 MiB" in p.title


def test_diagnose_reads_this_machine() -> None:
    report = doctor.diagnose()
    env = report.environment
    assert env.devices[0].kind == "cpu"
    assert env.packages["torch"] is not None
    assert report.healthy == (not report.problems)
    data = report.to_dict()
    assert data["healthy"] is report.healthy
    assert data["environment"]["cpu_cores"] == env.cpu_cores


@pytest.mark.parametrize(
    ("value", "message"),
    [("gpu", "Did you mean 'cuda'"), ("cuda:99", "CPU-only|out of range")],  # the latter on a GPU machine
)
def test_an_unusable_tangtoc_device_is_a_problem(value: str, message: str) -> None:
    (p,) = doctor.find_problems(make_env(env_vars={"TANGTOC_DEVICE": value}))
    assert p.code == "tangtoc-device-unusable" and p.severity == "problem"
    assert re.search(message, p.detail), p.detail


def test_tf32_advice_does_not_make_the_machine_unhealthy() -> None:
    env = make_env(devices=(gpu((9, 0), tf32=False),))
    (p,) = doctor.find_problems(env)
    assert p.severity == "advice"
    assert doctor.DoctorReport(env, (p,)).healthy
    assert not doctor.DoctorReport(env, (p, dataclasses.replace(p, severity="problem"))).healthy
