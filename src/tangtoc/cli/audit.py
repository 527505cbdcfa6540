"""``tangtoc audit SCRIPT [ARGS...] --steps N [--json FILE]``: run a training script unmodified and report, per
step, its host-device synchronizations, cross-device copies and CPU-born tensors, each at its file:line.

The script runs as ``python SCRIPT ARGS...`` would run it (``sys.argv``, ``__main__``, the script's folder
first on ``sys.path``) and stops cleanly after N optimizer steps. Exit status: the script's own (0 when it
was stopped after N steps), 1 when it raised or had no steps to audit, 2 for a usage error. Steps end at
``optimizer.step()``; a loop without an optimizer (manual SGD) counts its ``backward()`` calls instead.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from rich.console import Console

from tangtoc.cli.args import UsageError, check_writable
from tangtoc.cli.render import console, fmt_bytes, to_json
from tangtoc.diagnose.audit import Audit
from tangtoc.diagnose.audit_report import (
    COPY_LATENCY_SECONDS,
    PAGEABLE_BYTES_PER_SECOND,
    SYNC_SECONDS,
    AuditReport,
)
from tangtoc.diagnose.runner import ScriptError, ScriptRun, load_script, run_script
from tangtoc.errors import OutputError
from tangtoc.files import write_atomic

EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_STEPS = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="run a training script and find its hidden syncs, copies and CPU-born tensors, per step",
        description="Run SCRIPT as `python SCRIPT ARGS...` would, stop after N optimizer steps, and list every "
        "host-device synchronization, cross-device copy and tensor created on the CPU inside a step, at its "
        "file:line, ranked by estimated cost. On a CPU-only machine it lists what would sync or copy on a GPU.",
        epilog="--steps and --json may come before SCRIPT or after its arguments. When they come before SCRIPT, "
        "everything after SCRIPT goes to the script unchanged, its own --steps included: "
        "tangtoc audit --steps 5 train.py --steps 100. "
        "Exit status: the script's own; 1 when it raised or had no steps; 2 for a usage error.",
    )
    # nargs="?" so a missing SCRIPT gets our message, not argparse's "required: SCRIPT, ARGS" (ARGS is optional).
    p.add_argument("script", nargs="?", metavar="SCRIPT", help="the training script")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the script")
    p.add_argument("--steps", type=int, metavar="N", help=f"stop after N optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.set_defaults(run=run)


def script_options(given: dict[str, object], rest: list[str]) -> tuple[dict[str, str | None], list[str]] | str:
    """tangtoc's own options (by flag) and the script's arguments, or a usage error; shared with ``profile``.

    ``given``: each of tangtoc's flags with the value parsed before SCRIPT (``None``: not given there). Any of
    them given before SCRIPT leaves everything after it to the script, verbatim. Otherwise those flags after
    SCRIPT (``--steps N``, ``--steps=N``) are tangtoc's, the usage line's form, and the rest, in order, the script's.
    """
    values = {flag: None if v is None else str(v) for flag, v in given.items()}
    if any(v is not None for v in values.values()):
        return values, list(rest)
    script_args: list[str] = []
    i = 0
    while i < len(rest):
        name, eq, value = rest[i].partition("=")
        if name in values:
            if not eq:
                if i + 1 >= len(rest):
                    return f"{name} needs a value"
                i += 1
                value = rest[i]
            values[name] = value
        else:
            script_args.append(rest[i])
        i += 1
    return values, script_args


def count_option(flag: str, value: str | None, default: int, minimum: int) -> int | str:
    """``value`` of ``flag`` as a whole number of steps (``default`` when not given), or a usage error."""
    try:
        n = default if value is None else int(value)
    except ValueError:
        return f"{flag} takes a whole number of steps, got {value!r}"
    if n < minimum:
        return f"{flag} must be at least {minimum}, got {n}"
    return n


def run(args: argparse.Namespace) -> int:
    ascii_fallback()
    err = console(stderr=True)
    options = script_options({"--steps": args.steps, "--json": args.json}, args.script_args)
    steps = count_option("--steps", options[0]["--steps"], DEFAULT_STEPS, 1) if isinstance(options, tuple) else options
    if isinstance(options, str) or isinstance(steps, str):
        say(err, f"tangtoc audit: error: {steps}")
        return EXIT_USAGE
    values, script_args = options
    json_file = values["--json"]
    if args.script is None:
        say(err, "tangtoc audit: error: give the training script to run, e.g. `tangtoc audit train.py --steps 10`.")
        return EXIT_USAGE
    try:
        check_writable(Path(json_file) if json_file else None, "--json")
        path = load_script(args.script)
    except UsageError as e:
        say(err, f"tangtoc audit: error: {e}")
        return EXIT_USAGE
    except ScriptError as e:
        say(err, f"tangtoc audit: {e}")
        return EXIT_FAILED
    audit = Audit(steps)
    run = run_script(path, script_args, audit)
    report = audit.report()
    _render(report, str(path), steps, run)
    written = save(json_file, to_json({**report.to_dict(), "run": run.to_dict()}) + "\n", "JSON report", "audit")
    covered = f"the {len(report.steps)} step(s)" if report.steps else "the run (it ended before its first step)"
    if run.interrupted:
        say(err, f"tangtoc audit: interrupted; the report above is partial: it covers {covered} before.")
        return run.status
    if run.error is not None:
        say(err, f"tangtoc audit: {path} raised {run.error}; the report covers {covered} before the error.")
        return run.status
    status = run.status
    if report.other_thread_steps and not report.steps:
        say(
            err,
            f"tangtoc audit: {path} ran its {report.other_thread_steps} optimizer step(s) in other threads than the "
            "one that runs the script; the audit sees only that thread, so those steps were not audited. Audit the "
            "function a thread runs by calling it in the main thread (one worker), or with `tt.audit()` inside it.",
        )
        return status or EXIT_FAILED
    if report.step_source is None:
        say(
            err,
            f"tangtoc audit: {path} finished without calling optimizer.step() or backward(), so there were no "
            "steps to audit (the findings above cover the whole run). To audit per step, mark the end of each step "
            "in your loop: `from tangtoc.diagnose import mark_step` then `mark_step()` at the end of each iteration.",
        )
        return status or EXIT_FAILED
    return status or (0 if written else EXIT_FAILED)


def save(path: str | None, data: str | Callable[[IO[bytes]], None], what: str, command: str) -> bool:
    """Write a report's file after the run; on failure say why, with the report already shown (False)."""
    if path is None:
        return True
    try:
        write_atomic(path, data)
    except OutputError as e:
        say(console(stderr=True), f"tangtoc {command}: the {what} was not written (it is shown above): {e}")
        return False
    say(console(), f"{what} written to {path}")
    return True


