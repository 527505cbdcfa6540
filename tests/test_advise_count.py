"""Counting a training step: exact FLOPs and bytes of hand-computed ops, kernels, and whole steps on fake tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tangtoc.advise.count import (
    CountError,
    StepCount,
    batch_size_of,
    count_calls,
    count_step,
    footprint,
    resize_batch,
    total,
)
from tangtoc.models import GPT, MLP, MLPConfig, gpt_config
from tangtoc.models.cnn import CNN, CNNConfig


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(("m", "k", "n"), [(64, 32, 16), (7, 5, 3)])
def test_one_matmul_counts_2mnk_flops_and_its_three_matrices_bytes(m: int, k: int, n: int, dtype: torch.dtype) -> None:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    calls = count_calls(lambda: a @ b)
    assert [c.op for c in calls] == ["aten.mm"]
    (call,) = calls
    itemsize = torch.tensor([], dtype=dtype).element_size()
    assert call.flops == 2 * m * n * k
    assert call.bytes == (m * k + k * n + m * n) * itemsize
    assert call.kernels == 1 and call.kind == "matmul" and call.dtype == str(dtype).removeprefix("torch.")


def test_addmm_counts_a_broadcast_bias_once() -> None:
    x, w, bias = torch.randn(10, 4), torch.randn(3, 4), torch.randn(3)
    (call,) = count_calls(lambda: F.linear(x, w, bias))
    assert call.op == "aten.addmm"
    assert call.flops == 2 * 10 * 4 * 3
    assert call.bytes == (3 + 10 * 4 + 4 * 3 + 10 * 3) * 4


def test_elementwise_op_moves_inputs_and_output_and_costs_no_flops() -> None:
    x, y = torch.randn(1000), torch.randn(1000)
    (call,) = count_calls(lambda: x + y)
    assert (call.op, call.kind, call.flops, call.bytes, call.kernels) == ("aten.add", "other", 0.0, 3 * 4000, 1)


def test_in_place_op_reads_and_writes_its_target() -> None:
    x, y = torch.randn(100), torch.randn(100)
    (call,) = count_calls(lambda: x.add_(y))
    assert call.bytes == 3 * 400  # reads x and y, writes x


def test_views_and_metadata_launch_no_kernel() -> None:
    x = torch.randn(4, 6)

    def views() -> None:
        x.view(6, 4).t().transpose(0, 1).reshape(24)[:5].detach()
        torch.empty(3)

    assert count_calls(views) == []
    flops, nbytes, kernels = total(count_calls(lambda: x.t().contiguous()))
    assert (flops, nbytes, kernels) == (0.0, 2 * 24 * 4, 1)  # the copy is the only kernel


@pytest.mark.parametrize(
    ("tensors", "numel", "expected"),
    [
        (6, 100, 1),  # a small model: one launch for every parameter
        (200, 10, 2),  # 110 tensors per launch at depth 1
        (3, 65536 * 320 * 2, 6),  # 640 chunks per tensor, 320 chunks per launch
    ],
)
def test_foreach_ops_launch_one_kernel_per_chunk_of_tensors(tensors: int, numel: int, expected: int) -> None:
    xs = [torch.zeros(numel, device="meta") for _ in range(tensors)]
    (call,) = count_calls(lambda: torch._foreach_add_(xs, 1.0))
    assert call.kernels == expected
    assert call.bytes == 2 * tensors * numel * 4  # in place, nothing returned: read and written


def test_footprint_counts_stored_elements() -> None:
    assert footprint(torch.zeros(3, 4)) == 48
    assert footprint(torch.zeros(4).expand(1000, 4)) == 16
    assert footprint(torch.zeros(0, 5)) == 0


def _mlp_batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, 32), torch.randint(0, 10, (b,))


def test_mlp_step_flops_are_exact() -> None:
    model = MLP(MLPConfig())
    count = count_step(model, _mlp_batch(64), loss_fn=F.cross_entropy)
    weights = [m.weight.numel() for m in model.net if isinstance(m, nn.Linear)]
    # Forward 2BW per layer, backward 2BW for the weight gradient and 2BW for the input gradient, except the
    # first layer, whose input needs none.
    assert count.flops == 64 * (6 * sum(weights) - 2 * weights[0])
    assert count.batch_size == 64 and count.batch_tensors == 2 and count.batch_bytes == 64 * 32 * 4 + 64 * 8
    assert count.params == sum(p.numel() for p in model.parameters())
    ops = {r.op for r in count.by_op()}
    assert {"aten.addmm", "aten.mm", "aten._fused_adamw_"} <= ops  # forward, backward and fit's AdamW (fused on CUDA)
    assert not any(c.op == "aten.zeros_like" for c in count.calls)  # optimizer state is made before counting


def test_cnn_step_flops_match_its_formula() -> None:
    model = CNN(CNNConfig(channels=(8, 16)))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    count = count_step(model, (x, y), loss_fn=F.cross_entropy)
    assert count.flops == pytest.approx(4 * model.flops_per_sample(), rel=1e-9)
    assert {c.kind for c in count.calls} >= {"conv", "matmul"}


def test_gpt_step_counts_fused_attention_and_about_its_flops_per_token() -> None:
    model = GPT(gpt_config("tiny"))
    idx = torch.randint(0, 256, (4, 32))
    count = count_step(model, (idx, idx))
    assert any(c.kind == "attention" and c.flops > 0 for c in count.calls)  # fused, as on CUDA, not the math path
    assert count.flops == pytest.approx(model.flops_per_token(32) * 4 * 32, rel=0.1)


def test_count_scales_with_the_batch_and_leaves_the_model_alone() -> None:
    model = MLP(MLPConfig())
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = count_step(model, _mlp_batch(8), loss_fn=F.cross_entropy)
    big = count_step(model, _mlp_batch(8), loss_fn=F.cross_entropy, batch_size=8 * 64)
    assert big.batch_size == 512 and big.flops == 64 * small.flops
    assert big.kernels == small.kernels  # launches do not grow with the batch; that is the point
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bf16_count_runs_matmuls_in_bfloat16_and_adds_casts() -> None:
    model = MLP(MLPConfig())
    fp32 = count_step(model, _mlp_batch(16), loss_fn=F.cross_entropy)
    bf16 = count_step(model, _mlp_batch(16), loss_fn=F.cross_entropy, precision="bf16")
    assert bf16.precision == "bf16" and bf16.flops == fp32.flops
    assert {c.dtype for c in bf16.calls if c.kind == "matmul"} == {"bfloat16"}
    assert any(c.op == "aten._to_copy" for c in bf16.calls)
    assert bf16.kernels > fp32.kernels


def test_batches_of_numpy_arrays_and_dicts_are_counted() -> None:
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(self.lin(x), y)

    batch = {"x": np.zeros((5, 4), dtype=np.float32), "y": torch.zeros(5, 2)}
    count = count_step(DictModel(), batch)
    assert isinstance(count, StepCount) and count.batch_size == 5 and count.flops > 0


def test_a_step_that_reads_values_cannot_be_counted() -> None:
    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.lin(x).mean()
            if out.item() > 0:  # data-dependent control flow
                return out
            return -out

    with pytest.raises(CountError, match=r"reads tensor values .*\.item\(\)"):
        count_step(Reads(), (torch.randn(3, 4),))


@pytest.mark.parametrize(
    ("batch", "loss_fn", "message"),
    [
        ((torch.randn(3, 4),), F.cross_entropy, r"a loss_fn trains on batches \(inputs, targets\), got a tuple of 1"),
        (["text"], None, "holds no tensor"),
        ((torch.tensor(1.0), torch.randn(3)), None, "first tensor is a scalar"),
    ],
)
def test_bad_batches_are_named(batch: object, loss_fn: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        count_step(nn.Linear(4, 2), batch, loss_fn=loss_fn)  # type: ignore[arg-type]


def test_loss_that_is_not_a_scalar_is_named() -> None:
    with pytest.raises(ValueError, match="must return the loss as a one-element tensor"):
        count_step(nn.Linear(4, 2), (torch.randn(3, 4), torch.zeros(3)), loss_fn=lambda out, y: out)


def test_batch_size_and_resizing() -> None:
    batch = {"x": torch.arange(12).reshape(4, 3), "scale": torch.tensor(2.0), "other": torch.zeros(7)}
    assert batch_size_of(batch) == 4
    small = resize_batch(batch, 4, 2)
    assert small["x"].tolist() == [[0, 1, 2], [3, 4, 5]] and small["other"].shape == (7,)
    big = resize_batch(batch, 4, 10)
    assert big["x"].shape == (10, 3) and big["x"][4:8].equal(batch["x"]) and big["scale"].item() == 2.0
    assert math.prod(resize_batch(torch.zeros(4, 2, device="meta"), 4, 64).shape) == 128
