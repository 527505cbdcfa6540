"""Tests of tangtoc.move: placing any batch on a device and bringing results back.

``meta`` is the second device on CPU-only machines: a tensor moved there keeps its shape and dtype and
has no data, which is all these tests need to see that it moved.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict, UserDict, defaultdict, namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tangtoc as tt
from tangtoc.errors import DeviceUnavailableError, MixedDevicesError

CPU = torch.device("cpu")
META = torch.device("meta")

Pair = namedtuple("Pair", ["x", "y"])


@dataclasses.dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    name: str = "b"


@dataclasses.dataclass(frozen=True)
class FrozenBatch:
    x: torch.Tensor
    y: torch.Tensor


@dataclasses.dataclass(slots=True)
class SlottedBatch:
    x: torch.Tensor
    n: int


@dataclasses.dataclass(frozen=True, slots=True)
class FrozenSlottedBatch:
    x: torch.Tensor
    labels: list[torch.Tensor]


@dataclasses.dataclass
class Derived:
    x: torch.Tensor
    doubled: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.doubled = self.x * 2


class Movable:
    """An object with its own ``.to`` (like a TensorDict): to_device hands it over and records the call."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.to_calls: list[tuple[torch.device, bool]] = []

    def to(self, device: torch.device, non_blocking: bool = False) -> Movable:
        self.to_calls.append((device, non_blocking))
        return Movable(self.x.to(device, non_blocking=non_blocking))