def say(where: Console, text: str) -> None:
    """Print ``text`` as is: no markup (code has brackets), no wrapping (file:line and code stay on one line)."""
    where.print(text, markup=False, soft_wrap=True)


# What the reports write outside ASCII, in ASCII, for a terminal or pipe that cannot take it.
_ASCII = {"—": "--", "–": "-", "µ": "u", "×": "x", "→": "->", "≤": "<=", "≥": ">=", "…": "...", "·": "."}


def _to_ascii(e: UnicodeError) -> tuple[str, int]:
    assert isinstance(e, UnicodeEncodeError)
    return "".join(_ASCII.get(c, "?") for c in e.object[e.start : e.end]), e.end


codecs.register_error("tangtoc.ascii", _to_ascii)


def ascii_fallback() -> None:
    """Let stdout and stderr write what their encoding lacks (``PYTHONIOENCODING=ascii``, a C locale) as ASCII
    instead of raising UnicodeEncodeError after the work is done: "—" becomes "--", "µs" "us"."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", "strict") == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="tangtoc.ascii")


_MODES = {
    "inferred": "No GPU in use: nothing waited and nothing moved here. The script names a device, so what it moves "
    "or creates there, and what is computed from it, is taken to be on the GPU: listed are the lines that would "
    "synchronize or copy on a GPU, and the tensors born on the CPU that meet the device.",
    "unnamed": "No GPU in use, and the script never names a device (no `.to(device)`, no `device=`), so what would "
    "live on a GPU cannot be told: every host read is listed as if its tensor were on the GPU.",
}


def _when(n_steps: int, seen: int, first: int, setup_count: int) -> str:
    """When a finding happened, if not in every step: in set-up, once in step k, in some steps."""
    setup = f"{setup_count}× in set-up" if setup_count else ""
    if not seen:
        return f"; {setup}, before the first step"
    if n_steps > 1 and seen == 1:
        return f" (once, in step {first}{', and ' + setup if setup else ''})"
    if seen < n_steps:
        return f" (in {seen} of {n_steps} steps{', and ' + setup if setup else ''})"
    return f" (and {setup})" if setup else ""


def _render(report: AuditReport, script: str, asked: int, run: ScriptRun) -> None:
    out = console()
    n = len(report.steps)
    source = f"steps end at {report.step_source}" if report.step_source else "no steps: the whole run"
    if report.step_source == "backward()":
        source += ", as no optimizer.step() was seen"
    ended = "" if report.stopped or not report.step_source else f"; the script ended after {n} of {asked} steps"
    if run.interrupted:
        ended = f"; PARTIAL: interrupted after {n} of {asked} steps"
    say(out, f"tangtoc audit: {script}: {n} step(s) ({source}{ended}); model on {report.device}")
    if report.other_thread_steps:
        say(
            out,
            f"Not seen: {report.other_thread_steps} optimizer step(s) taken in other threads. Only the thread that "
            "runs the script is audited; what those threads sync or copy is not in this report.",
        )
    if report.mode in _MODES:
        say(out, _MODES[report.mode])
    if not report.findings and report.other_thread_steps:
        say(out, "Nothing found in the script's own thread; the steps in other threads were not audited.")
    elif not report.findings:
        out.print("[green]No syncs, copies or CPU-born tensors found in the audited steps.[/green]")
    per = max(n, 1)
    for i, f in enumerate(report.findings, 1):
        where = f"{f.location}" if f.location else "(no Python caller: autograd or C++)"
        code = f.location.code if f.location else ""
        size = f", {fmt_bytes(f.bytes / per)}/step" if f.bytes and f.kind != "sync" else ""
        via = f" inside {f.via}" if f.via else ""
        say(out, f"{i:>2}. {where}  {code}")
        cost = f"; {f.count / per:.1f}×/step{size}, ~{f.seconds_per_step * 1e6:.0f} µs/step" if f.count else ""
        say(out, f"    {f.op}{via} — {f.detail}{cost}" + _when(n, f.steps_seen, f.first_step, f.setup_count))
        say(out, f"    why: {f.why}")
        say(out, f"    fix: {f.fix}")
    if report.setup is not None:
        s = report.setup
        say(
            out,
            f"set-up (before the first step, outside the loop): {s.syncs} sync, {s.copies} copy "
            f"({fmt_bytes(s.copy_bytes)}), {s.cpu_tensors} CPU-born; one-offs, listed only where they cost per step",
        )
    if report.steps:
        say(
            out,
            "per step: "
            + " | ".join(
                f"{s.index}: {s.syncs} sync, {s.copies} copy ({fmt_bytes(s.copy_bytes)}), {s.cpu_tensors} CPU-born"
                for s in report.steps
            ),
        )
    if report.events_after_last_step:
        say(out, f"({report.events_after_last_step} event(s) after the last step were not counted.)")
    say(
        out,
        f"µs/step are estimates to rank the findings, not measurements: a sync {SYNC_SECONDS * 1e6:.0f} µs, a copy "
        f"{COPY_LATENCY_SECONDS * 1e6:.0f} µs + bytes at {PAGEABLE_BYTES_PER_SECOND / 1e9:.0f} GB/s (pageable). "
        "Not seen: other threads (DataLoader workers, the pin-memory thread), the inside of C++ extensions, syncs "
        "outside PyTorch's tensor API (CUDA events and streams, collectives).",
    )
