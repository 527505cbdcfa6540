"""FLOP formulas beyond PyTorch's: recurrent layers against their closed form written out, and the ops a count cannot
see (uncounted, named, timed) as opposed to the memory-bound ones it rightly counts at 0 FLOPs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tangtoc.advise.count import count_calls, count_step
from tangtoc.advise.formulas import flops_of
from tangtoc.advise.measure import time_ops, time_uncounted
from tangtoc.models import GPT, MLP, MLPConfig, gpt_config
from tangtoc.models.cnn import CNN, CNNConfig

B, T, FEATURES, HIDDEN, CLASSES = 4, 7, 8, 16, 5
GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def gate_flops_per_token(gates: int, layers: int, directions: int, proj: int = 0) -> int:
    """Forward FLOPs of the gate matmuls for one token (one step of one sequence), all layers and directions.

    Per layer and direction: 2*G*H*I for the input (I: the features in the first layer, the layer below's output
    above it), 2*G*H*R for the previous hidden state (R: H, or proj_size), and 2*H*P for an LSTM's projection."""
    recurrent = proj or HIDDEN
    total = 0
    for layer in range(layers):
        layer_input = FEATURES if layer == 0 else recurrent * directions
        total += directions * (2 * gates * HIDDEN * (layer_input + recurrent) + 2 * HIDDEN * proj)
    return total


class Classifier(nn.Module):
    """A recurrent layer and a linear head on its last output, as a sequence classifier is written."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        width = (rnn.proj_size or rnn.hidden_size) * (2 if rnn.bidirectional else 1)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1] if self.rnn.batch_first else out[-1])


def _count(rnn: nn.RNNBase) -> tuple[float, set[str]]:
    x = torch.randn(B, T, FEATURES) if rnn.batch_first else torch.randn(T, B, FEATURES)
    count = count_step(Classifier(rnn), (x, torch.randint(0, CLASSES, (B,))), loss_fn=F.cross_entropy)
    return count.flops, {c.op for c in count.calls}


def _head_flops(rnn: nn.RNNBase) -> int:
    width = (rnn.proj_size or rnn.hidden_size) * (2 if rnn.bidirectional else 1)
    return 3 * 2 * B * width * CLASSES  # forward, and the gradients of its input and its weight


LSTM_SHAPES = [
    dict(batch_first=bf, bidirectional=bi, num_layers=layers)
    for bf, bi, layers in itertools.product((True, False), (False, True), (1, 2))
]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")
@pytest.mark.parametrize("shape", LSTM_SHAPES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_an_lstm_on_onednn_counts_its_gate_matmuls_forward_and_twice_backward(shape: dict) -> None:
    """The issue's case: nn.LSTM on the CPU is one oneDNN op per layer and direction, which PyTorch's counter
    counted as 0 FLOPs. Expected: the gate matmuls once forward, twice backward (data and weight gradients)."""
    lstm = nn.LSTM(FEATURES, HIDDEN, **shape)
    flops, ops = _count(lstm)
    assert "aten.mkldnn_rnn_layer" in ops and "aten.mkldnn_rnn_layer_backward" in ops
    directions = 2 if shape["bidirectional"] else 1
    forward = B * T * gate_flops_per_token(4, shape["num_layers"], directions)
    assert flops == 3 * forward + _head_flops(lstm)


def _decomposed_expected(rnn: nn.RNNBase) -> int:
    """PyTorch's per-step decomposition runs only the gradients autograd needs: not the first layer's input's
    (the data needs none) and not the initial hidden state's (a constant zero), in every layer and direction."""
    gates, directions = GATES[type(rnn)], 2 if rnn.bidirectional else 1
    recurrent = rnn.proj_size or HIDDEN
    forward = B * T * gate_flops_per_token(gates, rnn.num_layers, directions, rnn.proj_size)
    no_input_grad = directions * B * T * 2 * gates * HIDDEN * FEATURES
    no_h0_grad = rnn.num_layers * directions * B * 2 * gates * HIDDEN * recurrent
    return 3 * forward - no_input_grad - no_h0_grad + _head_flops(rnn)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.GRU(FEATURES, HIDDEN, batch_first=True),
        lambda: nn.GRU(FEATURES, HIDDEN, num_layers=2, bidirectional=True),
        lambda: nn.RNN(FEATURES, HIDDEN, nonlinearity="relu", batch_first=True),
        lambda: nn.LSTM(FEATURES, HIDDEN, proj_size=4, batch_first=True),  # oneDNN has no projection: decomposed
    ],
    ids=["gru", "gru-2-layers-bidirectional", "rnn-relu", "lstm-proj"],
)
def test_recurrent_layers_decomposed_per_step_are_counted_matmul_by_matmul(make: object) -> None:
    rnn = make()  # type: ignore[operator]
    flops, ops = _count(rnn)
    assert not any("rnn" in op for op in ops)  # one addmm/mm per step, which PyTorch's registry counts
    assert flops == _decomposed_expected(rnn)


