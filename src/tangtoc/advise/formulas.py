"""Which ATen ops do arithmetic worth counting, how many FLOPs each does, and which ones the count cannot see.

PyTorch's FLOP counter (``torch.utils.flop_counter``'s registry) has formulas for matmuls, convolutions and
attention. :func:`flops_of` uses them, and adds

* the CPU's fused attention, which fake CPU tensors run where CUDA runs flash / memory-efficient attention (its
  arguments start like the CUDA kernels', and the registry's formulas read only those shapes);
* **recurrent layers** that run as one op: oneDNN's ``mkldnn_rnn_layer`` (what ``nn.LSTM`` runs on the CPU, one
  call per layer and direction), cuDNN's ``_cudnn_rnn`` and MIOpen's ``miopen_rnn`` (``nn.LSTM``/``GRU``/``RNN``
  on GPUs, one call for all layers). ``nn.GRU``, ``nn.RNN`` and ``nn.LSTM(proj_size=...)`` on the CPU are
  decomposed by PyTorch into one ``addmm``/``mm`` per time step, which the registry already counts.

The recurrent formula, for one layer and direction of ``T`` steps over a batch of ``B``, with ``G`` gates (4 for
LSTM, 3 for GRU, 1 for a plain RNN), hidden size ``H``, layer input size ``I`` (the input's features in the first
layer, ``H x directions`` above it) and recurrent size ``R`` (``H``, or ``proj_size`` for a projected LSTM):

* forward, the gate matmuls of every step: ``2*B*G*H*I`` (input) ``+ 2*B*G*H*R`` (hidden) ``+ 2*B*P*H`` (the
  projection ``W_hr``, LSTM with ``proj_size=P`` only); that is ``2 * T * B * (sum of the layer's weight
  matrices' elements)``, which is how it is computed (from the weights the op receives, so it holds for every
  layer, direction and mode alike). ``T * B`` is the input's elements over its last dimension, which also counts
  a packed sequence's real tokens;
* backward: the same matmuls transposed, once for the gradient of the layer's input and previous hidden state and
  once for the weights' gradient: **2x the forward**. cuDNN computes the weights' gradient only when asked
  (``output_mask[3]``); the data gradient always (it needs it for the weights').

The gates' elementwise arithmetic (sigmoid, tanh, products: O(G*H) per step against O(G*H*(I+R))) is not counted,
as no elementwise op's is: those ops are bound by memory, and their bytes are what the roofline uses.

Any other op without a formula is either known to do no arithmetic worth counting (:func:`flop_free`:
elementwise, reductions, copies, indexing, normalisations, pooling, losses, the optimizer's updates) or
**uncounted**: its FLOPs are missing from the count (an FFT, a decomposition, a custom op), and the report names it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten


def aten_ops(*names: str) -> frozenset[Any]:
    """The ``aten`` op packets of these names that this PyTorch has."""
    # By name, skipping any this PyTorch lacks: the set of attention kernels grows from release to release, and
    # importing tangtoc must not fail on an older one.
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


MATMUL_OPS = aten_ops("mm", "addmm", "bmm", "baddbmm", "_scaled_mm")
CONV_OPS = aten_ops(
    "convolution",
    "_convolution",
    "convolution_backward",
    "cudnn_convolution",
    "_slow_conv2d_forward",
    "convolution_overrideable",
)
ATTENTION_OPS = aten_ops(
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_cudnn_attention_backward",
    "_flash_attention_forward",
    "_flash_attention_backward",
    "_efficient_attention_forward",
    "_efficient_attention_backward",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
)
RNN_OPS = aten_ops(
    "mkldnn_rnn_layer",
    "mkldnn_rnn_layer_backward",
    "_cudnn_rnn",
    "_cudnn_rnn_backward",
    "miopen_rnn",
    "miopen_rnn_backward",
)


def kind_of(packet: Any) -> str:
    """``"matmul"``, ``"conv"``, ``"attention"``, ``"rnn"`` or ``"other"``: what peak rate bounds the op."""
    if packet in MATMUL_OPS:
        return "matmul"
    if packet in CONV_OPS:
        return "conv"
    if packet in ATTENTION_OPS:
        return "attention"
    if packet in RNN_OPS:
        return "rnn"
    return "other"


def _registry() -> dict[Any, Callable[..., int]]:
    formulas = dict(flop_registry)
    for cpu, cuda in (
        ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward"),
    ):
        if hasattr(aten, cpu) and hasattr(aten, cuda) and getattr(aten, cuda) in flop_registry:
            formulas.setdefault(getattr(aten, cpu), flop_registry[getattr(aten, cuda)])
    return formulas


_REGISTRY = _registry()


# -- recurrent layers (see the module docstring for the derivation) ----------------------------------------------


def _tokens(x: torch.Tensor) -> int:
    """T x B of a recurrent layer's input: (T, B, I), (B, T, I) or a packed (sum of lengths, I)."""
    return x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0


