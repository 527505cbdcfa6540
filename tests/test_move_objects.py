"""Tests of to_device on objects that hold tensors without a ``.to`` of their own (move.py's objects rule).

Every test checks both sides: the moved copy holds every tensor on the target, and the caller's object is
left as it was. ``meta`` is the second device.
"""

from __future__ import annotations

import argparse
import enum
import functools
import types
from collections import UserDict
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tangtoc as tt
from tangtoc.errors import MixedDevicesError

CPU = torch.device("cpu")
META = torch.device("meta")


class Layer:
    """A cache layer in the shape of transformers' DynamicLayer: tensors plus a record of their device."""

    def __init__(self, n: int) -> None:
        self.keys = torch.ones(n)
        self.values = torch.zeros(n)
        self.is_initialized = True
        self.device = self.keys.device
        self.dtype = self.keys.dtype


class Cache:
    def __init__(self, layers: int) -> None:
        self.layers = [Layer(i + 1) for i in range(layers)]
        self.offloading = False


class Slotted:
    __slots__ = ("__hidden", "x")

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.__hidden = torch.zeros(1)  # stored as _Slotted__hidden: the walker must mangle the name too


class NeedsArgs:
    def __new__(cls, x: torch.Tensor) -> NeedsArgs:
        obj = super().__new__(cls)
        obj.x = x
        return obj


class Color(enum.Enum):
    RED = 1


@pytest.mark.parametrize("make", [types.SimpleNamespace, argparse.Namespace], ids=["SimpleNamespace", "Namespace"])
def test_namespace_is_copied_with_every_tensor_moved(make) -> None:
    x, arr = torch.ones(2), np.arange(3, dtype=np.int32)
    ns = make(x=x, arr=arr, nested={"y": [torch.zeros(1)]}, name="batch0", n=3)
    out = tt.to_device(ns, "meta")
    assert type(out) is make
    assert out is not ns
    assert [p for p, t in tt.named_tensors(out) if t.device != META] == []
    assert (out.arr.device, out.arr.dtype) == (META, torch.int32)
    assert (out.name, out.n) == ("batch0", 3)
    # The caller's object is unchanged: same values, still on the CPU.
    assert ns.x is x and ns.arr is arr
    assert ns.nested["y"][0].device == CPU


def test_cache_like_object_moves_and_its_device_record_follows() -> None:
    cache = Cache(layers=2)
    out = tt.to_device({"past": cache, "ids": torch.ones(1)}, "meta")["past"]
    assert type(out) is Cache and type(out.layers[0]) is Layer
    for layer in out.layers:
        assert on_meta(layer.keys, layer.values)
        assert layer.device == META  # the record agrees with the tensors, or the object's own moves go wrong
        assert layer.dtype == torch.float32 and layer.is_initialized
    assert out.offloading is False
    assert all(layer.device == CPU and layer.keys.device == CPU for layer in cache.layers)


def test_float_dtype_updates_an_objects_floating_dtype_record() -> None:
    layer = Layer(2)
    layer.keys = layer.keys.double()
    layer.dtype = torch.float64
    layer.index_dtype = torch.int64
    out = tt.to_device(layer, "meta", float_dtype=torch.float32)
    assert (out.keys.dtype, out.dtype, out.index_dtype) == (torch.float32, torch.float32, torch.int64)
    assert layer.dtype == torch.float64


def test_devices_and_dtypes_outside_objects_are_data() -> None:
    batch = {"device": CPU, "dtype": torch.float64, "x": torch.ones(1)}
    out = tt.to_device(batch, "meta", float_dtype=torch.float32)
    assert out["device"] == CPU and out["dtype"] == torch.float64


def test_object_without_anything_to_move_is_returned_as_is() -> None:
    ns = types.SimpleNamespace(name="x", device=CPU, sizes=[1, 2])
    assert tt.to_device(ns, "meta") is ns


def test_cycle_and_shared_objects_are_copied_once() -> None:
    parent = types.SimpleNamespace(x=torch.ones(1))
    child = types.SimpleNamespace(parent=parent, y=torch.ones(1))
    parent.children = [child, child]
    out = tt.to_device(parent, "meta")
    assert out.children[0] is out.children[1]
    assert out.children[0].parent is out
    assert on_meta(out.x, out.children[0].y)
    assert parent.children[0].parent is parent and parent.x.device == CPU


