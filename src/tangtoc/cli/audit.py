"""``tangtoc audit SCRIPT [ARGS...] --steps N [--json FILE]``: run a training script unmodified and report, per
step, its host-device synchronizations, cross-device copies and CPU-born tensors, each at its file:line.

The script runs as ``python SCRIPT ARGS...`` would run it (``sys.argv``, ``__main__``, the script's folder
first on ``sys.path``) and stops cleanly after N optimizer steps. Exit status: the script's own (0 when it
was stopped after N steps), 1 when it raised or had no steps to audit, 2 for a usage error. Steps end at
``optimizer.step()``; a loop without an optimizer (manual SGD) counts its ``backward()`` calls instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tangtoc.cli.args import UsageError, check_writable, count_option, script_options
from tangtoc.cli.render import ascii_fallback, console, save, say, to_json
from tangtoc.diagnose.audit import Audit
from tangtoc.diagnose.runner import load_script, run_script
from tangtoc.errors import ScriptError
from tangtoc.schemas import stamp

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
    say(console(), report.text(str(path), interrupted=run.interrupted))
    document = stamp("tangtoc.audit", {**report.to_dict(), "run": run.to_dict()})
    written = save(json_file, to_json(document) + "\n", "JSON report", "audit")
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