def test_an_lstm_without_onednn_is_decomposed_and_counted_alike() -> None:
    with torch.backends.mkldnn.flags(enabled=False):
        lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        flops, ops = _count(lstm)
    assert "aten.mkldnn_rnn_layer" not in ops
    assert flops == _decomposed_expected(lstm)


def _cudnn_args(lstm: nn.LSTM, x: torch.Tensor, backward: bool, weight_grad: bool = True) -> tuple:
    """The arguments nn.LSTM passes to cuDNN's ops (their schemas), on meta tensors: no GPU needed."""
    w = [p.to("meta") for p in lstm._flat_weights]
    hx = torch.empty(lstm.num_layers, B, HIDDEN, device="meta")
    common = (2, HIDDEN, 0, lstm.num_layers, lstm.batch_first, 0.0, True, lstm.bidirectional, [], None)
    if not backward:  # _cudnn_rnn(input, weight, stride0, weight_buf, hx, cx, mode, hidden, proj, layers, ...)
        return (x, w, 4, None, hx, hx, *common)
    out = torch.empty(T, B, HIDDEN, device="meta")
    mask = [True, True, True, weight_grad]
    return (x, w, 4, None, hx, hx, out, out, hx, hx, *common, torch.empty(0, device="meta"), mask)


def test_cudnn_rnn_formula_is_the_same_closed_form() -> None:
    """What a CUDA run dispatches (one op for all layers), checked on the arguments it receives."""
    lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2)
    x = torch.empty(T, B, FEATURES, device="meta")
    forward = B * T * gate_flops_per_token(4, 2, 1)
    aten = torch.ops.aten
    assert flops_of(aten._cudnn_rnn.default, _cudnn_args(lstm, x, False), {}, None) == forward
    assert flops_of(aten._cudnn_rnn_backward.default, _cudnn_args(lstm, x, True), {}, None) == 2 * forward
    frozen = _cudnn_args(lstm, x, True, weight_grad=False)  # weights that need no gradient: the data part only
    assert flops_of(aten._cudnn_rnn_backward.default, frozen, {}, None) == forward
    packed = torch.empty(B * T - 5, FEATURES, device="meta")  # a packed batch: its real tokens only
    assert flops_of(aten._cudnn_rnn.default, _cudnn_args(lstm, packed, False), {}, None) == forward / (B * T) * (
        B * T - 5
    )


# -- what a count cannot see ---------------------------------------------------------------------------------------


class FNetMixing(nn.Module):
    """FNet's token mixing: the real part of a 2-D FFT where a transformer has attention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm, self.head = nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)  # so the FFT runs in the backward pass too
        return self.head(self.norm(x + torch.fft.fft2(x).real).mean(1))


FNET_BATCH = (torch.randn(B, T, 16), torch.randint(0, CLASSES, (B,)))


def test_an_op_without_a_formula_is_named_as_uncounted() -> None:
    count = count_step(FNetMixing(), FNET_BATCH, loss_fn=F.cross_entropy)
    [fft] = count.uncounted()
    assert fft.op == "aten._fft_c2c" and fft.calls == 2 and fft.bytes > 0 and not fft.counted  # forward, backward
    ops = {o["op"]: o for o in count.to_dict()["ops"]}
    assert ops["aten._fft_c2c"]["flops_counted"] is False and ops["aten.mm"]["flops_counted"] is True


@torch.library.custom_op("tangtoc_test::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    """A library's own kernel, as a custom op (flash-attn and torchvision register theirs so)."""
    return x * 2


@double.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def test_a_custom_op_of_another_namespace_is_a_kernel_whose_flops_are_not_counted() -> None:
    x = torch.ones(8)
    [call] = count_calls(lambda: double(x))
    assert (call.op, call.kernels, call.bytes, call.counted) == ("tangtoc_test.double", 1, 64.0, False)


