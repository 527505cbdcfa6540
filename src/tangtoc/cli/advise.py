"""``tangtoc advise [mlp|cnn|gpt]``: should this training run on a GPU? Measured here, predicted for named GPUs.

The workload is a built-in model (``mlp``, ``cnn``, ``gpt`` with ``--size``) or the user's own, from
``--factory module:function`` (or ``path/to/file.py:function``): a function that returns ``(model, example_batch)``
or ``(model, example_batch, loss_fn)``, called with no arguments, or with ``batch_size=`` for ``--batch-size`` (a
factory without that parameter is refused with it). The batch becomes a loss as in ``tt.fit``
(:mod:`tangtoc.step`): without a loss_fn the model returns its loss (a tensor, a Hugging Face output with labels
in a dict batch, or ``(logits, loss)``).

Exit status: 0 advice given, 1 the run failed or ``--json`` could not be written (the advice is still printed), 2
usage error (bad flag, a factory that cannot be loaded or returns the wrong thing; its own traceback is shown as
its own). ``--json`` writes a ``tangtoc.advise`` document (docs/JSON.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from torch import nn

from tangtoc.advise import Advice, Assumptions, advise
from tangtoc.cli.args import UsageError, check_writable, finite, seconds, threads
from tangtoc.cli.render import console, fmt_bytes, fmt_duration, fmt_seconds, to_json
from tangtoc.diagnose.frames import is_library_file
from tangtoc.errors import FactoryError, OutputError, TangtocError
from tangtoc.files import write_atomic
from tangtoc.hardware import BY_SHORT_NAME
from tangtoc.schemas import stamp
from tangtoc.step import batch_size_of
from tangtoc.workloads import EXAMPLE_BATCH, EXAMPLE_SIZE, SIZES, Example, example


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "advise",
        help="should this training run on a GPU? measured here, predicted for named GPUs",
        description="Measure a training step (forward, loss, backward, AdamW) on the CPU and every GPU here, with "
        "the batch copied every step and with the data resident; predict it on named GPUs from counted FLOPs, "
        "bytes and kernels; and recommend, with the batch size where the answer flips. Workload: a built-in model "
        "or --factory module:function returning (model, example_batch) or (model, example_batch, loss_fn).",
    )
    p.add_argument("model", nargs="?", choices=("mlp", "cnn", "gpt"), help="built-in workload (default mlp)")
    sizes = ", ".join(f"{name} {'/'.join(SIZES[name])}" for name in SIZES)
    p.add_argument(
        "--size",
        help=f"model size: {sizes} (default: {', '.join(EXAMPLE_SIZE.values())}; gpt2 is GPT-2 124M and takes "
        "minutes per step on a CPU)",
    )
    batches = ", ".join(f"{name} {b}" for name, b in EXAMPLE_BATCH.items())
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"batch size (default: {batches}); with --factory, passed to the factory's batch_size parameter",
    )
    p.add_argument("--factory", metavar="MODULE:FUNCTION", help="your workload instead of a built-in one")
    p.add_argument("--steps", type=int, help="optimizer steps of the whole job (default 1000)")
    p.add_argument("--epochs", type=finite, help="epochs of the whole job (with --dataset-size)")
    p.add_argument("--dataset-size", type=int, help="samples per epoch (with --epochs)")
    p.add_argument(
        "--target",
        action="append",
        metavar="GPU",
        help=f"GPU to predict for (repeatable): {', '.join(BY_SHORT_NAME)}; default: the GPUs here, else h100",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write everything measured and predicted")
    p.add_argument("--threads", type=threads, help="CPU threads for torch while measuring (default: torch's choice)")
    p.add_argument("--min-time", type=seconds, default=0.3, help="seconds measured per configuration (default 0.3)")
    p.add_argument(
        "--launch-us",
        type=finite,
        help=f"assumed host time per kernel in microseconds (default {Assumptions().launch_overhead_s * 1e6:g})",
    )
    p.set_defaults(run=run)


# -- the workload -----------------------------------------------------------------------------------------------


def _their_traceback(e: BaseException) -> str:
    """``e``'s traceback without the frames of this module (the loader), so what is shown is the user's code."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def _import(module: str) -> Any:
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise UsageError(f"--factory: no such file {module!r}.")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            raise FactoryError(
                f"--factory: importing {module} raised {type(e).__name__}: {e}", _their_traceback(e)
            ) from None
        return mod
    added = os.getcwd() not in sys.path  # `python -m` puts the current folder on the path; the `tangtoc` script not
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise UsageError(
                f"--factory: cannot import module {module!r} ({e}). Fix: run from the folder that holds it, set "
                "PYTHONPATH, or give a file path like path/to/file.py:function."
            ) from None
        raise FactoryError(
            f"--factory: importing {module} raised {type(e).__name__}: {e}", _their_traceback(e)
        ) from None
    except Exception as e:
        raise FactoryError(
            f"--factory: importing {module} raised {type(e).__name__}: {e}", _their_traceback(e)
        ) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _takes_batch_size(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` has a parameter named ``batch_size`` (a ``**kwargs`` catch-all does not count)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or extension function without a signature
        return False
    p = params.get("batch_size")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def load_factory(spec: str, batch_size: int | None = None) -> Example:
    """Call the user's ``module:function`` and check that it returns ``(model, batch[, loss_fn])``.

    With ``batch_size``, the function is called as ``function(batch_size=batch_size)``; one without a
    ``batch_size`` parameter is refused (its example batch is the only batch size it knows), and so is one whose
    example batch comes back at another size."""
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name:
        raise UsageError(f"--factory must look like module:function or path/to/file.py:function, got {spec!r}.")
    mod = _import(module)
    fn = getattr(mod, name, None)
    if fn is None:
        found = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_"))
        listing = f" It defines: {', '.join(found)}." if found else ""
        raise UsageError(f"--factory: module {module!r} has no attribute {name!r}.{listing}")
    if not callable(fn):
        raise UsageError(f"--factory: {spec} is a {type(fn).__name__}, not a function.")
    kwargs: dict[str, int] = {}
    if batch_size is not None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}.")
        if not _takes_batch_size(fn):
            raise UsageError(
                f"--batch-size: {spec}() has no batch_size parameter, so its example batch decides the batch size. "
                f"Fix: drop --batch-size, or give the factory one (def {name}(batch_size=16): ...) and build the "
                "example batch at that size."
            )
        kwargs["batch_size"] = batch_size
    call = f"{spec}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        made = fn(**kwargs)
    except Exception as e:
        raise FactoryError(f"--factory: {call} raised {type(e).__name__}: {e}", _their_traceback(e)) from None
    expected = "expected (model, example_batch) or (model, example_batch, loss_fn)"
    if not isinstance(made, (tuple, list)) or len(made) not in (2, 3):
        got = f"a {type(made).__name__}" + (f" of {len(made)}" if isinstance(made, (tuple, list)) else "")
        raise UsageError(f"--factory: {spec}() returned {got}; {expected}.")
    model, batch, loss_fn = (*made, None) if len(made) == 2 else made
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"--factory: {spec}() returned a {type(model).__name__} as the model; {expected}, the model "
            "a torch.nn.Module."
        )
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"--factory: {spec}()'s loss_fn is a {type(loss_fn).__name__}, not callable; {expected}.")
    try:
        size = batch_size_of(batch)
    except ValueError as e:
        raise UsageError(f"--factory: {spec}()'s example batch: {e}") from None
    if batch_size is not None and size != batch_size:
        raise UsageError(
            f"--batch-size {batch_size}: {call} returned an example batch of {size}. Fix: build the example batch "
            "at the batch_size the factory is given."
        )
    return Example(model, batch, loss_fn, f"{spec} ({type(model).__name__})")


# -- rendering --------------------------------------------------------------------------------------------------


def _job(advice: Advice, step_s: float) -> str:
    s = advice.job_s(step_s)
    return fmt_duration(s) if s is not None else "-"


def _si(x: float, unit: str) -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _measured_table(advice: Advice) -> Table:
    t = Table(
        title="Measured here (median seconds per training step: forward, loss, backward, optimizer)",
        title_justify="left",
    )
    for col in ("device", "hardware", "precision", "data", "batch", "per step", "runs", "IQR/med", "job"):
        t.add_column(col, justify="right" if col in ("batch", "per step", "runs", "IQR/med", "job") else "left")
    t.add_column("note")
    for m in advice.measured:
        cpu = m.device == "cpu"
        note = "for the CPU's fit a + b x batch" if m.batch_size != advice.batch_size else ""
        remark = Text(note)
        if m.measurement.warning:
            remark.append((" " if note else "") + "(noisy)", style="yellow")
        t.add_row(
            m.device,
            m.hardware,
            m.precision,
            "-" if cpu else ("copied every step" if m.data == "copied" else "resident"),
            str(m.batch_size),
            fmt_seconds(m.step_s),
            str(m.measurement.runs),
            f"{m.measurement.spread:.0%}" if m.measurement.runs > 1 else "-",
            _job(advice, m.step_s) if m.batch_size == advice.batch_size else "-",
            remark,
        )
    return t


def _predicted_table(advice: Advice) -> Table:
    t = Table(
        title="Predicted, not measured (roofline + launch overhead from the counted step; assumptions below)",
        title_justify="left",
    )
    for col in (
        "target",
        "precision",
        "copied every step",
        "resident",
        "limited by",
        "job (copied)",
        "job (resident)",
        "kernels",
        "FLOPs",
        "bytes",
    ):
        t.add_column(col, justify="left" if col in ("target", "precision", "limited by") else "right")
    for p in advice.predicted:
        t.add_row(
            p.target,
            p.precision,
            fmt_seconds(p.copied_s),
            fmt_seconds(p.resident_s),
            p.limited_by,
            _job(advice, p.copied_s),
            _job(advice, p.resident_s),
            str(p.kernels),
            _si(p.flops, "FLOP"),
            fmt_bytes(p.bytes),
        )
    return t


def _render(advice: Advice, workload: Example) -> None:
    out = console()
    params = sum(p.numel() for p in workload.model.parameters())
    out.print(
        f"tangtoc advise: {workload.description}, {params:,} parameters, batch {advice.batch_size}; "
        f"job: {advice.job or 'not given (per-step times only)'}",
        markup=False,
    )
    m = advice.machine
    gpus = ", ".join(f"{k} ({v})" for k, v in m["accelerators"].items()) or "none"
    out.print(
        f"here: {m['cpu_model']} ({m['cpu_cores']} cores, {m['torch_threads']} torch thread"
        f"{'s' if m['torch_threads'] != 1 else ''}), torch {m['torch']}; "
        f"GPUs: {gpus}",
        markup=False,
    )
    out.print(_measured_table(advice))
    if advice.predicted:
        out.print(_predicted_table(advice))
    if advice.checks:
        t = Table(title="The prediction checked on the GPU here", title_justify="left")
        for col in ("device", "precision", "data", "predicted", "measured", "predicted/measured"):
            t.add_column(col)
        for c in advice.checks:
            t.add_row(
                c.device, c.precision, c.data, fmt_seconds(c.predicted_s), fmt_seconds(c.measured_s), f"{c.ratio:.2f}"
            )
        out.print(t)
    if advice.count is not None:
        c = advice.count
        out.print(
            f"Counted per step (fp32, batch {c.batch_size}, on fake tensors: shapes only): {_si(c.flops, 'FLOP')}, "
            f"{fmt_bytes(c.bytes)} read and written, {c.kernels} kernels; each batch copy moves "
            f"{fmt_bytes(c.batch_bytes)} in {c.batch_tensors} tensor(s).",
            markup=False,
        )
    for u in advice.uncounted:
        out.print(
            f"  FLOPs not counted: {u.op} ({u.calls} call(s), no FLOP formula; only its {fmt_bytes(u.bytes)} are "
            f"predicted): {fmt_seconds(u.cpu_s)}, {u.share:.0%} of one CPU step timed op by op.",
            markup=False,
        )
    if advice.crossover is not None:
        x, fit = advice.crossover, advice.cpu_fit
        t = Table(title="Where the answer flips", title_justify="left")
        for col in ("batch", "CPU per step", "GPU per step", "faster"):
            t.add_column(col, justify="right")
        for b, c, g in x.points:
            t.add_row(str(b), fmt_seconds(c), fmt_seconds(g), "GPU" if g < c else "CPU")
        out.print(t)
        fixed = f"{fmt_seconds(fit.fixed_s)} + " if fit.fixed_s > 0 else ""
        out.print(
            f"  CPU: {fixed}{fmt_seconds(fit.per_sample_s)} x batch, fitted to the measured "
            f"batches {' and '.join(str(b) for b, _ in fit.points)}; GPU: {x.gpu_how} from a count at each batch "
            "size, fp32, batch copied every step.",
            markup=False,
        )
    out.print()
    out.print(Text("Recommendation: ", style="bold") + Text(advice.recommendation))
    if advice.changes:
        out.print("What to change first:" if advice.verdict.startswith("gpu") else "On a GPU, change first:")
        for i, change in enumerate(advice.changes, 1):
            out.print(f"  {i}. {change}", markup=False)
    if advice.predicted:
        first = advice.predicted[0]
        out.print("Assumptions of the predictions:")
        for line in first.assumptions:
            out.print(f"  - {line}", markup=False)
        sources = dict.fromkeys(f"{p.hardware}: {p.source}" for p in advice.predicted)
        out.print("Peak rates from:", markup=False)
        for s in sources:
            out.print(f"  - {s}", markup=False)
    for note in advice.notes:
        out.print(f"Note: {note}", markup=False)
    noisy = sum(1 for m in advice.measured if m.measurement.warning)
    if noisy:
        out.print(
            f"{noisy} measurement(s) marked (noisy): their IQR exceeds 10% of the median; another process may be "
            "using this machine. Rerun, or try --threads 1.",
            markup=False,
        )


def _check_args(args: argparse.Namespace) -> None:
    if args.factory and (args.model or args.size):
        raise UsageError("--factory replaces the built-in model; drop the model name and --size.")
    # Everything else (sizes, batch, job, targets, threads, launch time) is the library's to validate.
    check_writable(args.json, "--json")


def run(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    try:
        _check_args(args)
        workload = (
            load_factory(args.factory, args.batch_size)
            if args.factory
            else example(args.model or "mlp", args.size, args.batch_size)
        )
        assumptions = Assumptions()
        if args.launch_us is not None:
            assumptions = replace(assumptions, launch_overhead_s=args.launch_us * 1e-6)
    except FactoryError as e:
        err.print(f"tangtoc advise: error: {e}", markup=False)
        if e.details:
            err.print("Traceback from your code:", markup=False)
            err.print(e.details.rstrip(), markup=False, highlight=False)
        return 2
    except ValueError as e:  # a UsageError, or the library's word on a size, a batch size or an assumption
        err.print(f"tangtoc advise: error: {e}", markup=False)
        return 2
    job_given = args.steps is not None or args.epochs is not None or args.dataset_size is not None
    with err.status("starting") as status:
        try:
            advice = advise(
                workload.model,
                workload.batch,
                loss_fn=workload.loss_fn,
                steps=args.steps if job_given else 1000,
                epochs=args.epochs,
                dataset_size=args.dataset_size,
                targets=tuple(args.target or ("auto",)),
                assumptions=assumptions,
                min_time=args.min_time,
                max_time=max(3.0, 10 * args.min_time),
                threads=args.threads,
                progress=lambda msg: status.update(msg),
            )
        except (ValueError, TypeError) as e:
            # The workload does not train as given (a loss that is not a scalar, a batch the model refuses).
            err.print(f"tangtoc advise: error: {e}", markup=False)
            return 2
        except TangtocError:
            raise  # ours already say what and how to fix; cli.main reports them
        except Exception as e:
            # PyTorch's or the model's own errors from the user's step (shapes that do not multiply, an id outside
            # the vocabulary, out of memory): the run failed; show where in their code.
            err.print(
                f"tangtoc advise: error: a training step of {workload.description} failed: {type(e).__name__}: {e}",
                markup=False,
            )
            frames = [f for f in traceback.extract_tb(e.__traceback__) if not is_library_file(f.filename)]
            if frames:
                err.print("Where, in your code:", markup=False)
                err.print("".join(traceback.format_list(frames)).rstrip(), markup=False, highlight=False)
            return 1
    _render(advice, workload)
    if args.json:
        data = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "workload": workload.description,
            "advice": advice.to_dict(),
        }
        try:
            write_atomic(args.json, to_json(stamp("tangtoc.advise", data)) + "\n")
        except OutputError as e:
            # Checked before the work (check_writable), yet the disk or the folder can change during it: the advice
            # is printed above, and only the file is missing.
            err.print(f"tangtoc advise: error: {e} The advice is above.", markup=False)
            return 1
        console().print(f"wrote {args.json}", markup=False)
    return 0
