"""What an operation's argument *is* in the user's terms, and what usually put it on the wrong device.

PyTorch's device errors name internal arguments: ``mat1`` of ``addmm`` is the input of a Linear layer,
``index`` of ``index_select`` was an Embedding's token ids before PyTorch 1.7 gave Embedding its own
kernel. This table translates both the aten names (from error messages) and the Python API names (which
:func:`~tangtoc.diagnose.device_guard` sees) into what a user would recognise, and :func:`likely_cause`
turns a role and the two devices into the most likely cause and its fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# What kind of thing an argument is decides the cause: data that was not moved, a layer's own tensors
# that were not moved, a loss's class weights, an RNN's initial state, an optimizer's state...
RoleKind = Literal["input", "weights", "target", "loss-weights", "index", "mask", "hidden", "state", "operand"]


@dataclass(frozen=True, slots=True)
class Role:
    """An argument of an operation, in user terms."""

    term: str
    kind: RoleKind


@dataclass(frozen=True, slots=True)
class OpInfo:
    """An operation as a user would describe it, and the roles of its arguments."""

    description: str
    args: dict[str, Role]


def _linear(layer: str) -> dict[str, Role]:
    return {
        "input": Role(f"the input of {layer} (activations, or your batch)", "input"),
        "weight": Role(f"the weight of {layer}", "weights"),
        "bias": Role(f"the bias of {layer}", "weights"),
    }


_LINEAR = _linear("a Linear layer")
_CONV = {
    **_linear("a Conv layer"),
    "input": Role("the input of a Conv layer (an image batch or a feature map)", "input"),
    "self": Role("the input of a Conv layer (an image batch or a feature map)", "input"),
}
_NORM = {
    "input": Role("the input of a normalization layer", "input"),
    "weight": Role("the weight of a normalization layer", "weights"),
    "bias": Role("the bias of a normalization layer", "weights"),
    "running_mean": Role("BatchNorm's running mean (a buffer)", "weights"),
    "running_var": Role("BatchNorm's running variance (a buffer)", "weights"),
}
_LOSS = {
    "input": Role("the model's output given to the loss (logits or log-probabilities)", "input"),
    "self": Role("the model's output given to the loss (logits or log-probabilities)", "input"),
    "target": Role("the labels (targets) given to the loss", "target"),
    "weight": Role("the class weights of the loss (e.g. CrossEntropyLoss(weight=...))", "loss-weights"),
    "pos_weight": Role("the pos_weight of BCEWithLogitsLoss", "loss-weights"),
}
_EMBEDDING = {
    "weight": Role("the embedding table (an Embedding layer's weight)", "weights"),
    "input": Role("the token ids fed to an Embedding layer", "index"),
    "indices": Role("the token ids fed to an Embedding layer", "index"),
    "offsets": Role("the offsets of an EmbeddingBag", "index"),
}
_INDEXING = {
    "self": Role("the tensor being indexed", "operand"),
    "input": Role("the tensor being indexed", "operand"),
    "index": Role("the index tensor", "index"),
    "indices": Role("the index tensor", "index"),
    "idx": Role("the index tensor", "index"),
    "values": Role("the values being written", "operand"),
    "src": Role("the values being written", "operand"),
}
_MATMUL = {
    "self": Role("the left operand of a matrix product (for a Linear layer without bias: its input)", "input"),
    "input": Role("the left operand of a matrix product (for a Linear layer without bias: its input)", "input"),
    "mat1": Role("the left operand of a matrix product", "input"),
    "mat2": Role("the right operand of a matrix product (for a Linear layer: its weight)", "weights"),
    "other": Role("the right operand of a matrix product (for a Linear layer: its weight)", "weights"),
}
_ATTENTION = {
    "query": Role("the attention query", "input"),
    "key": Role("the attention key", "input"),
    "value": Role("the attention value", "input"),
    "attn_mask": Role("the attention mask", "mask"),
    "key_padding_mask": Role("the key padding mask", "mask"),
    "in_proj_weight": Role("the input projection weight of MultiheadAttention", "weights"),
    "in_proj_bias": Role("the input projection bias of MultiheadAttention", "weights"),
    "out_proj_weight": Role("the output projection weight of MultiheadAttention", "weights"),
    "out_proj_bias": Role("the output projection bias of MultiheadAttention", "weights"),
}
_RNN = {
    "input": Role("the input sequence of an RNN/LSTM/GRU", "input"),
    "data": Role("the input sequence of an RNN/LSTM/GRU", "input"),
    "hx": Role("the initial hidden state (h0, c0) of an RNN/LSTM/GRU", "hidden"),
    "hidden": Role("the initial hidden state (h0, c0) of an RNN/LSTM/GRU", "hidden"),
    "params": Role("the weights of an RNN/LSTM/GRU", "weights"),
    "parameter": Role("the weights of an RNN/LSTM/GRU", "weights"),
    "weight": Role("the weights of an RNN/LSTM/GRU", "weights"),
}
_OPERANDS = {
    name: Role("an operand of an elementwise operation", "operand")
    for name in ("self", "input", "other", "x", "y", "tensor1", "tensor2")
}

OPS: dict[str, OpInfo] = {
    "linear": OpInfo("a Linear layer (input @ weight.T + bias)", _LINEAR),
    "addmm": OpInfo(
        "the matrix multiply of a Linear layer (input @ weight.T + bias)",
        {"self": _LINEAR["bias"], "mat1": _LINEAR["input"], "mat2": Role("the weight of a Linear layer", "weights")},
    ),
    "mm": OpInfo("a matrix product (a @ b, or a Linear layer without bias)", _MATMUL),
    "matmul": OpInfo("a matrix product (a @ b)", _MATMUL),
    "bmm": OpInfo("a batched matrix product (e.g. attention scores)", _MATMUL),
    "baddbmm": OpInfo("a batched matrix product (e.g. attention scores)", _MATMUL),
    "embedding": OpInfo("an Embedding lookup", _EMBEDDING),
    "embedding_bag": OpInfo("an EmbeddingBag lookup", _EMBEDDING),
    "index_select": OpInfo(
        "an index_select (before PyTorch 1.7, every Embedding lookup)",
        {
            "self": Role("the tensor indexed (in old PyTorch: an Embedding's table)", "weights"),
            "index": Role("the indices (in old PyTorch: the token ids fed to an Embedding)", "index"),
        },
    ),
    "convolution": OpInfo("a convolution (a Conv layer)", _CONV),
    "layer_norm": OpInfo("a LayerNorm", _NORM),
    "batch_norm": OpInfo("a BatchNorm", _NORM),
    "group_norm": OpInfo("a GroupNorm", _NORM),
    "nll_loss": OpInfo("a classification loss (CrossEntropyLoss / NLLLoss)", _LOSS),
    "binary_cross_entropy": OpInfo("a binary cross-entropy loss (BCELoss / BCEWithLogitsLoss)", _LOSS),
    "regression_loss": OpInfo("a regression loss (MSELoss, L1Loss, SmoothL1Loss, HuberLoss)", _LOSS),
    "index": OpInfo("an indexing operation (x[idx])", _INDEXING),
    "gather": OpInfo("a gather/scatter", _INDEXING),
    "cat": OpInfo(
        "a concatenation (torch.cat / torch.stack)", {"tensors": Role("one of the tensors joined", "operand")}
    ),
    "where": OpInfo(
        "torch.where",
        {"condition": Role("the condition (a mask)", "mask"), **_OPERANDS},
    ),
    "masked_fill": OpInfo(
        "a masked_fill (typically applying an attention or padding mask)",
        {"mask": Role("the mask (an attention or padding mask)", "mask"), **_OPERANDS},
    ),
    "attention": OpInfo("attention (scaled_dot_product_attention / MultiheadAttention)", _ATTENTION),
    "rnn": OpInfo("a recurrent layer (RNN / LSTM / GRU)", _RNN),
    "optimizer": OpInfo(
        "an optimizer update (a foreach or fused kernel over all parameters)",
        {name: Role("an optimizer's state or the gradients", "state") for name in ("self", "tensors", "other")},
    ),
    "elementwise": OpInfo("an elementwise operation (+, -, *, /, comparisons, ...)", _OPERANDS),
}

# Every other spelling of an operation: aten kernel names (with their legacy TH/THNN prefixes stripped),
# Python API names, and the dunder methods of Tensor.
_ALIASES = {
    **dict.fromkeys(
        (
            "conv1d",
            "conv2d",
            "conv3d",
            "conv_transpose1d",
            "conv_transpose2d",
            "conv_transpose3d",
            "_convolution",
            "cudnn_convolution",
            "slow_conv2d_forward",
            "_slow_conv2d_forward",
            "conv2d_forward",
            "thnn_conv2d_forward",
            "slow_conv3d_forward",
            "mkldnn_convolution",
            "miopen_convolution",
            "_conv_depthwise2d",
            "convolution_overrideable",
            "cudnn_convolution_transpose",
            "slow_conv_transpose2d",
        ),
        "convolution",
    ),
    **dict.fromkeys(("native_layer_norm", "rms_norm", "_fused_rms_norm"), "layer_norm"),
    **dict.fromkeys(
        (
            "native_batch_norm",
            "_native_batch_norm_legit",
            "cudnn_batch_norm",
            "batch_norm_elemt",
            "_batch_norm_impl_index",
            "miopen_batch_norm",
        ),
        "batch_norm",
    ),
    "native_group_norm": "group_norm",
    **dict.fromkeys(
        ("nll_loss_forward", "nll_loss2d_forward", "nll_loss_nd", "nll_loss2d", "cross_entropy", "cross_entropy_loss"),
        "nll_loss",
    ),
    "binary_cross_entropy_with_logits": "binary_cross_entropy",
    **dict.fromkeys(("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"), "regression_loss"),
    **dict.fromkeys(
        (
            "index_put",
            "index_put_",
            "_index_put_impl_",
            "_unsafe_index",
            "_unsafe_index_put",
            "__getitem__",
            "__setitem__",
            "index_add",
            "index_copy",
            "index_fill",
        ),
        "index",
    ),
    **dict.fromkeys(("scatter", "scatter_add", "scatter_reduce", "take_along_dim"), "gather"),
    **dict.fromkeys(("stack", "hstack", "vstack", "concat", "concatenate", "_cat"), "cat"),
    "masked_fill_": "masked_fill",
    **dict.fromkeys(
        (
            "scaled_dot_product_attention",
            "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_attention_math",
            "_scaled_dot_product_cudnn_attention",
            "multi_head_attention_forward",
            "_native_multi_head_attention",
        ),
        "attention",
    ),
    **dict.fromkeys(
        (
            "lstm",
            "gru",
            "rnn_tanh",
            "rnn_relu",
            "_cudnn_rnn",
            "lstm_cell",
            "gru_cell",
            "_thnn_fused_lstm_cell",
            "miopen_rnn",
        ),
        "rnn",
    ),
    **dict.fromkeys(("_fused_adam", "_fused_adamw", "_fused_sgd", "_fused_adagrad"), "optimizer"),
    **dict.fromkeys(("dot", "mv", "addmv", "addbmm", "__matmul__", "__rmatmul__"), "matmul"),
    **dict.fromkeys(
        (
            "add",
            "sub",
            "mul",
            "div",
            "pow",
            "maximum",
            "minimum",
            "eq",
            "ne",
            "lt",
            "le",
            "gt",
            "ge",
            "addcmul",
            "addcdiv",
            "lerp",
            "copysign",
            "fmod",
            "remainder",
            "logical_and",
            "logical_or",
            "bitwise_and",
            "bitwise_or",
            "rsub",
            "true_divide",
            "floor_divide",
            "atan2",
            "hypot",
            "clamp",
            "clip",
        ),
        "elementwise",
    ),
}
# Looked up by op_name(), which strips leading underscores (aten's private ops) but keeps dunders.
_ALIASES = {k if k.startswith("__") else k.lstrip("_"): v for k, v in _ALIASES.items()}
_DUNDER = re.compile(r"^__(?:[ri])?(\w+?)__$")


def op_name(name: str) -> str:
    """The plain operation name in any spelling: ``"wrapper_CUDA__index_select"`` -> ``"index_select"``.

    Accepts aten names (``"aten.addmm.default"``), codegen wrappers (``"wrapper_CUDA_addmm"``), PyTorch <= 1.5
    kernels (``"_th_index_select"``, ``"_thnn_conv2d_forward"``) and Python API names (``"Tensor.__add__"``).
    """
    base = name.rsplit(".", 2)[-2] if name.startswith("aten.") and name.count(".") >= 2 else name.split(".")[-1]
    base = re.sub(r"^wrapper_(?:[A-Z][A-Za-z]*_)?", "", base)  # codegen wrappers: wrapper_<DispatchKey>_<op>
    base = re.sub(r"^_(?:th|thnn)_", "", base)
    base = re.sub(r"_(?:out|functional)$", "", base)
    return base if base.startswith("__") and base.endswith("__") else base.lstrip("_") or base


def canonical_op(name: str) -> str | None:
    """The key of :data:`OPS` for an operation in any spelling (see :func:`op_name`); ``None`` when unknown."""
    base = op_name(name)
    dunder = _DUNDER.match(base)
    if dunder and base not in _ALIASES:
        base = dunder.group(1)
    if base.startswith("foreach_"):
        return "optimizer"
    for candidate in (base, base.rstrip("_")):
        if candidate in OPS:
            return candidate
        if candidate in _ALIASES:
            return _ALIASES[candidate]
    return None


def describe_op(name: str) -> str:
    """``name`` in user terms, e.g. ``"addmm — the matrix multiply of a Linear layer (...)"``."""
    key = canonical_op(name)
    short = op_name(name)
    return f"{short} — {OPS[key].description}" if key else short


_GENERIC_ARGS = frozenset({"self", "input", "other", "weight", "bias", "tensors", "x", "y", "src", "values"})


def role_of(op: str | None, arg: str | None) -> Role | None:
    """The role of argument ``arg`` of operation ``op`` (any spelling), or ``None`` when not in the table.

    Without a known operation, a distinctive argument name (``mat2``, ``hx``, ``attn_mask``) still tells the
    role: old messages name the argument but not the operation.
    """
    if arg is None:
        return None
    key = canonical_op(op) if op else None
    if key is not None:
        return OPS[key].args.get(arg)
    if op is None and arg not in _GENERIC_ARGS:
        return next((info.args[arg] for info in OPS.values() if arg in info.args), None)
    return None


def is_host(device: str | None) -> bool:
    return device is not None and device.split(":")[0] == "cpu"


def likely_cause(role: Role | None, culprit: str | None, others: str | None) -> tuple[str, str]:
    """The most likely cause and its fix, for a tensor in ``role`` on device ``culprit`` among tensors on ``others``.

    The side on the CPU is nearly always the one left behind: tensors start on the CPU, and a missing
    ``.to(device)`` or ``device=`` leaves them there.
    """
    where = others if is_host(culprit) or not is_host(others) else culprit
    target = repr(where) if where else "device"  # shown as code: `model.to('cuda:0')`, or the variable `device`
    kind = role.kind if role else "operand"
    if culprit and others and not is_host(culprit) and not is_host(others):
        return (
            f"tensors on two accelerators ({culprit} and {others}): one process mixed device indices, e.g. a model "
            "on 'cuda' (cuda:0) and data on f'cuda:{rank}', or a model split by device_map",
            "pick one device per process (`torch.cuda.set_device(local_rank)`, then "
            "`device = torch.device('cuda', local_rank)`) and use it for the model, the batch and every new tensor.",
        )
    if is_host(others) and not is_host(culprit):
        # The culprit is on the accelerator; what it met was left on the CPU.
        if kind in ("input", "index", "target", "hidden", "mask"):
            return (
                "the model (or this layer) is still on the CPU while its input is on the accelerator",
                f"move the model once, after building it: `model.to({target})`; create the optimizer after that.",
            )
        if kind == "weights":
            return (
                "the input was not moved: the layer is on the accelerator but its input is on the CPU",
                f"move the batch before the forward pass: `batch = tt.to_device(batch, {target})`.",
            )
        # Any other tensor already on the accelerator cannot be told to go there: what stayed behind on the CPU is
        # everything else, usually because the model or the batch was never moved.
        what = role.term if role else "this tensor"
        return (
            f"{what} is on {culprit} while the operation's other tensors are on the CPU: the model or the batch was "
            "not moved (or the others were created without `device=`)",
            f"move what stayed behind: `model.to({target})` and `batch = tt.to_device(batch, {target})`, and create "
            "new tensors with `device=x.device`; if you meant to run on the CPU, bring this one back instead "
            "(`.cpu()`).",
        )
    causes: dict[str, tuple[str, str]] = {
        "input": (
            "the batch (or a tensor made from it) was not moved to the model's device",
            f"move the batch before the forward pass: `batch = tt.to_device(batch, {target})`; tensors created "
            "on the fly need `device=` (e.g. `torch.zeros(n, device=x.device)`).",
        ),
        "index": (
            "the indices (e.g. token ids) were not moved, or were created without `device=`",
            f"move them with the batch: `ids = ids.to({target})` (or `tt.to_device(batch, ...)`); create index "
            "tensors with `device=x.device`.",
        ),
        "target": (
            "the labels were not moved with the inputs",
            f"move the whole batch, labels included: `x, y = tt.to_device((x, y), {target})`.",
        ),
        "weights": (
            "the model, or this layer, was not moved (e.g. a layer created or replaced after `model.to(device)`)",
            f"call `model.to({target})` after the model is complete, and move any layer added later.",
        ),
        "loss-weights": (
            "the loss function's class weights were created on the CPU and the loss module was not moved",
            f"create them on the device (`nn.CrossEntropyLoss(weight=w.to({target}))`) or move the loss: "
            f"`criterion.to({target})`.",
        ),
        "mask": (
            "a mask was created without `device=`, or is stored as a plain tensor attribute that `.to()` does not move",
            "register it as a buffer in __init__ (`self.register_buffer('mask', mask, persistent=False)`) or create "
            "it with `device=x.device`.",
        ),
        "hidden": (
            "the initial hidden state was created without `device=`",
            "create it next to the input: `h0 = torch.zeros(layers, batch, hidden, device=x.device)`.",
        ),
        "state": (
            "the optimizer's state lives on another device than its parameters: it was created or loaded before "
            "`model.to(device)`",
            "move the model first, then create the optimizer and call `optimizer.load_state_dict(...)` (it moves "
            "the state to each parameter's device).",
        ),
        "operand": (
            "a tensor was created without `device=` (torch.tensor, torch.zeros, torch.arange, ...) or is a plain "
            "tensor attribute that `.to()` does not move",
            f"create it on the device (`device=x.device`, or `device={target}`), or register it as a buffer so "
            "`model.to()` moves it.",
        ),
    }
    return causes[kind]