def _lstm_text_classifier() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    class Text(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.lstm = nn.Embedding(50, 8), nn.LSTM(8, 16, batch_first=True)
            self.norm, self.drop, self.head = nn.LayerNorm(16), nn.Dropout(0.1), nn.Linear(16, CLASSES)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(self.embed(ids))
            return self.head(self.drop(self.norm(out[:, -1])))

    return Text(), (torch.randint(0, 50, (B, T)), torch.randint(0, CLASSES, (B,)))


def _conv_norms() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.GroupNorm(2, 8),
        nn.SiLU(),
        nn.Upsample(scale_factor=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )
    return net, (torch.randn(B, 3, 8, 8), torch.randint(0, CLASSES, (B,)))


def _encoder() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    net = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(), nn.Linear(16 * T, 5))
    return net, (torch.randn(B, T, 16), torch.randint(0, CLASSES, (B,)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: (MLP(MLPConfig()), (torch.randn(B, 32), torch.randint(0, 10, (B,)))),
        lambda: (CNN(CNNConfig()), (torch.randn(B, 3, 32, 32), torch.randint(0, 10, (B,)))),
        lambda: (GPT(gpt_config("tiny")), (torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))),
        _lstm_text_classifier,
        _conv_norms,
        _encoder,
    ],
    ids=["mlp", "cnn", "gpt", "lstm-text", "conv-norms", "transformer-encoder"],
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_memory_bound_ops_of_common_models_are_not_reported_as_uncounted(make: object, precision: str) -> None:
    """Elementwise ops, norms, pooling, embeddings, dropout, losses and the optimizer do no arithmetic worth a
    FLOP count: a report that named them would cry wolf on every model."""
    model, batch = make()  # type: ignore[operator]
    loss_fn = None if isinstance(model, GPT) else F.cross_entropy
    count = count_step(model, batch, loss_fn=loss_fn, precision=precision)
    assert count.uncounted() == [], [o.op for o in count.uncounted()]


class TickClock:
    """A clock that advances one second at every reading."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_time_ops_times_only_the_ops_asked_for_on_the_clock_given() -> None:
    # Each timed call reads the clock twice, one tick apart: seconds == calls, whatever the machine.
    seconds = time_ops(FNetMixing(), FNET_BATCH, ["aten._fft_c2c", "aten.no_such_op"], loss_fn=F.cross_entropy,
                       clock=TickClock())  # fmt: skip
    assert seconds == {"aten._fft_c2c": 2.0, "aten.no_such_op": 0.0}


def test_uncounted_ops_get_their_share_of_the_measured_cpu_step() -> None:
    model = FNetMixing()
    count = count_step(model, FNET_BATCH, loss_fn=F.cross_entropy)
    [fft] = time_uncounted(model, FNET_BATCH, count, 8.0, loss_fn=F.cross_entropy, clock=TickClock())
    assert (fft.op, fft.calls, fft.cpu_s, fft.share) == ("aten._fft_c2c", 2, 2.0, 0.25)
    [capped] = time_uncounted(model, FNET_BATCH, count, 1.0, loss_fn=F.cross_entropy, clock=TickClock())
    assert capped.share == 1.0  # one timed step against a median: never more than the whole step
    mlp = MLP(MLPConfig())
    batch = (torch.randn(B, 32), torch.randint(0, 10, (B,)))
    assert time_uncounted(mlp, batch, count_step(mlp, batch, loss_fn=F.cross_entropy), 1.0) == ()  # nothing runs


ACTIVATIONS = [
    torch.nn.ReLU6,  # MobileNetV2
    torch.nn.Hardswish,  # MobileNetV3
    torch.nn.Hardsigmoid,  # MobileNetV3's squeeze-excitation
    torch.nn.LeakyReLU,  # GANs
    torch.nn.ELU,
    torch.nn.SELU,
    torch.nn.Softplus,
    torch.nn.Mish,  # YOLOv4
    torch.nn.PReLU,
    torch.nn.LogSigmoid,
    torch.nn.Softshrink,
]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.__name__)
def test_elementwise_activations_and_their_backward_are_not_reported_as_uncounted(activation: type) -> None:
    # advise told users "no FLOP formula for aten.hardswish_backward: the predictions are too fast" for every
    # MobileNet: these ops are elementwise, bound by the bytes the count already has.
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), activation(), torch.nn.Linear(8, 3))
    batch = (torch.randn(4, 8), torch.randint(0, 3, (4,)))
    count = count_step(net, batch, loss_fn=torch.nn.functional.cross_entropy)
    assert count.uncounted() == [], [o.op for o in count.uncounted()]


def test_glu_and_a_margin_loss_are_not_reported_as_uncounted() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GLU(), torch.nn.Linear(4, 3))
    batch = (torch.randn(4, 8), torch.randint(0, 3, (4,)))
    count = count_step(net, batch, loss_fn=torch.nn.functional.multi_margin_loss)
    assert count.uncounted() == [], [o.op for o in count.uncounted()]