def _matrices(weights: Any) -> int:
    """Elements of the weight matrices among ``weights`` (biases, 1-D, do no matmul)."""
    return sum(w.numel() for w in weights if isinstance(w, torch.Tensor) and w.dim() == 2)


def _rnn_forward(a: Mapping[str, Any]) -> float:
    if "weight" in a:  # cuDNN, MIOpen: every layer's and direction's weights in one list
        return 2.0 * _tokens(a["input"]) * _matrices(a["weight"])
    return 2.0 * _tokens(a["input"]) * _matrices((a["weight0"], a["weight1"]))  # oneDNN: one layer, one direction


def _rnn_backward(a: Mapping[str, Any]) -> float:
    if "weight" in a:
        forward = 2.0 * _tokens(a["input"]) * _matrices(a["weight"])
        return forward * (2 if a["output_mask"][3] else 1)  # the data gradient always, the weights' when asked
    return 2 * 2.0 * _tokens(a["input"]) * _matrices((a["weight1"], a["weight2"]))  # oneDNN computes both


_RNN_FORMULAS: dict[Any, Callable[[Mapping[str, Any]], float]] = {
    packet: _rnn_backward if packet.__name__.endswith("_backward") else _rnn_forward for packet in RNN_OPS
}


def flops_of(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> float | None:
    """FLOPs of one dispatched op, or ``None`` when no formula covers it."""
    packet = func.overloadpacket
    formula = _REGISTRY.get(packet)
    if formula is not None:
        return float(formula(*args, **kwargs, out_val=out))
    rnn = _RNN_FORMULAS.get(packet)
    if rnn is not None:
        named = {arg.name: value for arg, value in zip(func._schema.arguments, args, strict=False)}
        return rnn({**named, **kwargs})
    return None


# -- ops that do no arithmetic worth counting ---------------------------------------------------------------------

# Families of ATen ops whose cost is the memory they move, not arithmetic: creation and copies, layout, indexing,
# normalisations, pooling and resampling, activations, softmax and losses, random numbers, the optimizers' fused
# updates and the fused RNN cells' gate math. Ops tagged pointwise or reduction are recognised by their tags.
_FLOP_FREE = re.compile(
    r"_?(foreach|fused|amp)_\w+"
    r"|\w*(copy|clone|contiguous|fill|zero|zeros|ones|full|empty|arange|linspace|scalar_tensor|lift)\w*"
    r"|\w*(cat|stack|split|chunk|repeat|expand|pad|flip|roll|tril|triu|unfold_backward)\w*"
    r"|\w*(index|gather|scatter|take|masked|where|embedding|one_hot|select|slice|narrow|diagonal)\w*"
    r"|\w*(norm|softmax|nll_loss|cross_entropy|mse_loss|l1_loss|smooth_l1|huber|binary_cross|kl_div)\w*"
    r"|\w*(pool|upsample|interpolate|pixel_shuffle|pixel_unshuffle|grid_sampler|im2col|col2im)\w*"
    r"|\w*(rand|normal|uniform|bernoulli|dropout|multinomial|exponential|geometric|cauchy|log_normal)\w*"
    r"|\w*(sort|topk|kthvalue|argmax|argmin|max|min|sum|mean|var|std|cumsum|cumprod|logsumexp|all|any)\w*"
    r"|\w*(clamp|threshold|sign|abs|neg|to_copy|local_scalar|assert|thnn_fused_\w+_cell|resize|alias)\w*"
    r"|_?(to|detach|set|unique|nonzero|bincount|histc|count_nonzero|equal|allclose|isin|searchsorted)\w*"
    # Elementwise activations (and their backward) that carry no pointwise tag: ReLU6, Hardswish, LeakyReLU...
    r"|_?(hardtanh|hardswish|hardsigmoid|leaky_relu|elu|softplus|mish|prelu_kernel|rrelu_with_noise|glu)\w*"
    r"|(log_sigmoid|softshrink|hardshrink|multi_margin_loss|multilabel_margin_loss|soft_margin_loss)\w*"
)


@functools.cache  # per op overload: a step dispatches the same few dozen thousands of times
def flop_free(func: Any) -> bool:
    """Whether ``func`` is known to do no arithmetic worth counting (its bytes are its cost)."""
    tags = getattr(func, "tags", ())
    if torch.Tag.pointwise in tags or torch.Tag.reduction in tags:
        return True
    return func.namespace in ("aten", "prims") and _FLOP_FREE.fullmatch(func.overloadpacket.__name__) is not None


__all__ = [
    "ATTENTION_OPS",
    "CONV_OPS",
    "MATMUL_OPS",
    "RNN_OPS",
    "aten_ops",
    "flop_free",
    "flops_of",
    "kind_of",
]
