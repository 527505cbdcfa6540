"""Careless and hostile input to the device, move, data and diagnose APIs, one case per row: the counts of
docs/RELIABILITY.md come from here (``pytest tests/test_hostile_inputs.py -q``, case ids ``<area>-<name>``).

Every case either works, or raises the error a user can catch (a typed tangtoc error, or ``TypeError`` /
``ValueError``) with a message that says what was wrong and what to do: the pattern asserted is the message's
fix or suggestion, not only its first words. No case may raise anything else (``AttributeError``,
``RecursionError``, torch's ``RuntimeError``...), hang, or change or consume the caller's data: cases that hand
over something that could be consumed or changed check it afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import sys
import tracemalloc
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

import tangtoc as tt
from tangtoc.cli import main
from tangtoc.data import ResidentLoader, lm_windows, synthetic_classification, text_corpus
from tangtoc.diagnose import check_devices, device_guard
from tangtoc.errors import (
    BatchStructureError,
    CorpusError,
    DeviceUnavailableError,
    InvalidDeviceError,
    MixedDevicesError,
    UnmovableError,
)

CPU_ONLY = not torch.cuda.is_available()


class Case(NamedTuple):
    area: str  # device, move, data, diagnose: the rows of the Reliability table
    name: str
    call: Callable[[Path], Any]  # given a fresh folder for files the case needs
    expect: tuple[type[BaseException], str] | Callable[[Any], bool] | int
    # (error, pattern of its message) | a check of the result | the CLI's exit status (stderr then needs `match`)
    match: str = ""  # for a CLI case: what stderr must say
    after: Callable[[], bool] | None = None  # the caller's data is as it was (nothing lost, nothing consumed)


# ------------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _picked_from_env(value: str) -> Any:
    with _env("TANGTOC_DEVICE", value):
        return tt.pick_device()


def _cyclic_list() -> list[Any]:
    batch: list[Any] = [torch.ones(1)]
    batch.append(batch)
    return batch


def _cyclic_dict() -> dict[str, Any]:
    batch: dict[str, Any] = {"x": torch.ones(1)}
    batch["self"] = batch
    return batch


@dataclasses.dataclass
class _Node:
    x: torch.Tensor
    next: Any = None


@dataclasses.dataclass(frozen=True)
class _Frozen:
    x: torch.Tensor


class _Pair(list):
    def __init__(self, a: Any, b: Any) -> None:
        super().__init__([a, b])


class _Point(tuple):
    def __new__(cls, x: Any, y: Any) -> _Point:
        return super().__new__(cls, (x, y))


class _Slotted:
    __slots__ = ("x",)

    def __init__(self) -> None:
        self.x = torch.ones(1)


def _deep(levels: int) -> Any:
    batch: Any = torch.ones(1)
    for _ in range(levels):
        batch = [batch]
    return batch


async def _agen() -> Any:
    yield torch.ones(1)


def _files(folder: Path, **contents: bytes) -> Path:
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return folder


def _fifo(folder: Path, name: str = "pipe") -> Path:
    os.mkfifo(folder / name)
    return folder / name


def _sparse(folder: Path) -> Path:
    path = folder / "big.txt"
    with path.open("wb") as f:
        f.write(b"line of text\n" * 20_000)
        f.seek(256 * 2**20)  # a hole: no disk space taken, but 256 MiB to read
        f.write(b"end\n")
    return path


def _peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _loader(**kwargs: Any) -> ResidentLoader:
    return ResidentLoader(torch.arange(10), batch_size=kwargs.pop("batch_size", 2), device="cpu", **kwargs)


# Objects a case hands over and checks afterwards, made once at import so `after` sees the same object.
_GEN = (t for t in [torch.ones(1), torch.ones(2)])
_CYCLE = _cyclic_list()
_PAIR = _Pair(torch.ones(1), torch.zeros(1))
_MIXED = {"a": torch.ones(1), "b": torch.ones(1, device="meta")}
_MODEL = nn.Linear(2, 2)

# ------------------------------------------------------------------------------------------------- the cases

TEXT = b"some text, " * 50
FIX_EMPTY = r"the device is an empty string .*Fix: pass 'auto'"
CASES = [
    # -------------------------------------------------------------------- device: what names a device
    Case("device", "empty", lambda d: tt.resolve(""), (InvalidDeviceError, FIX_EMPTY)),
    Case("device", "blank", lambda d: tt.pick_device("   "), (InvalidDeviceError, FIX_EMPTY)),
    Case("device", "env-empty-is-unset", lambda d: _picked_from_env(""), lambda r: r == tt.pick_device()),
    Case("device", "env-misspelt", lambda d: _picked_from_env("cdua"), (InvalidDeviceError, r"'cuda'\?.*TANGTOC")),
    Case("device", "bad-index", lambda d: tt.resolve("cpu:abc"), (InvalidDeviceError, r"Did you mean 'cpu'\?")),
    Case(
        "device",
        "no-index",
        lambda d: tt.resolve("cuda:"),
        (InvalidDeviceError, r"nothing after ':' is a device index.*'cuda'\?"),
    ),
    Case("device", "negative-index", lambda d: tt.resolve("cuda:-1"), (InvalidDeviceError, r"Did you mean 'cuda'")),
    Case("device", "two-indices", lambda d: tt.resolve("meta:0:1"), (InvalidDeviceError, r"Did you mean 'meta'")),
    Case("device", "unicode-digit", lambda d: tt.resolve("cpu:٣"), (InvalidDeviceError, r"Did you mean 'cpu'")),
    Case("device", "nul-byte", lambda d: tt.resolve("cpu\0"), (InvalidDeviceError, r"Did you mean 'cpu'")),
    Case("device", "fullwidth", lambda d: tt.resolve("ｃｐｕ"), (InvalidDeviceError, r"Valid names: auto, cpu")),
    Case("device", "int-256-wraps", lambda d: tt.resolve(256), (InvalidDeviceError, r"<= 127.*wrap around")),
    Case("device", "str-200-wraps", lambda d: tt.resolve("cuda:200"), (InvalidDeviceError, r"<= 127.*wrap")),
    Case("device", "int-negative", lambda d: tt.resolve(-1), (InvalidDeviceError, r"must be >= 0, got -1")),
    Case("device", "bool", lambda d: tt.resolve(True), (TypeError, r"str, int or torch\.device, got bool")),
    Case("device", "float", lambda d: tt.resolve(1.5), (TypeError, r"str, int or torch\.device, got float")),
    Case("device", "bytes", lambda d: tt.resolve(b"cpu"), (TypeError, r"str, int or torch\.device, got bytes")),
    Case("device", "alias", lambda d: tt.resolve("gpu:1"), (InvalidDeviceError, r"Did you mean 'cuda:1'\?")),
    Case("device", "nonsense", lambda d: tt.resolve("zzz"), (InvalidDeviceError, r"Valid names: auto, cpu, cuda")),
    Case("device", "leading-zero", lambda d: tt.resolve("meta:01"), lambda r: r == torch.device("meta")),
    Case("device", "auto-shouted", lambda d: tt.resolve(" AUTO "), lambda r: r == tt.pick_device()),
    Case("device", "mps-on-linux", lambda d: tt.resolve("mps"), (DeviceUnavailableError, r"Fix: use 'cpu'")),
    Case("device", "cli-bench-empty", lambda d: main(["bench", "--device", ""]), 2, FIX_EMPTY),
    Case("device", "cli-bench-bad-index", lambda d: main(["bench", "--device", "cpu:x"]), 2, r"mean 'cpu'\?"),
    Case(
        "device",
        "cli-train-wraps",
        lambda d: main(["train", "mlp", "--steps", "1", "--device", "cuda:300"]),
        2,
        r"<= 127",
    ),
    # -------------------------------------------------------------------- move: what a batch may be
    Case(
        "move",
        "cycle-list",
        lambda d: tt.to_device(_CYCLE, "meta"),
        (BatchStructureError, r"batch\[1\] is batch"),
        after=lambda: _CYCLE[1] is _CYCLE and _CYCLE[0].device.type == "cpu",
    ),
    Case("move", "cycle-dict", lambda d: tt.to_cpu(_cyclic_dict()), (BatchStructureError, r"\['self'\].*skip_keys")),
    Case(
        "move",
        "cycle-dataclass",
        lambda d: tt.to_device(_Node(torch.ones(1), [_cyclic_list()]), "meta"),
        (BatchStructureError, r"batch\.next\[0\]\[1\] is batch\.next\[0\]"),
    ),
    Case("move", "cycle-skipped", lambda d: tt.to_device(_cyclic_dict(), "meta", skip_keys=("self",)), lambda r: True),
    Case("move", "too-deep", lambda d: tt.to_device(_deep(2000), "meta"), (BatchStructureError, r"Flatten it")),
    Case("move", "deep-but-fine", lambda d: tt.to_device(_deep(100), "meta"), lambda r: r is not None),
    Case(
        "move",
        "generator",
        lambda d: tt.to_device({"g": _GEN}, "meta"),
        (UnmovableError, r"list\(\.\.\.\)"),
        after=lambda: next(_GEN).shape == (1,),
    ),
    Case("move", "map", lambda d: tt.to_device(map(abs, [torch.ones(1)]), "meta"), (UnmovableError, r"iterator")),
    Case("move", "zip", lambda d: tt.to_device([zip([1], [2], strict=True)], "meta"), (UnmovableError, r"\[0\]")),
    Case(
        "move",
        "deque",
        lambda d: tt.to_device(collections.deque([torch.ones(1)]), "meta"),
        (UnmovableError, r"pass its items as a list"),
    ),
    Case(
        "move",
        "dict-values",
        lambda d: tt.to_device({"a": torch.ones(1)}.values(), "meta"),
        (UnmovableError, r"dict_values"),
    ),
    Case(
        "move",
        "list-subclass",
        lambda d: tt.to_device(_PAIR, "meta"),
        lambda r: type(r) is _Pair,
        after=lambda: _PAIR[0].device.type == "cpu",
    ),
    Case("move", "tuple-subclass", lambda d: tt.to_device(_Point(torch.ones(1), 2), "meta"), lambda r: r[1] == 2),
    Case("move", "sys-version-info", lambda d: tt.to_device([sys.version_info], "meta"), lambda r: r[0][0] == 3),
    Case("move", "frozen-dataclass", lambda d: tt.to_device(_Frozen(torch.ones(1)), "meta"), lambda r: r.x.is_meta),
    Case(
        "move",
        "defaultdict",
        lambda d: tt.to_device(collections.defaultdict(list, a=torch.ones(1)), "meta"),
        lambda r: r["new"] == [],
    ),
    Case(
        "move",
        "mappingproxy",
        lambda d: tt.to_device(types.MappingProxyType({"a": torch.ones(1)}), "meta"),
        lambda r: isinstance(r, types.MappingProxyType) and r["a"].is_meta,
    ),
    Case("move", "slots", lambda d: tt.to_device(_Slotted(), "meta"), (UnmovableError, r"__slots__.*dataclass")),
    Case(
        "move",
        "holds-a-model",
        lambda d: tt.to_device(types.SimpleNamespace(m=_MODEL), "meta"),
        (UnmovableError, r"model\.to\(device\)"),
        after=lambda: _MODEL.weight.device.type == "cpu",
    ),
    Case("move", "meta-to-cpu", lambda d: tt.to_cpu(torch.ones(1, device="meta")), (ValueError, r"to_empty")),
    Case(
        "move",
        "float-dtype-int",
        lambda d: tt.to_device(torch.ones(1), "cpu", float_dtype=torch.int32),
        (ValueError, r"torch\.float32"),
    ),
    Case(
        "move",
        "object-array",
        lambda d: tt.to_device(np.array(["a"], dtype=object), "meta"),
        lambda r: isinstance(r, np.ndarray),
    ),
    Case(
        "move",
        "long-double",
        lambda d: tt.to_device(np.ones(2, dtype=np.longdouble), "cpu"),
        (TypeError, r"astype\(np\.float64\)"),
    ),
    Case("move", "bad-device", lambda d: tt.to_device(torch.ones(1), "gpu"), (InvalidDeviceError, r"'cuda'\?")),
    Case("move", "fetch-vector", lambda d: tt.fetch(torch.ones(2)), (ValueError, r"to_cpu\(\) or to_numpy\(\)")),
    Case("move", "fetch-str", lambda d: tt.fetch("a"), (TypeError, r"tensors and numbers; argument 0 is a str")),
    Case("move", "as-tensor-ragged", lambda d: tt.as_tensor([[1], [1, 2]]), (ValueError, r"Pad ragged rows")),
    Case("move", "as-tensor-dict", lambda d: tt.as_tensor({"a": 1}), (TypeError, r"use to_device\(\)")),
    Case(
        "move",
        "device-of-mixed",
        lambda d: tt.device_of(_MIXED),
        (MixedDevicesError, r"Fix: move everything"),
        after=lambda: _MIXED["a"].device.type == "cpu",
    ),
    Case(
        "move",
        "skip-keys-a-string",
        lambda d: tt.to_device({"ids": torch.ones(1)}, "meta", skip_keys="ids"),
        (TypeError, r"skip_keys must be a tuple of names, got the string 'ids'\. Fix: skip_keys=\('ids',\)"),
    ),
    Case(
        "move",
        "non-blocking-a-string",
        lambda d: tt.to_device(torch.ones(1), "meta", non_blocking="yes"),
        (ValueError, r"non_blocking must be True, False or 'auto', got 'yes'"),
    ),
    Case("move", "async-generator", lambda d: tt.to_device({"a": _agen()}, "meta"), (UnmovableError, r"async_gen")),
    # -------------------------------------------------------------------- data: corpora and loaders
    Case(
        "data",
        "max-bytes-float",
        lambda d: text_corpus(_files(d, a=TEXT), max_bytes=1e5),
        (ValueError, r"max_bytes must be an int > 0, got 100000\.0"),
    ),
    Case(
        "data",
        "val-fraction-str",
        lambda d: text_corpus(_files(d, a=TEXT), val_fraction="0.1"),
        (ValueError, r"val_fraction must be a number in \(0, 1\), got '0\.1'"),
    ),
    Case("data", "windows-block-float", lambda d: lm_windows(torch.arange(9), 2.5), (ValueError, r"int > 0, got 2\.5")),
    Case("data", "rank-float", lambda d: _loader(rank=0.5, world_size=2), (ValueError, r"rank=0\.5")),
    Case("data", "world-size-float", lambda d: _loader(rank=0, world_size=1.5), (ValueError, r"world_size=1\.5")),
    Case("data", "set-epoch-float", lambda d: _loader().set_epoch(0.5), (ValueError, r"int >= 0, got 0\.5")),
    Case(
        "data",
        "state-position-str",
        lambda d: _loader().load_state_dict({**_loader().state_dict(), "position": "1"}),
        (ValueError, r"position '1' is not an int in 0\.\.5"),
    ),
    Case("data", "synthetic-n-float", lambda d: synthetic_classification(2.5), (ValueError, r"n=2\.5")),
    Case("data", "missing", lambda d: text_corpus(d / "nowhere"), (CorpusError, r"Fix: pass a text file")),
    Case("data", "fifo-alone", lambda d: text_corpus(_fifo(d)), (CorpusError, r"is a FIFO.*Fix")),
    Case("data", "dev-zero", lambda d: text_corpus("/dev/zero"), (CorpusError, r"character device.*Fix")),
    Case("data", "fifo-in-folder", lambda d: (_fifo(d), text_corpus(_files(d, a=TEXT)))[1], lambda r: r.files == 1),
    Case(
        "data",
        "broken-link",
        lambda d: ((d / "l").symlink_to(d / "no"), text_corpus(_files(d, a=TEXT)))[1],
        lambda r: r.files == 1,
    ),
    Case(
        "data",
        "link-loop",
        lambda d: ((d / "l").symlink_to(d / "l"), text_corpus(_files(d, a=TEXT)))[1],
        lambda r: r.files == 1,
    ),
    Case(
        "data",
        "binary-alone",
        lambda d: text_corpus(_files(d, b=b"\0" * 99) / "b"),
        (CorpusError, r"1 binary file\. .*named alone"),
    ),
    Case("data", "binaries-only", lambda d: text_corpus(_files(d, b=b"\0", c=b"\0")), (CorpusError, r"2 binary files")),
    Case("data", "empty-folder", lambda d: text_corpus(d), (CorpusError, r"no files\..*Fix")),
    Case("data", "empty-file", lambda d: text_corpus(_files(d, e=b"") / "e"), (CorpusError, r"1 empty file")),
    Case("data", "too-short", lambda d: text_corpus(_files(d, s=b"abc") / "s"), (CorpusError, r"too few to split")),
    Case(
        "data",
        "under-a-file",
        lambda d: text_corpus(_files(d, a=TEXT) / "a" / "x"),
        (CorpusError, r"cannot read .*Not a directory"),
    ),
    Case(
        "data",
        "sparse-256MiB",
        lambda d: _peak_bytes(lambda: text_corpus(_sparse(d), max_bytes=100_000)),
        lambda peak: peak < 2 * 2**20,
    ),
    Case("data", "max-bytes-0", lambda d: text_corpus(_files(d, a=TEXT), max_bytes=0), (ValueError, r"> 0, got 0")),
    Case(
        "data",
        "val-fraction",
        lambda d: text_corpus(_files(d, a=TEXT), val_fraction=1.5),
        (ValueError, r"in \(0, 1\), got 1\.5"),
    ),
    Case(
        "data",
        "windows-block-0",
        lambda d: lm_windows(torch.arange(9), 0),
        (ValueError, r"block_size must be an int > 0, got 0"),
    ),
    Case("data", "windows-short", lambda d: lm_windows(torch.arange(3), 8), (CorpusError, r"smaller block_size")),
    Case("data", "seed-negative", lambda d: _loader(seed=-1), (ValueError, r"seed must be an int >= 0.*seed=0")),
    Case("data", "seed-float", lambda d: _loader(seed=0.5), (ValueError, r"seed must be an int >= 0, got 0\.5")),
    Case("data", "seed-numpy", lambda d: _loader(seed=np.int64(3)), lambda r: type(r.seed) is int),
    Case("data", "batch-size-0", lambda d: _loader(batch_size=0), (ValueError, r"positive int, got 0")),
    Case("data", "batch-size-bool", lambda d: _loader(batch_size=True), (ValueError, r"positive int, got True")),
    Case("data", "rank-too-big", lambda d: _loader(rank=2, world_size=2), (ValueError, r"0 <= rank < world_size")),
    Case("data", "memory-fraction", lambda d: _loader(memory_fraction=0), (ValueError, r"in \(0, 1\], got 0")),
    Case("data", "not-a-tensor", lambda d: ResidentLoader([1, 2], batch_size=1), (TypeError, r"tt\.as_tensor")),
    Case(
        "data",
        "lengths-differ",
        lambda d: ResidentLoader(torch.ones(3), torch.ones(4), batch_size=1),
        (ValueError, r"same first dimension, got sizes \[3, 4\]"),
    ),
    Case("data", "scalar-tensor", lambda d: ResidentLoader(torch.tensor(1.0), batch_size=1), (ValueError, r"0-dim")),
    Case(
        "data",
        "set-epoch-negative",
        lambda d: _loader().set_epoch(-1),
        (ValueError, r"epoch must be an int >= 0, got -1"),
    ),
    Case(
        "data",
        "state-other-seed",
        lambda d: _loader().load_state_dict({**_loader(seed=1).state_dict()}),
        (ValueError, r"saved seed is 1 but this loader has 0.*same data, seed"),
    ),
    Case("data", "synthetic-n-0", lambda d: synthetic_classification(0), (ValueError, r"need n > 0")),
    # -------------------------------------------------------------------- diagnose: what the checks are given
    Case("diagnose", "guard-int", lambda d: device_guard(5), (TypeError, r"model must be a torch\.nn\.Module.*Fix")),
    Case(
        "diagnose",
        "guard-tensor-named",
        lambda d: device_guard(_MODEL, w=torch.ones(1)),
        (TypeError, r"w must be a torch\.nn\.Module.*pass modules only"),
    ),
    Case(
        "diagnose",
        "guard-optimizer",
        lambda d: device_guard(_MODEL, optimizer="adam"),
        (TypeError, r"optimizer must be a torch\.optim\.Optimizer or None.*Fix"),
    ),
    Case("diagnose", "check-int", lambda d: check_devices(5), (TypeError, r"check_devices\(None, batch\)")),
    Case(
        "diagnose",
        "check-optimizer",
        lambda d: check_devices(_MODEL, optimizer=5),
        (TypeError, r"optimizer must be a torch\.optim\.Optimizer"),
    ),
    Case(
        "diagnose",
        "check-cycle",
        lambda d: check_devices(_MODEL, _cyclic_list()),
        (BatchStructureError, r"input\[1\] is input"),
    ),
    Case("diagnose", "check-bad-device", lambda d: check_devices(_MODEL, device="gpu"), (InvalidDeviceError, "'cuda'")),
    Case("diagnose", "check-nothing", lambda d: check_devices(), lambda r: r.ok),
    Case("diagnose", "check-tensor-alone", lambda d: check_devices(None, torch.ones(1)), lambda r: r.ok),
]
if CPU_ONLY:
    CASES.append(Case("device", "cuda-on-cpu-build", lambda d: tt.resolve("cuda"), (DeviceUnavailableError, r"Fix")))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}-{c.name}" for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if isinstance(case.expect, tuple):
        error, pattern = case.expect
        with pytest.raises(error, match=pattern):
            case.call(tmp_path)
    elif isinstance(case.expect, int):
        assert case.call(tmp_path) == case.expect
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(case.match, err), err
    else:
        assert case.expect(case.call(tmp_path))
    if case.after is not None:
        assert case.after(), "the caller's data was changed or consumed"