def test_skip_keys_applies_to_object_attributes() -> None:
    keep = torch.ones(1)
    out = tt.to_device(types.SimpleNamespace(x=torch.ones(1), keep=keep), "meta", skip_keys=("keep",))
    assert out.keep is keep and out.x.device == META


def test_object_holding_a_module_is_refused() -> None:
    holder = types.SimpleNamespace(model=nn.Linear(2, 2), x=torch.ones(1))
    with pytest.raises(
        TypeError, match=r"cannot move a SimpleNamespace: it holds a model's modules or parameters \(\.model\)"
    ):
        tt.to_device(holder, "meta")
    assert holder.model.weight.device == CPU


def test_optimizer_is_refused_naming_the_parameters() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        TypeError, match=r"cannot move a SGD: .*\(\.param_groups\[0\]\['params'\]\[0\], .*load_state_dict"
    ):
        tt.to_device(opt, "meta")


def test_slotted_object_is_refused_naming_the_tensors() -> None:
    with pytest.raises(
        TypeError, match=r"cannot move a Slotted: it keeps attributes in __slots__.*\(\._Slotted__hidden, \.x\)"
    ):
        tt.to_device(Slotted(torch.ones(1)), "meta")


def test_object_whose_new_needs_arguments_is_refused() -> None:
    with pytest.raises(TypeError, match=r"cannot move a NeedsArgs holding tensors \(\.x\): NeedsArgs\.__new__ needs"):
        tt.to_device(NeedsArgs(torch.ones(1)), "meta")


def test_a_refused_walk_leaves_no_state_for_the_next_call() -> None:
    with pytest.raises(TypeError, match=r"NeedsArgs\.__new__ needs arguments"):
        tt.to_device(types.SimpleNamespace(inner=NeedsArgs(torch.ones(1))), "meta")
    # A fresh walk: the outer namespace is checked for modules again, not taken for an inner object.
    with pytest.raises(TypeError, match=r"cannot move a SimpleNamespace: it holds a model's modules"):
        tt.to_device(types.SimpleNamespace(model=nn.Linear(1, 1)), "meta")


def _f(x: torch.Tensor) -> torch.Tensor:
    return x


_f.cached = torch.ones(1)  # a function attribute: code, never walked


@pytest.mark.parametrize(
    "code", [_f, Layer, torch, functools.partial(_f, torch.ones(1)), Color.RED], ids=lambda c: type(c).__name__
)
def test_code_is_never_walked(code: Any) -> None:
    assert tt.to_device({"code": code}, "meta")["code"] is code


def test_named_tensors_and_device_of_see_object_attributes_and_slots() -> None:
    cache = Cache(layers=1)
    paths = [p for p, _ in tt.named_tensors({"past": cache})]
    assert paths == ["['past'].layers[0].keys", "['past'].layers[0].values"]
    assert [p for p, _ in tt.named_tensors(Slotted(torch.ones(1)))] == ["._Slotted__hidden", ".x"]
    cache.layers[0].values = cache.layers[0].values.to("meta")
    with pytest.raises(MixedDevicesError, match=r"cpu: 1 tensor \(e\.g\. \.layers\[0\]\.keys\); meta: 1 tensor"):
        tt.device_of(cache)


def test_user_dict_is_copied_not_moved_by_its_own_to() -> None:
    class Encoding(UserDict):
        def to(self, device: torch.device) -> Encoding:  # in place, like transformers' BatchEncoding
            raise AssertionError("to_device must not call the mapping's own .to: it changes the caller's object")

    enc = Encoding({"input_ids": torch.ones(2, dtype=torch.long), "meta": ["a", "b"]})
    enc.encodings = ["e0", "e1"]
    out = tt.to_device(enc, "meta")
    assert type(out) is Encoding and out is not enc
    assert out["input_ids"].device == META and out.encodings is enc.encodings
    assert enc["input_ids"].device == CPU


def on_meta(*tensors: torch.Tensor) -> bool:
    return all(t.device == META for t in tensors)
