"""What one training step is: the batch turned into a loss, its precision, the default optimizer, the work it does.

:func:`tangtoc.fit` trains with it, :func:`tangtoc.advise` measures and counts it and the bench's GPT suite times
it, so the step advise predicts is the step fit runs.

**Calling the model.** A mapping batch (dict, ``BatchEncoding``, ``BatchFeature``) is passed as keywords,
``model(**batch)``; a tuple or list as positional arguments, ``model(*batch)``; anything else as one,
``model(batch)``. With a ``loss_fn`` the model computes outputs only: a pair ``(inputs, targets)`` trains on
``loss_fn(model(inputs), targets)``; a mapping trains on ``loss_fn(model(**rest), batch["labels"])``, the rest
being every key but ``labels``.

**Finding the loss** in what the model returns, without a ``loss_fn``: a one-element floating tensor is the loss;
a mapping's ``"loss"`` (a Hugging Face ``ModelOutput`` is one) or an object's ``.loss``; in a tuple or list, the
one 0-dim floating tensor that requires grad (nanoGPT's ``(logits, loss)``). ``loss_from=`` (a key, an attribute,
an index or a function of the output) chooses where that is ambiguous. How is decided once, on the first batch,
and checked there; every later batch runs the decided rule, with no search.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tangtoc.device import float32_math
from tangtoc.move import named_tensors, to_device

LossFn = Callable[[Any, Any], torch.Tensor]
"""``loss_fn(output, targets) -> loss``: a 0-dim (or one-element) tensor that requires grad."""
OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]
"""``params -> optimizer``: called on the parameters that require grad (after any wrapping or sharding)."""
LossFrom = str | int | Callable[[Any], torch.Tensor]
"""Where the loss is in the model's output: a key or attribute name, an index, or a function of the output."""

DEFAULT_LR = 1e-3
LABELS = "labels"  # the targets of a mapping batch under a loss_fn: the name Hugging Face models use

# -- the optimizer ----------------------------------------------------------------------------------------------


def default_optimizer(
    params: Iterable[torch.Tensor] | nn.Module, device: torch.device | str, lr: float = DEFAULT_LR
) -> torch.optim.Optimizer:
    """AdamW over ``params`` (or a module's parameters) with torch's defaults and ``lr``: the fused kernel (one
    launch for all parameters) on CUDA, torch's own choice elsewhere. ``device`` is where the step runs: advise
    counts on fake CPU tensors the step a CUDA device would run, so it passes ``"cuda"``."""
    kind = torch.device(device).type
    if isinstance(params, nn.Module):
        params = params.parameters()
    if kind == "cuda":
        return torch.optim.AdamW(params, lr=lr, fused=True)
    return torch.optim.AdamW(params, lr=lr)


# -- precision --------------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "tf32": None}


def peak_key(
    precision: str, peaks: Mapping[str, float] | None, *, dtype: str | None = None, kind: str = "matmul"
) -> str:
    """The key of a part's ``peak_flops`` that bounds an op of ``kind`` (``"matmul"``, ``"conv"``, ``"attention"``)
    and ``dtype`` under ``precision`` (``"fp32"``: PyTorch's default math; ``"tf32"``: TF32 matmuls; ``"bf16"``,
    ``"fp16"``: autocast). ``dtype`` defaults to what the precision's matmuls compute in.

    Half types take the bf16 rate, or the fp16 one on parts without bf16 tensor cores (fp16 autocast there);
    float32 convolutions run on TF32 (cuDNN's default) and float32 matmuls only with ``"tf32"``; attention in
    float32 runs on CUDA cores. A key the part lacks (no TF32 on a T4, no FP64 figure) falls back to float32;
    ``peaks=None`` names the key whatever a part has.
    """
    if dtype is None:
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    if dtype in ("bfloat16", "float16"):
        no_bf16 = peaks is not None and "bfloat16" not in peaks
        key = "float16" if (dtype == "float16" or precision == "fp16" or no_bf16) else dtype
    elif dtype == "float64":
        key = "float64"
    elif (kind == "conv" and precision in ("fp32", "tf32")) or (kind == "matmul" and precision == "tf32"):
        key = "tf32"
    else:
        key = "float32"
    return key if peaks is None or key in peaks else "float32"


