"""to_device on batches whose shape a walker can trip on: cycles, nesting past the recursion limit, iterators
that would be consumed, and container subclasses whose constructor takes other arguments (issue 13 item 14).

Each one is either moved faithfully or refused with an error that names the place and the fix, never a bare
``RecursionError``/``TypeError`` and never a silent pass-through. ``meta`` is the second device.
"""

from __future__ import annotations

import collections
import itertools
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import tangtoc as tt
from tangtoc.errors import BatchStructureError, TangtocError, UnmovableError

META = torch.device("meta")


def _list_cycle() -> Any:
    batch: list[Any] = [torch.ones(1)]
    batch.append(batch)
    return batch


def _dict_cycle() -> Any:
    inner: dict[str, Any] = {"x": torch.ones(1)}
    batch = {"input": inner, "extra": [0, 1]}
    inner["parent"] = batch
    return batch


@dataclass
class Node:
    x: torch.Tensor
    children: list[Any]


def _dataclass_cycle() -> Any:
    node = Node(torch.ones(1), [])
    node.children.append(node)
    return node


def _cycle_inside_an_object() -> Any:
    items: list[Any] = [torch.ones(1)]
    items.append(items)
    return {"cache": types.SimpleNamespace(items=items)}


@pytest.mark.parametrize(
    ("build", "where"),
    [
        (_list_cycle, "batch[1] is batch"),
        (_cycle_inside_an_object, "batch['cache'].items[1] is batch['cache'].items"),
        (_dict_cycle, "batch['input']['parent'] is batch"),
        (_dataclass_cycle, "batch.children[0] is batch"),
    ],
)
def test_a_cycle_is_refused_naming_the_path(build: Any, where: str) -> None:
    batch = build()
    message = rf"the batch contains itself: {re.escape(where)}\b.*skip_keys"
    with pytest.raises(BatchStructureError, match=message):
        tt.to_device(batch, "meta")
    with pytest.raises(BatchStructureError, match=message):  # the other walkers share the check
        tt.to_cpu(batch)
    with pytest.raises(BatchStructureError, match=message):
        tt.device_of(batch)
    assert issubclass(BatchStructureError, (TangtocError, ValueError))


def test_a_cycle_skipped_by_skip_keys_moves() -> None:
    batch = _dict_cycle()
    out = tt.to_device(batch, "meta", skip_keys=("parent",))
    assert out["input"]["x"].device == META and out["input"]["parent"] is batch


@pytest.mark.parametrize("share", [0.7, 1.1])  # 0.7: the walk overflows, the path-naming walk does not
def test_nesting_past_the_recursion_limit_says_so(share: float) -> None:
    batch: Any = torch.ones(1)
    for _ in range(int(sys.getrecursionlimit() * share)):
        batch = [batch]
    with pytest.raises(BatchStructureError, match=r"nested deeper than Python's recursion limit \(\d+\).*Flatten"):
        tt.to_device(batch, "meta")


def test_a_recursion_error_from_a_leaf_is_not_blamed_on_the_batch() -> None:
    class Endless:
        def to(self, *args: Any, **kwargs: Any) -> Any:
            return self.to(*args, **kwargs)

    with pytest.raises(RecursionError) as info:
        tt.to_device({"x": Endless()}, "meta")
    assert not isinstance(info.value, TangtocError)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda ts: (t for t in ts), "generator"),
        (lambda ts: map(lambda t: t, ts), "map"),
        (lambda ts: iter(ts), "list_iterator"),
        (lambda ts: zip(ts, ts, strict=True), "zip"),
        (lambda ts: itertools.chain(ts), "chain"),
    ],
)
def test_an_iterator_is_refused_not_passed_through(make: Any, name: str) -> None:
    with pytest.raises(UnmovableError, match=rf"cannot move a {name} at batch\['xs'\]: .*without consuming it.*list\("):
        tt.to_device({"xs": make([torch.ones(1), torch.ones(2)])}, "meta")
    assert issubclass(UnmovableError, TypeError)


def test_an_iterator_refused_is_not_consumed() -> None:
    gen = (t for t in [torch.ones(1), torch.ones(2)])
    with pytest.raises(UnmovableError):
        tt.to_device([gen], "meta")
    assert next(gen).shape == (1,)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda t: collections.deque([t]), "deque"),
        (lambda t: {"t": t}.values(), "dict_values"),
        (lambda t: {"t": t}.items(), "dict_items"),
    ],
)
def test_a_container_it_cannot_rebuild_is_refused_when_it_holds_tensors(make: Any, name: str) -> None:
    with pytest.raises(UnmovableError, match=rf"cannot move a {name} at batch\['x'\]: it holds tensors.*list\("):
        tt.to_device({"x": make(torch.ones(1))}, "meta")
    kept = collections.deque(["a", "b"])
    assert tt.to_device({"x": kept}, "meta")["x"] is kept  # nothing to move: kept, as before


def test_an_open_file_is_not_taken_for_an_iterator(tmp_path: Path) -> None:
    with (tmp_path / "log.txt").open("w") as log:
        out = tt.to_device({"log": log, "x": torch.ones(1)}, "meta")
    assert out["log"] is log and out["x"].device == META


class Pair(list):
    """A list subclass whose constructor takes the items one by one, not an iterable."""

    def __init__(self, first: Any, second: Any) -> None:
        super().__init__([first, second])
        self.label = "pair"


class Point(tuple):
    def __new__(cls, x: Any, y: Any) -> Point:
        return super().__new__(cls, (x, y))


class Tags(set):
    def __init__(self, *tags: Any) -> None:
        super().__init__(tags)


def test_list_and_tuple_subclasses_with_other_constructors_are_rebuilt() -> None:
    pair = Pair(torch.ones(1), torch.zeros(2))
    out = tt.to_device({"pair": pair, "point": Point(torch.ones(1), 3)}, "meta")
    assert type(out["pair"]) is Pair and out["pair"].label == "pair"
    assert [t.device for t in out["pair"]] == [META, META]
    assert pair[0].device == torch.device("cpu")  # the caller's list is left as it was
    assert type(out["point"]) is Point and out["point"][0].device == META and out["point"][1] == 3
    tags = tt.to_device(Tags("a", "b"), "meta")
    assert type(tags) is Tags and tags == {"a", "b"}


def test_a_c_sequence_holding_nothing_to_move_is_kept() -> None:
    # sys.version_info's type can be neither called nor made with tuple.__new__; it holds only ints and strings.
    out = tt.to_device({"python": sys.version_info, "x": torch.ones(1)}, "meta")
    assert out["python"] is sys.version_info and out["x"].device == META
