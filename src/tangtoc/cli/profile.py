"""``tangtoc profile SCRIPT [ARGS...] --steps N [--warmup K] [--json FILE] [--plot FILE.png]``: run a training
script unmodified and say where each step's time goes, and what bounds the step.

The script runs as ``python SCRIPT ARGS...`` would (the runner ``audit`` uses) and stops cleanly after K warm-up
and N timed steps (on CUDA, a few more under PyTorch's profiler for the device's busy time). Exit status: the
script's own (0 when it was stopped), 1 when it raised or had no steps to time, 130 when interrupted (the steps
done are reported, marked partial), 2 for a usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO

from rich.table import Table

from tangtoc.cli.args import UsageError, check_writable, count_option, script_options
from tangtoc.cli.render import ascii_fallback, console, fmt_bytes, fmt_seconds, save, say, to_json
from tangtoc.diagnose.profile import Profile
from tangtoc.diagnose.profile_report import PHASE_NAMES, PHASES, ProfileReport
from tangtoc.diagnose.runner import ScriptRun, load_script, run_script
from tangtoc.errors import ScriptError
from tangtoc.schemas import stamp

EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_STEPS, DEFAULT_WARMUP = 10, 2
_FLAGS = ("--steps", "--warmup", "--json", "--plot")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="run a training script and say where each step's time goes, and what bounds it",
        description="Run SCRIPT as `python SCRIPT ARGS...` would, time K warm-up and N steps, split each step's "
        "wall time into waiting for data, host→device copies, forward, backward, optimizer, syncs and other host "
        "time, and give the verdict (input-, transfer-, sync-, host- or compute-bound) with the first change to make.",
        epilog="--steps, --warmup, --json and --plot may come before SCRIPT or after its arguments. When they come "
        "before SCRIPT, everything after SCRIPT goes to the script unchanged. "
        "Exit status: the script's own; 1 when it raised or had no steps; 130 when interrupted; 2 for a usage error.",
    )
    p.add_argument("script", nargs="?", metavar="SCRIPT", help="the training script")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the script")
    p.add_argument("--steps", metavar="N", help=f"time N steps after the warm-up (default {DEFAULT_STEPS})")
    p.add_argument(
        "--warmup", metavar="K", help=f"steps run first and left out of the verdict (default {DEFAULT_WARMUP})"
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="draw each step's phases as a stacked bar into FILE.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ascii_fallback()
    err = console(stderr=True)
    options = script_options({f: getattr(args, f[2:]) for f in _FLAGS}, args.script_args)
    if isinstance(options, str):
        say(err, f"tangtoc profile: error: {options}")
        return EXIT_USAGE
    values, script_args = options
    steps = count_option("--steps", values["--steps"], DEFAULT_STEPS, 1)
    warmup = count_option("--warmup", values["--warmup"], DEFAULT_WARMUP, 0)
    for problem in (steps, warmup):
        if isinstance(problem, str):
            say(err, f"tangtoc profile: error: {problem}")
            return EXIT_USAGE
    assert isinstance(steps, int) and isinstance(warmup, int)
    if args.script is None:
        say(err, "tangtoc profile: error: give the training script to run, e.g. `tangtoc profile train.py --steps 10`.")
        return EXIT_USAGE
    json_file, plot_file = values["--json"], values["--plot"]
    try:
        check_writable(Path(json_file) if json_file else None, "--json")
        check_writable(Path(plot_file) if plot_file else None, "--plot")
        if plot_file:
            import matplotlib  # noqa: F401  (checked before the run: a missing extra must not lose the report)
        path = load_script(args.script)
    except ImportError:
        say(err, "tangtoc profile: error: --plot needs matplotlib: pip install 'tangtoc[plot]'.")
        return EXIT_USAGE
    except UsageError as e:
        say(err, f"tangtoc profile: error: {e}")
        return EXIT_USAGE
    except ScriptError as e:
        say(err, f"tangtoc profile: {e}")
        return EXIT_FAILED
    prof = Profile(steps, warmup)
    run = run_script(path, script_args, prof)
    report = prof.report()
    _render(report, str(path), steps, warmup, run)
    document = stamp("tangtoc.profile", {**report.to_dict(), "run": run.to_dict()})
    written = save(json_file, to_json(document) + "\n", "JSON report", "profile")
    if plot_file and report.steps:
        written &= save(plot_file, lambda f: plot(report, f, str(path)), "plot", "profile")
    covered = f"the {len(report.steps)} step(s)" if report.steps else "nothing (it ended before its first step)"
    if run.interrupted:
        say(err, f"tangtoc profile: interrupted; the report above is partial: it covers {covered} before.")
    elif run.error is not None:
        say(err, f"tangtoc profile: {path} raised {run.error}; the report covers {covered} before the error.")
    elif not report.steady:
        say(
            err,
            f"tangtoc profile: {path} ended after {len(report.steps)} step(s), none after the {warmup} warm-up "
            "step(s): nothing to judge. Steps end at optimizer.step(); for a loop without one, call "
            "`mark_step()` (`from tangtoc.diagnose import mark_step`) at the end of each iteration.",
        )
        return run.status or EXIT_FAILED
    return run.status or (0 if written else EXIT_FAILED)


def _render(report: ProfileReport, script: str, steps: int, warmup: int, run: ScriptRun) -> None:
    out = console()
    n = len(report.steady)
    ended = "" if report.stopped else f"; the script ended after {n} of {steps} steps"
    if run.interrupted:
        ended = f"; PARTIAL: interrupted after {n} of {steps} steps"
    source = f"steps end at {report.step_source}" if report.step_source else "no step ended"
    say(
        out,
        f"tangtoc profile: {script}: {n} step(s) timed after {warmup} warm-up ({source}{ended}); "
        f"on {report.device} ({report.machine['name']}, torch {report.machine['torch']})",
    )
    if report.other_thread_steps:
        say(
            out,
            f"Not seen: {report.other_thread_steps} optimizer step(s) taken in other threads; only the thread "
            "that runs the script is timed.",
        )
    if not n:
        return
    seconds, wall = report.mean()
    table = Table(title=f"A steady step: {fmt_seconds(wall)} (mean of {n})", title_justify="left")
    table.add_column("phase")
    table.add_column("per step", justify="right")
    table.add_column("share", justify="right")
    table.add_column("min–max per step", justify="right")
    for p in PHASES:
        values = [s.seconds[p] for s in report.steady]
        spread = f"{fmt_seconds(min(values))}–{fmt_seconds(max(values))}" if max(values) > 0 else "0"
        table.add_row(
            PHASE_NAMES[p], fmt_seconds(seconds[p]) if seconds[p] else "0", f"{seconds[p] / wall:.0%}", spread
        )
    out.print(table)
    counts = report.steady[0]
    line = f"per step: {counts.syncs} sync(s), {counts.copies} copy(ies) to the device ({fmt_bytes(counts.copy_bytes)})"
    if report.ops_per_step is not None:
        line += f"; {report.ops_per_step} aten operations in forward, backward and optimizer (counted in warm-up)"
    say(out, line)
    if report.device_times is not None:
        d = report.device_times
        say(
            out,
            f"device: busy {fmt_seconds(d.busy_seconds)} of {fmt_seconds(d.wall_seconds)} per step "
            f"({d.busy_share:.0%}), idle {1 - d.busy_share:.0%}; {d.kernels:.0f} kernel launches per step "
            f"(PyTorch's profiler, {d.steps} steps after the timed ones); the GPU waited on the host in "
            f"{d.waited_steps} of {d.timed_steps} timed steps (their host time exceeded its busy time)",
        )
    if report.verdict is not None:
        v = report.verdict
        out.print(f"[bold]verdict: {v.bound}[/bold]", highlight=False)
        say(out, f"  evidence: {v.evidence}")
        say(out, f"  first change: {v.change}")
    for note in report.notes:
        say(out, f"Note: {note}.")
    say(out, "Not seen: " + "; ".join(report.unseen) + ".")


def plot(report: ProfileReport, into: IO[bytes], script: str) -> None:
    """A stacked bar of phases per timed step, as a PNG written into ``into``; warm-up steps are left out, as from the
    verdict (the first one, with CUDA's start-up in it, would flatten the rest)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is assumed
    from matplotlib import pyplot as plt

    steps = report.steady or list(report.steps)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(steps) + 3), 4.5))
    x = [s.index for s in steps]
    bottom = [0.0] * len(x)
    for p, color in zip(PHASES, plt.get_cmap("tab10").colors, strict=False):
        heights = [s.seconds[p] * 1e3 for s in steps]
        ax.bar(x, heights, bottom=bottom, label=PHASE_NAMES[p], color=color)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    verdict = f": {report.verdict.bound}" if report.verdict else ""
    ax.set_title(f"tangtoc profile {Path(script).name} on {report.device}{verdict}")
    warm = len(report.steps) - len(report.steady)
    ax.set_xlabel(f"step ({warm} warm-up step(s) not shown)" if report.steady else "step (all warm-up)")
    ax.set_ylabel("wall time (ms)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(into, format="png", dpi=110)
    plt.close(fig)