class FakeCuda(torch.Tensor):
    """A CPU tensor that reports a CUDA device: drives fetch()'s packed (non-CPU) path on a CPU-only machine."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0)


def on(dev: torch.device, *tensors: torch.Tensor) -> bool:
    return all(t.device == dev for t in tensors)


# ---------------------------------------------------------------------------------------- to_device: leaves


def test_tensor_moves_and_keeps_shape_and_dtype() -> None:
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    out = tt.to_device(t, "meta")
    assert out.device == META
    assert out.shape == (2, 3)
    assert out.dtype == torch.int32
    assert t.device == CPU


@pytest.mark.parametrize(("dev", "spec"), [(CPU, "cpu"), (CPU, CPU), (META, "meta"), (META, torch.device("meta"))])
def test_tensor_already_on_target_is_returned_as_is(dev: torch.device, spec) -> None:
    t = torch.ones(3, device=dev)
    assert tt.to_device(t, spec) is t


def test_tensor_already_on_indexed_cpu_target_is_returned_as_is() -> None:
    t = torch.ones(3)
    assert tt.to_device(t, "cpu:0") is t


def test_module_is_moved_in_place() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    out = tt.to_device(model, "meta")
    assert out is model
    assert all(p.device == META for p in model.parameters())
    assert all(b.device == META for b in model.buffers())


def test_object_with_its_own_to_is_moved_by_it() -> None:
    obj = Movable(torch.ones(2, 3, dtype=torch.long))
    out = tt.to_device({"batch": obj}, "meta")
    assert obj.to_calls == [(META, False)]
    assert out["batch"].x.device == META
    assert out["batch"].x.dtype == torch.long


def test_object_with_its_own_to_gets_non_blocking_when_forced() -> None:
    obj = Movable(torch.ones(1))
    tt.to_device(obj, "meta", non_blocking=True)
    assert obj.to_calls == [(META, True)]


def test_object_whose_to_takes_no_non_blocking() -> None:
    class OnlyDevice:
        def __init__(self) -> None:
            self.moved_to: list[torch.device] = []

        def to(self, device):
            self.moved_to.append(device)
            return self

    obj = OnlyDevice()
    assert tt.to_device(obj, "meta") is obj
    assert obj.moved_to == [META]


@pytest.mark.parametrize("value", ["text", b"bytes", 3, 2.5, 1 + 2j, True, None, range(3)])
def test_atoms_pass_through(value: Any) -> None:
    assert tt.to_device(value, "meta") is value
    assert tt.to_device([value], "meta")[0] is value


def test_torch_size_is_preserved() -> None:
    size = torch.Size([2, 3])
    out = tt.to_device({"shape": size}, "meta")["shape"]
    assert type(out) is torch.Size
    assert out == size


# ---------------------------------------------------------------------------------- to_device: containers


def test_dict_list_tuple() -> None:
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [torch.ones(3), "tag"]), "n": 7}
    out = tt.to_device(batch, "meta")
    assert type(out) is dict
    assert list(out) == ["x", "pair", "n"]
    assert type(out["pair"]) is tuple
    assert type(out["pair"][1]) is list
    assert on(META, out["x"], out["pair"][0], out["pair"][1][0])
    assert out["pair"][1][1] == "tag"
    assert out["n"] == 7
    assert on(CPU, batch["x"], batch["pair"][0])  # the input is not modified


def test_ordered_dict_keeps_type_and_order() -> None:
    batch = OrderedDict([("z", torch.ones(1)), ("a", torch.ones(2)), ("m", torch.ones(3))])
    out = tt.to_device(batch, "meta")
    assert type(out) is OrderedDict
    assert list(out) == ["z", "a", "m"]
    assert on(META, *out.values())


def test_defaultdict_keeps_type_and_factory() -> None:
    # accelerate issue #4154: rebuilding a defaultdict as type(x)(items) fails.
    batch: defaultdict[str, list] = defaultdict(list, {"x": [torch.ones(2)]})
    out = tt.to_device(batch, "meta")
    assert type(out) is defaultdict
    assert out.default_factory is list
    assert out["x"][0].device == META
    assert out["missing"] == []


def test_namedtuple_keeps_type() -> None:
    out = tt.to_device(Pair(torch.ones(2), torch.zeros(3)), "meta")
    assert type(out) is Pair
    assert on(META, out.x, out.y)


def test_torch_return_types_are_rebuilt() -> None:
    result = torch.max(torch.randn(3, 4), dim=0)
    out = tt.to_device(result, "meta")
    assert type(out) is type(result)
    assert on(META, out.values, out.indices)


@pytest.mark.parametrize("set_type", [set, frozenset])
def test_sets_of_tensors(set_type: type) -> None:
    items = set_type([torch.ones(1), torch.ones(2), "label"])
    out = tt.to_device(items, "meta")
    assert type(out) is set_type
    assert len(out) == 3
    tensors = sorted((x for x in out if isinstance(x, torch.Tensor)), key=lambda t: t.numel())
    assert [t.shape for t in tensors] == [(1,), (2,)]
    assert on(META, *tensors)
    assert "label" in out


def test_dataclass() -> None:
    batch = Batch(torch.ones(2), torch.zeros(2), name="train")
    out = tt.to_device(batch, "meta")
    assert type(out) is Batch
    assert out is not batch
    assert on(META, out.x, out.y)
    assert out.name == "train"
    assert on(CPU, batch.x, batch.y)


def test_frozen_dataclass() -> None:
    # Lightning #10873 refuses frozen dataclasses.
    batch = FrozenBatch(torch.ones(2), torch.zeros(2))
    out = tt.to_device(batch, "meta")
    assert type(out) is FrozenBatch
    assert on(META, out.x, out.y)
    assert on(CPU, batch.x, batch.y)


def test_slotted_dataclasses() -> None:
    out = tt.to_device(SlottedBatch(torch.ones(2), 5), "meta")
    assert type(out) is SlottedBatch
    assert out.x.device == META
    assert out.n == 5
    out2 = tt.to_device(FrozenSlottedBatch(torch.ones(2), [torch.ones(1)]), "meta")
    assert type(out2) is FrozenSlottedBatch
    assert on(META, out2.x, out2.labels[0])


def test_dataclass_init_false_field_is_moved_and_post_init_not_rerun() -> None:
    batch = Derived(torch.ones(2))
    batch.doubled = torch.full((2,), 7.0)  # differs from what __post_init__ would compute
    same = tt.to_device(batch, "cpu")
    assert same.doubled is batch.doubled  # __post_init__ not rerun, field copied
    out = tt.to_device(batch, "meta")
    assert on(META, out.x, out.doubled)
    assert out.doubled.shape == (2,)


def test_dataclass_with_unset_init_false_field() -> None:
    @dataclasses.dataclass(slots=True)
    class Lazy:
        x: torch.Tensor
        cache: torch.Tensor = dataclasses.field(init=False)

    out = tt.to_device(Lazy(torch.ones(1)), "meta")
    assert out.x.device == META
    assert not hasattr(out, "cache")


# ------------------------------------------------------------------------------------- to_device: NumPy


@pytest.mark.parametrize(
    ("np_dtype", "torch_dtype"),
    [
        (np.float64, torch.float64),
        (np.float32, torch.float32),
        (np.float16, torch.float16),
        (np.int32, torch.int32),
        (np.int64, torch.int64),
        (np.uint8, torch.uint8),
        (np.bool_, torch.bool),
        (np.complex64, torch.complex64),
    ],
)
@pytest.mark.parametrize("dev", [CPU, META], ids=["to-cpu", "to-meta"])
def test_numpy_array_keeps_dtype(np_dtype, torch_dtype: torch.dtype, dev: torch.device) -> None:
    arr = np.arange(6).reshape(2, 3).astype(np_dtype)
    out = tt.to_device(arr, dev)
    assert isinstance(out, torch.Tensor)
    assert out.device == dev
    assert out.dtype == torch_dtype
    assert out.shape == (2, 3)
    if dev == CPU:
        np.testing.assert_array_equal(out.numpy(), arr)


def test_numpy_array_on_cpu_shares_memory() -> None:
    arr = np.zeros(3, dtype=np.float32)
    out = tt.to_device(arr, "cpu")
    arr[1] = 5.0
    assert out[1].item() == 5.0


@pytest.mark.parametrize(
    ("scalar", "torch_dtype"),
    [
        (np.float32(1.5), torch.float32),
        (np.int32(-3), torch.int32),
        (np.int64(2**40), torch.int64),
        (np.bool_(True), torch.bool),
        (np.float16(0.5), torch.float16),
        pytest.param(
            np.float64(1.5),
            torch.float64,
        ),
        pytest.param(
            np.complex128(1 + 2j),
            torch.complex128,
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, np.generic) else str(v),
)
def test_numpy_scalar_becomes_0d_tensor(scalar: np.generic, torch_dtype: torch.dtype) -> None:
    out = tt.to_device(scalar, "cpu")
    assert isinstance(out, torch.Tensor)
    assert out.shape == ()
    assert out.dtype == torch_dtype
    assert out.item() == scalar.item()


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(6, dtype=np.float32)[::-1],
        lambda: np.arange(12, dtype=np.int64).reshape(3, 4)[::-1, ::-2],
        lambda: np.broadcast_to(np.arange(3.0), (2, 3)),  # read-only, zero stride
    ],
    ids=["reversed", "negative-2d", "broadcast"],
)
def test_awkward_arrays_convert_without_warnings(make) -> None:
    arr = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = tt.to_device(arr, "cpu")
    np.testing.assert_array_equal(out.numpy(), arr)
    assert out.dtype == torch.from_numpy(np.ascontiguousarray(arr)).dtype


def test_read_only_array_converts_without_warnings() -> None:
    arr = np.arange(4, dtype=np.float64)
    arr.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = tt.to_device(arr, "cpu")
    np.testing.assert_array_equal(out.numpy(), arr)
    out[0] = 42.0  # a copy: writing to the tensor must not touch the read-only array
    assert arr[0] == 0.0


def test_big_endian_array_converts() -> None:
    arr = np.arange(3, dtype=">f4")
    out = tt.to_device(arr, "cpu")
    assert out.dtype == torch.float32
    assert out.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "arr",
    [
        np.array(["a", "bc"]),
        np.array([b"x"]),
        np.array([{"k": 1}, None], dtype=object),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
    ],
    ids=["str", "bytes", "object", "datetime"],
)
def test_non_numeric_arrays_pass_through(arr: np.ndarray) -> None:
    assert tt.to_device(arr, "meta") is arr
    assert tt.to_device({"a": arr}, "meta")["a"] is arr


# -------------------------------------------------------------------------------- to_device: skip_keys


def test_skip_keys_leaves_mapping_values_at_any_depth() -> None:
    keep = torch.ones(2)
    batch = {"x": torch.ones(1), "keep": keep, "inner": {"keep": keep, "y": torch.ones(1)}}
    out = tt.to_device(batch, "meta", skip_keys=("keep",))
    assert out["keep"] is keep
    assert out["inner"]["keep"] is keep
    assert on(META, out["x"], out["inner"]["y"])


def test_skip_keys_applies_to_dataclass_and_namedtuple_fields() -> None:
    batch = Batch(torch.ones(1), torch.ones(2))
    out = tt.to_device(batch, "meta", skip_keys=("y",))
    assert out.x.device == META
    assert out.y is batch.y
    pair = Pair(torch.ones(1), torch.ones(2))
    out_pair = tt.to_device(pair, "meta", skip_keys=("x",))
    assert out_pair.x is pair.x
    assert out_pair.y.device == META


# ----------------------------------------------------------------------------- to_device: float_dtype (opt-in)


def test_numpy_float64_becomes_float32_when_asked() -> None:
    arr = np.random.default_rng(0).standard_normal((3, 4))
    assert tt.to_device(arr, "meta").dtype == torch.float64  # the default keeps NumPy's dtype, as from_numpy
    out = tt.to_device({"x": arr}, "meta", float_dtype=torch.float32)["x"]
    assert (out.device, out.dtype, tuple(out.shape)) == (META, torch.float32, (3, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dev", [CPU, META], ids=["already-there", "moved"])
def test_float_dtype_casts_every_floating_tensor(dtype: torch.dtype, dev: torch.device) -> None:
    t = torch.ones(2, dtype=dtype)
    out = tt.to_device(t, dev, float_dtype=torch.float32)
    assert (out.device, out.dtype) == (dev, torch.float32)
    assert t.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64, torch.float32])
def test_float_dtype_leaves_other_dtypes_and_matching_floats_alone(dtype: torch.dtype) -> None:
    t = torch.ones(2, dtype=dtype)
    assert tt.to_device(t, "cpu", float_dtype=torch.float32) is t  # no cast, no copy
    assert tt.to_device(t, "meta", float_dtype=torch.float32).dtype == dtype


def test_float_dtype_keeps_lists_of_numbers_and_modules() -> None:
    model = nn.Linear(2, 2).double()
    out = tt.to_device({"weights": [0.5, 1.5], "model": model}, "meta", float_dtype=torch.float32)
    assert out["weights"] == [0.5, 1.5]
    assert out["model"].weight.dtype == torch.float64


@pytest.mark.parametrize("bad", [torch.int64, "float32", torch.complex64], ids=repr)
def test_float_dtype_must_be_a_floating_dtype(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"float_dtype must be a floating-point torch\.dtype such as torch\.float32"):
        tt.to_device(torch.ones(1), "meta", float_dtype=bad)


# ------------------------------------------------------------------------------------ to_device: errors


@pytest.mark.parametrize("target", ["cpu", CPU])
def test_meta_tensor_to_cpu_explains(target) -> None:
    t = torch.empty(2, 3, device="meta")
    pattern = r"cannot copy a meta tensor \(shape \(2, 3\), torch\.float32\) to cpu: meta tensors have no data"
    with pytest.raises(ValueError, match=pattern):
        tt.to_device({"w": t}, target)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", 0], ids=["str-plain", "str-indexed", "int"])
def test_to_device_cuda_without_cuda(spec) -> None:
    with pytest.raises(DeviceUnavailableError, match="was requested, but"):
        tt.to_device({"x": torch.ones(1)}, spec)


def test_to_device_invalid_name() -> None:
    with pytest.raises(tt.InvalidDeviceError, match="Did you mean 'cuda'"):
        tt.to_device(torch.ones(1), "gpu")


# ------------------------------------------------------------------------------------------- as_tensor


def test_as_tensor_nested_floats() -> None:
    out = tt.as_tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert out.dtype == torch.float32
    assert out.shape == (2, 3)
    assert out.device == tt.pick_device()
    assert out.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_as_tensor_ints_and_dtype() -> None:
    assert tt.as_tensor([[1, 2], [3, 4]], "cpu").dtype == torch.int64
    out = tt.as_tensor([[1, 2], [3, 4]], "meta", dtype=torch.float16)
    assert out.dtype == torch.float16
    assert out.device == META
    assert tt.as_tensor((True, False), "cpu").dtype == torch.bool
    assert tt.as_tensor(3.5, "cpu").shape == ()


@pytest.mark.parametrize("np_dtype", [np.float64, np.int32, np.bool_, np.uint8])
def test_as_tensor_numpy_keeps_dtype(np_dtype) -> None:
    arr = np.ones((2, 2), dtype=np_dtype)
    out = tt.as_tensor(arr, "cpu")
    assert out.dtype == torch.from_numpy(arr).dtype
    np.testing.assert_array_equal(out.numpy(), arr)
    assert tt.as_tensor(arr, "cpu", dtype=torch.float32).dtype == torch.float32


def test_as_tensor_numpy_scalar() -> None:
    out = tt.as_tensor(np.float64(0.1), "cpu")
    assert out.dtype == torch.float64
    assert out.item() == 0.1


def test_as_tensor_stacks_same_shape_tensors() -> None:
    parts = [torch.full((2, 3), float(i)) for i in range(4)]
    out = tt.as_tensor(parts, "meta")
    assert out.shape == (4, 2, 3)
    assert out.device == META
    stacked = tt.as_tensor(parts, "cpu", dtype=torch.float64)
    assert stacked.dtype == torch.float64
    assert stacked[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_as_tensor_tensor_is_converted() -> None:
    t = torch.ones(2, dtype=torch.int64)
    out = tt.as_tensor(t, "meta", dtype=torch.float32)
    assert out.device == META
    assert out.dtype == torch.float32


def test_as_tensor_ragged_list() -> None:
    with pytest.raises(ValueError, match=r"could not turn this list into a tensor.*rectangular nest"):
        tt.as_tensor([[1, 2], [3]], "cpu")


def test_as_tensor_tensors_of_different_shapes() -> None:
    with pytest.raises(ValueError, match=r"different shapes \[\(2,\), \(3,\)\]; stacking needs one shape"):
        tt.as_tensor([torch.ones(2), torch.ones(3)], "cpu")


def test_as_tensor_string_array() -> None:
    with pytest.raises(TypeError, match=r"as_tensor needs a numeric NumPy array, got dtype <U1"):
        tt.as_tensor(np.array(["a", "b"]), "cpu")


@pytest.mark.parametrize(("obj", "tname"), [({"x": [1.0]}, "dict"), ("1.0", "str"), ({1, 2}, "set")])
def test_as_tensor_containers_point_to_to_device(obj: Any, tname: str) -> None:
    with pytest.raises(TypeError, match=rf"got {tname}\. For dicts and other containers use to_device\(\)"):
        tt.as_tensor(obj, "cpu")


# ------------------------------------------------------------------------------------ to_cpu / to_numpy


def test_to_cpu_detaches_nested() -> None:
    w = torch.ones(3, requires_grad=True)
    out = {"loss": (w * 2).sum(), "parts": [w * 3, Pair(w + 1, "tag")]}
    got = tt.to_cpu(out)
    leaves = [got["loss"], got["parts"][0], got["parts"][1].x]
    assert all(not t.requires_grad for t in leaves)
    assert on(CPU, *leaves)
    assert got["loss"].item() == 6.0
    assert got["parts"][1].y == "tag"
    assert out["loss"].requires_grad  # the input keeps its graph


def test_to_cpu_from_meta_raises() -> None:
    with pytest.raises(ValueError, match="meta tensors have no data"):
        tt.to_cpu([torch.empty(1, device="meta")])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_to_numpy_half_types_become_float32(dtype: torch.dtype) -> None:
    t = torch.tensor([1.5, -2.25], dtype=dtype)
    out = tt.to_numpy(t)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.tolist() == [1.5, -2.25]


def test_to_numpy_keeps_other_dtypes_and_structure() -> None:
    w = torch.ones(2, requires_grad=True)
    batch = {"ids": torch.tensor([1, 2**40]), "pair": (w * 2, torch.tensor([True])), "name": "x"}
    out = tt.to_numpy(batch)
    assert type(out) is dict
    assert type(out["pair"]) is tuple
    assert out["ids"].dtype == np.int64
    assert out["ids"].tolist() == [1, 2**40]
    assert out["pair"][0].dtype == np.float32
    assert out["pair"][1].dtype == np.bool_
    assert out["name"] == "x"


def test_to_numpy_resolves_conjugate() -> None:
    t = torch.tensor([1 + 2j, 3 - 4j]).conj()
    assert t.is_conj()
    out = tt.to_numpy(t)
    np.testing.assert_array_equal(out, np.array([1 - 2j, 3 + 4j]))


# ----------------------------------------------------------------------------------------------- fetch


def _mixed() -> list[tuple[torch.Tensor, Any, type]]:
    # (tensor, exact Python value, Python type); values chosen so that rounding through float32 would show.
    return [
        (torch.tensor(0.1, dtype=torch.float32), float(np.float32(0.1)), float),
        (torch.tensor(2**53 + 1, dtype=torch.int64), 2**53 + 1, int),
        (torch.tensor(True), True, bool),
        (torch.tensor(1.5, dtype=torch.bfloat16), 1.5, float),
        (torch.tensor(0.1, dtype=torch.float64), 0.1, float),
    ]


def test_fetch_mixed_dtypes_exact() -> None:
    cases = _mixed()
    values = tt.fetch(*(t for t, _, _ in cases))
    assert values == tuple(v for _, v, _ in cases)
    assert [type(v) for v in values] == [tp for _, _, tp in cases]


def test_fetch_shapes_and_pass_through() -> None:
    w = torch.ones(1, 1, requires_grad=True)
    values = tt.fetch(w * 3, 4, 2.5, np.float32(0.5), np.int64(7), True)
    assert values == (3.0, 4, 2.5, 0.5, 7, True)
    assert [type(v) for v in values] == [float, int, float, float, int, bool]
    assert tt.fetch() == ()
    assert tt.fetch(torch.tensor(3)) == (3,)


@pytest.mark.parametrize(
    "order",
    [
        pytest.param([4, 1, 0, 3, 2], id="largest-first"),
        pytest.param(
            [0, 1, 2, 3, 4],
            id="float32-before-int64",
        ),
    ],
)
def test_fetch_packed_path_is_exact(order: list[int]) -> None:
    cases = [_mixed()[i] for i in order]
    fake = [t.as_subclass(FakeCuda) for t, _, _ in cases]
    assert all(t.device.type == "cuda" for t in fake)  # so fetch packs them
    values = tt.fetch(*fake)
    assert values == tuple(v for _, v, _ in cases)
    assert [type(v) for v in values] == [tp for _, _, tp in cases]


def test_fetch_rejects_multi_element_tensor() -> None:
    with pytest.raises(ValueError, match=r"fetch takes one-element tensors; argument 1 has shape \(2,\)"):
        tt.fetch(torch.ones(1), torch.ones(2))


def test_fetch_rejects_meta_tensor() -> None:
    with pytest.raises(ValueError, match="argument 0: it is a meta tensor and has no data"):
        tt.fetch(torch.empty(1, device="meta"))


@pytest.mark.parametrize(("value", "tname"), [("1.0", "str"), ([1.0], "list"), (None, "NoneType")])
def test_fetch_rejects_non_numbers(value: Any, tname: str) -> None:
    with pytest.raises(TypeError, match=rf"argument 1 is a {tname}\."):
        tt.fetch(1, value)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "order",
    [
        pytest.param([4, 1, 0, 3, 2], id="largest-first"),
        pytest.param(
            [0, 1, 2, 3, 4],
            id="float32-before-int64",
        ),
    ],
)
def test_fetch_cuda_single_copy_and_exact(order: list[int]) -> None:
    cases = [_mixed()[i] for i in order]
    tensors = [t.to("cuda") for t, _, _ in cases]
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = tt.fetch(*tensors)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    assert values == tuple(v for _, v, _ in cases)
    assert [type(v) for v in values] == [tp for _, _, tp in cases]


# ------------------------------------------------------------------------------------------------- pin


def test_pin_without_cuda_returns_the_same_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    batch = {"x": torch.ones(2), "y": [np.ones(1)]}
    assert tt.pin(batch) is batch


@pytest.mark.cuda
def test_pin_pins_cpu_tensors() -> None:
    batch = {"x": torch.ones(2), "y": [torch.ones(1)], "gpu": torch.ones(1, device="cuda")}
    out = tt.pin(batch)
    assert out["x"].is_pinned()
    assert out["y"][0].is_pinned()
    assert out["gpu"] is batch["gpu"]
    assert tt.pin(out)["x"] is out["x"]  # already pinned: left as is


# ------------------------------------------------------------------------------- device_of / named_tensors


def test_device_of() -> None:
    assert tt.device_of(nn.Linear(2, 2)) == CPU
    assert tt.device_of(tt.to_device(nn.Linear(2, 2), "meta")) == META
    assert tt.device_of(torch.ones(1, device="meta")) == META
    assert tt.device_of({"x": [torch.ones(1)], "n": 3}) == CPU


@pytest.mark.parametrize("obj", [{}, [], {"n": 1, "s": "text"}, None, np.ones(2)], ids=repr)
def test_device_of_without_tensors_is_none(obj: Any) -> None:
    assert tt.device_of(obj) is None


def test_device_of_mixed_devices() -> None:
    batch = {"a": torch.ones(1), "b": torch.ones(1, device="meta"), "c": torch.ones(1)}
    with pytest.raises(
        MixedDevicesError,
        match=r"found 2: cpu: 2 tensors \(e\.g\. \['a'\], \['c'\]\); "
        r"meta: 1 tensor \(e\.g\. \['b'\]\)",
    ) as info:
        tt.device_of(batch)
    assert isinstance(info.value, ValueError)


def test_device_of_model_half_moved() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].to("meta")
    with pytest.raises(MixedDevicesError, match=r"cpu: 2 tensors \(e\.g\. 0\.weight, 0\.bias\); meta: 2 tensors"):
        tt.device_of(model)


def test_named_tensors_paths() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    t = torch.ones(1)
    obj = {"model": model, "batch": [t, Pair(t, "y")], "cfg": Batch(t, t)}
    got = dict(tt.named_tensors(obj))
    expected_model = {f"['model'].{name}": p for name, p in model.named_parameters()}
    expected_model |= {f"['model'].{name}": b for name, b in model.named_buffers()}
    assert "['model'].0.weight" in expected_model
    assert "['model'].1.running_mean" in expected_model
    expected = expected_model | {
        "['batch'][0]": t,
        "['batch'][1].x": t,
        "['cfg'].x": t,
        "['cfg'].y": t,
    }
    assert got.keys() == expected.keys()
    assert all(got[k] is v for k, v in expected.items())


def test_named_tensors_of_a_tensor_and_a_batch_encoding() -> None:
    t = torch.ones(1)
    assert list(tt.named_tensors(t)) == [("", t)]
    assert list(tt.named_tensors(t, prefix="loss")) == [("loss", t)]
    assert list(tt.named_tensors(UserDict({"input_ids": t}))) == [("['input_ids']", t)]


def test_fetch_packed_path_reads_conjugate_and_negative_views() -> None:
    z = torch.tensor(1 + 2j, dtype=torch.complex64)
    views = [z.conj(), z.conj().imag]  # a conjugate view and a negative view: no plain bytes to reinterpret
    fake = [v.as_subclass(FakeCuda) for v in views]
    assert tt.fetch(*fake) == (1 - 2j, -2.0)
