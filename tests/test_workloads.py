"""The built-in workloads: one copy in the library, each trainable by the one step, every wrong name refused."""

from __future__ import annotations

import pytest
import torch

from tangtoc.step import LossRule, batch_size_of
from tangtoc.workloads import SIZES, example, training


@pytest.mark.parametrize("name", list(SIZES))
def test_each_example_is_one_step_of_its_model(name: str) -> None:
    work = example(name, batch_size=2)
    assert batch_size_of(work.batch) == 2 and work.description.startswith(name)
    loss = LossRule(work.loss_fn).first(work.model, work.batch)
    assert loss.dim() == 0 and loss.requires_grad
    again = example(name, batch_size=2)  # seeded: the same model and batch every time
    assert torch.equal(LossRule(again.loss_fn).first(again.model, again.batch), loss)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: example("rnn"), "unknown workload 'rnn'; the built-in ones are: mlp, cnn, gpt"),
        (lambda: example("cnn", "huge"), "unknown cnn size 'huge'; the sizes are: small, large"),
        (lambda: example("gpt", batch_size=0), "batch_size must be an int >= 1, got 0"),
        (lambda: training("cnn", "small", torch.device("cpu")), "unknown workload 'cnn'; the built-in ones are: gpt"),
        (lambda: training("mlp", "tiny", torch.device("cpu"), data="x.txt"), "mlp trains on synthetic"),
    ],
)
def test_wrong_names_list_the_choices(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_training_data_is_resident_and_batched() -> None:
    work = training("gpt", "tiny", torch.device("cpu"), batch_size=4, max_bytes=20_000)
    x, y = next(iter(work.train))
    assert x.shape == y.shape and x.shape[0] == 4 and work.loss_fn is None and "windows of" in work.data
    mlp = training("mlp", "tiny", torch.device("cpu"))
    xb, _ = next(iter(mlp.val))
    assert xb.shape[0] == 256 and mlp.loss_fn is not None
