"""Property test: to_device preserves any nested batch's structure, types and non-tensor leaves exactly.

In its own file because hypothesis is a dev extra: a machine without it (the GPU runner) still collects
the rest of the suite.
"""

from __future__ import annotations

import dataclasses
import types
from collections import OrderedDict, defaultdict, namedtuple
from typing import Any

import numpy as np
import pytest
import torch

import tangtoc as tt

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

META = torch.device("meta")
Pair = namedtuple("Pair", "first second")


@dataclasses.dataclass(frozen=True)
class Frozen:
    value: Any


_tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from([torch.float32, torch.int64, torch.bool, torch.bfloat16]),
)
_arrays = st.builds(
    lambda n, dtype: np.zeros(n, dtype=dtype), st.integers(0, 4), st.sampled_from([np.float64, np.int32, np.bool_])
)
_leaves = _tensors | _arrays | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5) | st.none()
_batches = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4), children, max_size=4)
        | st.dictionaries(st.text(max_size=4), children, max_size=4).map(OrderedDict)
        | st.dictionaries(st.text(max_size=4), children, max_size=4).map(lambda d: defaultdict(list, d))
        | st.builds(Pair, children, children)
        | st.builds(Frozen, children)
        | st.dictionaries(st.text(max_size=4), children, max_size=4).map(lambda d: types.SimpleNamespace(**d))
    ),
    max_leaves=20,
)


def assert_moved(orig: Any, moved: Any, float_dtype: torch.dtype | None = None) -> None:
    def want(dtype: torch.dtype) -> torch.dtype:
        return float_dtype if float_dtype is not None and dtype.is_floating_point else dtype

    if isinstance(orig, np.ndarray):  # the NumPy rule: a tensor of the same dtype and shape
        assert isinstance(moved, torch.Tensor) and moved.device == META
        assert moved.shape == orig.shape and moved.dtype == want(torch.from_numpy(orig).dtype)
        return
    assert type(moved) is type(orig)
    if isinstance(orig, torch.Tensor):
        assert moved.device == META and moved.shape == orig.shape and moved.dtype == want(orig.dtype)
        assert orig.device.type == "cpu"  # the input is left where it was
    elif isinstance(orig, dict):
        assert list(moved) == list(orig)
        if isinstance(orig, defaultdict):
            assert moved.default_factory is orig.default_factory
        for k in orig:
            assert_moved(orig[k], moved[k], float_dtype)
    elif isinstance(orig, (list, tuple)):
        assert len(moved) == len(orig)
        for a, b in zip(orig, moved, strict=True):
            assert_moved(a, b, float_dtype)
    elif isinstance(orig, Frozen):
        assert_moved(orig.value, moved.value, float_dtype)
    elif isinstance(orig, types.SimpleNamespace) and holds_data(orig):
        assert moved is not orig  # a copy: the caller's namespace keeps its own attributes
        assert_moved(vars(orig), vars(moved), float_dtype)
    else:
        assert moved is orig


def holds_data(obj: Any) -> bool:
    """Whether obj holds a tensor or an array anywhere, through the containers the strategy builds."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return True
    if isinstance(obj, types.SimpleNamespace):
        obj = vars(obj)
    if isinstance(obj, Frozen):
        return holds_data(obj.value)
    if isinstance(obj, dict):
        obj = list(obj.values())
    return isinstance(obj, (list, tuple)) and any(holds_data(x) for x in obj)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(_batches, st.sampled_from([None, torch.float32, torch.float16]))
def test_to_device_preserves_structure(batch: Any, float_dtype: torch.dtype | None) -> None:
    assert_moved(batch, tt.to_device(batch, "meta", float_dtype=float_dtype), float_dtype)