@dataclass(frozen=True, slots=True)
class Precision:
    """A resolved precision: ``name`` is ``"bf16"``, ``"fp16"``, ``"fp32"`` or ``"tf32"``; ``dtype`` the autocast
    dtype (``None`` for fp32 and tf32, which run without autocast). ``tf32``: float32 matmuls on CUDA use TF32
    tensor cores, as fit's do (``False`` only for advise's exact ``"fp32"``, see :meth:`exactly`)."""

    name: str
    dtype: torch.dtype | None
    device_type: str
    tf32: bool = True

    @staticmethod
    def exactly(name: str, device_type: str) -> Precision:
        """The precision ``name`` as advise measures it: ``"fp32"`` is PyTorch's default math (FP32 matmuls),
        ``"tf32"`` opts into TF32 matmuls, ``"bf16"`` and ``"fp16"`` are autocast (with TF32 matmuls, as fit)."""
        if name not in _DTYPES:
            raise ValueError(f"precision must be fp32, tf32, bf16 or fp16, got {name!r}.")
        return Precision(name, _DTYPES[name], device_type, tf32=name != "fp32")

    @property
    def tf32_matmuls(self) -> bool:
        return self.device_type == "cuda" and self.tf32

    def autocast(self) -> AbstractContextManager[object]:
        """The context the forward pass and the loss run in."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def math(self) -> AbstractContextManager[object]:
        """On CUDA, float32 matmuls on TF32 tensor cores or not (convolutions always, cuDNN's default), the user's
        settings restored on exit. No-op elsewhere."""
        if self.device_type != "cuda":
            return nullcontext()
        return float32_math(tf32_matmul=self.tf32_matmuls)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16, whose narrow exponent range underflows small gradients; ``None`` otherwise
        (bf16 has fp32's range and needs none). Its ``step`` reads an inf/NaN flag on the host: one
        synchronisation per step, the price of fp16."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def peak_key(self, peaks: Mapping[str, float] | None = None) -> str:
        """The key of :attr:`tangtoc.DeviceInfo.peak_flops` that bounds this precision's matmuls: the TF32 peak
        for float32 with TF32 matmuls (the FP32 peak, 7x lower on an H100, would report impossible MFU:
        nanoGPT's "104% MFU"). Without ``peaks`` the key as named; with them, one the part has."""
        name = "tf32" if self.dtype is None and self.tf32_matmuls else self.name
        return peak_key(name, peaks)

    def peak_flops(self, peaks: Mapping[str, float] | None) -> float | None:
        """The published peak FLOP/s that bounds this precision on a part with ``peaks`` (``None``: unknown)."""
        return peaks.get(self.peak_key(peaks)) if peaks else None


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Turn fit's ``"auto" | "bf16" | "fp16" | "fp32"`` into a :class:`Precision` for ``device``.

    ``auto``: bf16 on CUDA GPUs that support it (Ampere and newer) and on XPU, fp16 with a GradScaler on older
    CUDA GPUs, fp32 elsewhere. On a CPU with native bf16 (AVX512-BF16, AMX), ask for ``"bf16"`` explicitly.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}.")
    kind = device.type
    # Of this device: torch.cuda.is_bf16_supported() answers for the current one.
    cuda_bf16 = kind == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    if name == "auto":
        if kind == "cuda":
            name = "bf16" if cuda_bf16 else "fp16"
        else:
            name = "bf16" if kind == "xpu" else "fp32"
    elif name == "bf16" and kind == "cuda" and not cuda_bf16:
        cc = torch.cuda.get_device_capability(device)
        raise ValueError(
            f"precision='bf16' was requested, but {torch.cuda.get_device_name(device)} (compute capability "
            f"{cc[0]}.{cc[1]}) has no bf16 support; it needs 8.0 (Ampere) or newer. Fix: precision='fp16' or 'auto'."
        )
    return Precision(name=name, dtype=_DTYPES[name], device_type=kind)


# -- the batch ----------------------------------------------------------------------------------------------------


def lead_tensor(batch: Any) -> torch.Tensor | None:
    """The tensor whose first dimension is the batch size: the batch itself, or its first tensor (first item,
    first value, first field). Tuples, lists and mappings are walked directly: this runs once per step."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)):
        items: Iterable[Any] = batch
    elif isinstance(batch, Mapping):
        items = batch.values()
    else:
        return next((t for _, t in named_tensors(batch)), None)
    for item in items:  # the first one, nearly always
        if (found := lead_tensor(item)) is not None:
            return found
    return None


def batch_size_of(batch: Any) -> int:
    """The batch size: the first dimension of the batch's first tensor or NumPy array."""
    lead = lead_tensor(to_device(batch, "meta"))  # NumPy arrays become tensors; no data is copied
    if lead is None:
        raise ValueError("the example batch holds no tensor; pass the tensors (or NumPy arrays) a step trains on.")
    if lead.dim() == 0:
        raise ValueError(
            "the example batch's first tensor is a scalar, so it has no batch dimension. Put a batched tensor "
            "(batch size first) first."
        )
    return int(lead.shape[0])


def _is_ids(t: Any) -> bool:
    """A ``(batch, time)`` tensor of integers: token ids."""
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        return False
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _token_ids(batch: Any) -> tuple[Callable[[Any], torch.Tensor] | None, str | None]:
    """How to find the token ids in a batch like this one (``None``: it has none), and its attention mask's key."""
    if isinstance(batch, Mapping):
        mask = "attention_mask" if isinstance(batch.get("attention_mask"), torch.Tensor) else None
        ids = batch.get("input_ids")
        key = "input_ids" if isinstance(ids, torch.Tensor) else next((k for k, v in batch.items() if _is_ids(v)), None)
        return (None, None) if key is None else ((lambda b: b[key]), mask)
    if isinstance(batch, (tuple, list)):
        i = next((i for i, v in enumerate(batch) if _is_ids(v)), None)
        return (None, None) if i is None else ((lambda b: b[i]), None)
    return ((lambda b: b), None) if _is_ids(batch) else (None, None)


Counter = Callable[[Any], tuple[int, int | torch.Tensor, float]]


def work_counter(model: nn.Module, first_batch: Any) -> Counter:
    """A function ``batch -> (samples, tokens, flops)`` for this model and this kind of batch, decided on the first.

    Samples are the lead tensor's first dimension. Tokens are the elements of the token ids, ``input_ids`` or the
    first 2-D integer tensor ``(batch, time)``; with an ``attention_mask`` beside them, padding is left out by
    summing the mask on the device (a 0-dim tensor, read with the loss at the log point: no sync). FLOPs come from
    the model's ``flops_per_token(seq_len)`` (for every position, padding included: it is computed) or
    ``flops_per_sample()``; a model with neither gets 0 here, and fit and the trainer callbacks then count its
    FLOPs with PyTorch's FLOP counter, once per batch shape (:class:`tangtoc.flops.ShapeFlops`).
    """
    ids_of, mask = _token_ids(first_batch)
    per_token = getattr(model, "flops_per_token", None)
    per_sample = getattr(model, "flops_per_sample", None)
    if ids_of is not None:
        cache: dict[int, float] = {}

        def count_tokens(batch: Any) -> tuple[int, int | torch.Tensor, float]:
            b, t = ids_of(batch).shape
            if per_token is None:
                flops = 0.0
            else:
                if t not in cache:
                    cache[t] = float(per_token(t))
                flops = b * t * cache[t]
            return b, (batch[mask].sum() if mask is not None else b * t), flops

        return count_tokens
    sample_flops = float(per_sample()) if callable(per_sample) else 0.0
    first = first_batch[0] if type(first_batch) in (tuple, list) and first_batch else None
    if type(first) is torch.Tensor and first.dim() > 0:
        # The common (inputs, targets): straight to the first tensor, a tiny model's step is microseconds.
        return lambda batch: (batch[0].shape[0], 0, batch[0].shape[0] * sample_flops)

    def count_samples(batch: Any) -> tuple[int, int | torch.Tensor, float]:
        lead = lead_tensor(batch)
        b = lead.shape[0] if lead is not None and lead.dim() > 0 else 1
        return b, 0, b * sample_flops

    return count_samples


# -- the loss -----------------------------------------------------------------------------------------------------


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        grad = ", requires grad" if x.requires_grad else ""
        return f"Tensor{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}{grad}"
    return type(x).__name__


def _is_loss(x: Any, training: bool) -> bool:
    """A 0-dim floating tensor that requires grad (under ``torch.no_grad``, as in evaluation, any 0-dim one)."""
    return isinstance(x, torch.Tensor) and x.dim() == 0 and x.is_floating_point() and (x.requires_grad or not training)


def _unwrapped(forward: Callable[..., Any]) -> Callable[..., Any]:
    """The user's module under torch.compile's and DDP's wrappers, whose signatures are ``(*args, **kwargs)``."""
    for _ in range(4):
        inner = getattr(forward, "_orig_mod", None) or getattr(forward, "module", None)
        if not isinstance(inner, nn.Module):
            break
        forward = inner
    return getattr(forward, "forward", forward)


_HOW = {"keywords": "model(**batch)", "positional": "model(*batch)", "one": "model(batch)"}


class LossRule:
    """How a batch becomes a loss (see the module docstring), decided by :meth:`first` on the first batch.

    ``who`` names the caller at the start of its messages (``"fit"``; ``""`` for none).
    """

    __slots__ = ("_call", "_pick", "decided", "loss_fn", "loss_from", "who")

    def __init__(self, loss_fn: LossFn | None = None, loss_from: LossFrom | None = None, *, who: str = "fit") -> None:
        self.who = f"{who}: " if who else ""  # the prefix of every message
        if loss_fn is not None and loss_from is not None:
            raise ValueError(
                f"{self.who}loss_from= picks the loss out of what the model returns, and with loss_fn= the loss is "
                "what loss_fn returns. Pass one of them."
            )
        if loss_from is not None and not isinstance(loss_from, (str, int)) and not callable(loss_from):
            raise TypeError(
                f"{self.who}loss_from must be a key or attribute name, an index or a function of the model's "
                f"output, got {type(loss_from).__name__}."
            )
        self.loss_fn, self.loss_from = loss_fn, loss_from
        self._call: str = "one"  # how the model is called: "keywords", "positional", "one", "pair", "labels"
        self._pick: Callable[[Any], Any] | None = None  # where the loss is in the output; None: it is the output
        self.decided = False

    # The decided rule, as one closure per shape of batch: the hot loop calls it once per micro-batch.
    def bind(self, forward: Callable[..., Any]) -> Callable[[Any], torch.Tensor]:
        """``batch -> loss`` through ``forward`` with the rule :meth:`first` decided: no search, no checks."""
        assert self.decided, "LossRule.bind before the first batch decided the rule"
        loss_fn, pick, call = self.loss_fn, self._pick, self._call
        if call == "pair":
            return lambda batch: loss_fn(forward(batch[0]), batch[1])  # type: ignore[misc]
        if call == "labels":
            return lambda batch: loss_fn(  # type: ignore[misc]
                forward(**{k: v for k, v in batch.items() if k != LABELS}), batch[LABELS]
            )
        if call == "keywords":
            run: Callable[[Any], Any] = lambda batch: forward(**batch)  # noqa: E731
        elif call == "positional":
            run = lambda batch: forward(*batch)  # noqa: E731
        else:
            run = forward
        if pick is None:
            return run
        return lambda batch: pick(run(batch))

    def first(self, forward: Callable[..., Any], batch: Any, *, training: bool = True) -> torch.Tensor:
        """The loss of the first batch: decide how batches are called and where the loss is, and check it."""
        self._call = self._calling(batch)
        self._pick = None
        self.decided = True  # for bind(), below; undone if this batch shows that the rule cannot work
        try:
            try:
                output = self.bind(forward)(batch) if self.loss_fn is not None else self._run(forward, batch)
            except TypeError as e:
                self._explain_call(forward, batch, e)
                raise
            if self.loss_fn is not None:
                loss = output
            else:
                self._pick = self._where(output, training)
                loss = self._pick(output) if self._pick is not None else output
            self._check(loss, training)
        except BaseException:
            self.decided = False
            raise
        return loss

    def _calling(self, batch: Any) -> str:
        if self.loss_fn is None:
            return (
                "keywords"
                if isinstance(batch, Mapping)
                else "positional"
                if isinstance(batch, (tuple, list))
                else "one"
            )
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return "pair"
        if isinstance(batch, Mapping):
            if LABELS not in batch:
                raise ValueError(
                    f"{self.who}with a loss_fn, a mapping batch trains on loss_fn(model(**rest), batch['labels']), "
                    f"but this batch has no 'labels' key (keys: {', '.join(map(str, batch))}). Fix: add the targets "
                    "as 'labels', or yield (inputs, targets) pairs."
                )
            return "labels"
        kind = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise ValueError(
            f"{self.who}a loss_fn trains on batches (inputs, targets), got {kind}. Fix: give (inputs, targets) "
            "pairs (or mappings with a 'labels' key), or pass loss_fn=None and a model that returns its loss."
        )

    def _run(self, forward: Callable[..., Any], batch: Any) -> Any:
        if self._call == "keywords":
            return forward(**batch)
        if self._call == "positional":
            return forward(*batch)
        return forward(batch)

    def _explain_call(self, forward: Callable[..., Any], batch: Any, error: TypeError) -> None:
        """Turn torch's bare "forward() takes 2 positional arguments but 3 were given" into what went wrong."""
        if self.loss_fn is not None:
            return  # the model got the inputs alone: a TypeError there is the model's own
        try:
            signature = inspect.signature(_unwrapped(forward))
            if self._call == "keywords":
                signature.bind(**batch)
            elif self._call == "positional":
                signature.bind(*batch)
            else:
                signature.bind(batch)
        except ValueError:  # no signature to read (a builtin): torch's own message stands
            return
        except TypeError:
            what = (
                f"a {type(batch).__name__} of {len(batch)}"
                if isinstance(batch, (tuple, list, Mapping))
                else _describe(batch)
            )
            raise ValueError(
                f"{self.who}without a loss_fn the model is called as {_HOW[self._call]} and must return its loss, "
                f"but the batch is {what} and the model's forward{signature} does not take that ({error}). Fix: "
                "pass a loss_fn (e.g. torch.nn.functional.cross_entropy; a tangtoc advise --factory returns (model, "
                "batch, loss_fn)), or make forward take the targets and return the loss."
            ) from error

    def _where(self, output: Any, training: bool) -> Callable[[Any], Any] | None:
        """Where the loss is in ``output``: ``None`` for the output itself, else a function that picks it."""
        found = self.loss_from
        if found is not None:
            return self._chosen(output, found)
        if isinstance(output, torch.Tensor):
            return None
        if isinstance(output, Mapping) and "loss" in output:
            return lambda out: out["loss"]
        if getattr(output, "loss", None) is not None:
            return lambda out: out.loss
        if isinstance(output, (tuple, list)):
            hits = [i for i, x in enumerate(output) if _is_loss(x, training)]
            if len(hits) == 1:
                i = hits[0]
                return lambda out: out[i]
            listing = ", ".join(f"[{i}] {_describe(x)}" for i, x in enumerate(output))
            which = "none is" if not hits else f"{len(hits)} are"
            raise ValueError(
                f"{self.who}the model returned a {type(output).__name__} of {len(output)} ({listing}); the loss "
                f"is the one 0-dim floating tensor that requires grad, and {which}. Fix: loss_from=<index> "
                "(or a function of the output) says which, or pass a loss_fn."
            )
        if hasattr(output, "loss") or isinstance(output, Mapping):
            keys = ", ".join(map(str, output)) if isinstance(output, Mapping) else "loss=None"
            raise ValueError(
                f"{self.who}the model returned a {type(output).__name__} without a loss ({keys}). A Hugging Face "
                "model computes its loss when the batch has 'labels'. Fix: add labels to the batch, pass "
                "loss_from=<key or function>, or a loss_fn."
            )
        return None  # not a tensor: _check names it

    def _chosen(self, output: Any, found: LossFrom) -> Callable[[Any], Any]:
        if callable(found) and not isinstance(found, (str, int)):
            return found
        if isinstance(found, int) and not isinstance(found, bool):
            if isinstance(output, (tuple, list)) and -len(output) <= found < len(output):
                return lambda out: out[found]
            got = (
                f"a {type(output).__name__} of {len(output)}"
                if isinstance(output, (tuple, list))
                else _describe(output)
            )
            raise ValueError(f"{self.who}loss_from={found} is an index, but the model returned {got}.")
        if isinstance(output, Mapping) and found in output:
            return lambda out: out[found]
        if isinstance(found, str) and getattr(output, found, None) is not None:
            return lambda out: getattr(out, found)
        keys = f" (keys: {', '.join(map(str, output))})" if isinstance(output, Mapping) else ""
        raise ValueError(
            f"{self.who}loss_from={found!r}, but the model's {type(output).__name__} has no such key or "
            f"attribute{keys}."
        )

    def _check(self, loss: Any, training: bool) -> None:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            if self.loss_fn is not None:
                what = "loss_fn"
            else:
                what = f"the model, called as {_HOW[self._call]} since loss_fn=None,"
            raise ValueError(
                f"{self.who}{what} must return the loss as a one-element tensor, got {got}. Fix: pass a loss_fn "
                "(e.g. torch.nn.functional.cross_entropy), or make the model return its loss when given targets "
                "(a 0-dim tensor, an output with .loss, or (logits, loss))."
            )
        if training and not loss.requires_grad:
            raise ValueError(
                f"{self.who}the loss does not require grad, so nothing would be trained. Check that the model's "
                "parameters have requires_grad=True and that the loss is not computed under torch.no_grad()."
            )
