"""``tangtoc bench [SUITE ...]``: CPU against every GPU present, measured correctly; table, JSON, PNG.

Exit status: 0 every case ran, 1 a case failed (the others are still reported and written), 2 usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tangtoc import bench, telemetry
from tangtoc.bench import kernels, report
from tangtoc.bench.cases import BenchConfig, Row
from tangtoc.bench.claims import Claim, seed_claims
from tangtoc.cli.args import UsageError, check_writable, seconds, threads
from tangtoc.cli.render import console, fmt_bytes, fmt_seconds, noisy_note
from tangtoc.clock import Stopwatch
from tangtoc.device import available_devices, describe, resolve
from tangtoc.errors import OutputError
from tangtoc.models import GPT_SIZES
from tangtoc.train.signals import sigterm_as_interrupt

QUICK = ("matmul", "small-ops", "transfer", "residency", "gpt2")
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, read before --threads changes it


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure CPU against GPU: matmul, small ops, transfers, residency, GPT-2 training",
        description="Run benchmark suites on the CPU and every GPU present (or the --device ones), each kernel "
        "checked against a float64 CPU reference. The default quick run takes about 20 s on a 2-core CPU. "
        f"Suites: {', '.join(bench.SUITES)} (default: all).",
    )
    p.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    p.add_argument(
        "--device",
        action="append",
        help="device to compare with the CPU (repeatable; default: every GPU present). The CPU always runs.",
    )
    p.add_argument("--full", action="store_true", help="larger sizes and the real GPT-2 124M: takes much longer")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every measurement with its metadata")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write speed-up and bandwidth plots")
    p.add_argument("--min-time", type=seconds, default=0.2, help="seconds measured per case, at least (default 0.2)")
    p.add_argument("--threads", type=threads, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--matmul-sizes", type=_sizes, metavar="N,N,...", help="square matmul sizes (default 64 ... 8192)")
    p.add_argument(
        "--op-sizes", type=_sizes, metavar="N,N,...", help="element counts of small-ops (default 1e2 ... 1e7)"
    )
    p.add_argument(
        "--token-budget", type=int, default=10_000_000, help="tokens of the GPT-2 job projected (default 10M)"
    )
    p.add_argument(
        "--gpt-size", choices=GPT_SIZES, help="GPT configuration of the gpt2 suite (default small; gpt2 with --full)"
    )
    p.set_defaults(run=run)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(float(s)) for s in text.split(","))
    except (ValueError, OverflowError):  # "abc", "nan"; "inf", "1e400"
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 256,1024, got {text!r}"
        ) from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def _check_memory(cfg: BenchConfig, matmul_sizes: tuple[int, ...] | None, op_sizes: tuple[int, ...] | None) -> None:
    needs = [(n, 3 * n * n * 4, "matmul size", "3 float32 matrices") for n in matmul_sizes or ()]
    needs += [(n, 3 * n * 4, "op size", "3 float32 vectors") for n in op_sizes or ()]
    for device in cfg.devices:
        free = cfg.infos[str(device)].free_memory
        for n, nbytes, what, of in needs:
            if free is not None and nbytes > 0.8 * free:
                raise UsageError(
                    f"{what} {n} needs {fmt_bytes(nbytes)} ({of}) but {device} has {fmt_bytes(free)} free. "
                    "Choose smaller sizes."
                )


def _config(args: argparse.Namespace) -> BenchConfig:
    unknown = [s for s in args.suites if s not in bench.SUITES]
    if unknown:
        raise UsageError(f"unknown suite {', '.join(map(repr, unknown))}; the suites are: {', '.join(bench.SUITES)}.")
    if args.token_budget <= 0:
        raise UsageError(f"--token-budget must be positive, got {args.token_budget}.")
    if args.device:
        devices = [torch.device("cpu")] + [d for d in map(resolve, args.device) if d.type != "cpu"]
    else:
        devices = available_devices()
    devices = list(dict.fromkeys(devices))
    cfg = BenchConfig(
        devices=tuple(devices),
        full=args.full,
        min_time=args.min_time,
        max_time=max(1.0, 5 * args.min_time),
        threads=args.threads,
        token_budget=args.token_budget,
        gpt_size=args.gpt_size,
        infos={str(d): describe(d) for d in devices},
    )
    _check_memory(cfg, args.matmul_sizes, args.op_sizes)
    check_writable(args.json, "--json")
    check_writable(args.plot, "--plot")
    return cfg


def _cases(cfg: BenchConfig, args: argparse.Namespace) -> list[bench.Case]:
    cases: list[bench.Case] = []
    for name in args.suites or QUICK:
        if name == "matmul":
            cases += kernels.matmul(cfg, args.matmul_sizes)
        elif name == "small-ops":
            cases += kernels.small_ops(cfg, args.op_sizes)
        else:
            cases += bench.SUITES[name](cfg)
    return cases


# Display names of Row.metrics keys, with their units.
_METRIC_NAMES = {
    "tflops": "TFLOP/s",
    "pct_peak": "% of peak",
    "gbps": "GB/s",
    "graphed_us": "graph-replayed us",
    "speedup_vs_cpu": "x CPU",
    "created_on_device_us": "on-device us",
    "move_over_direct": "move/direct",
    "ms_per_step_copied": "ms/step copied",
    "ms_per_step_pinned": "ms/step pinned",
    "ms_per_step_resident": "ms/step resident",
    "slowdown_copied": "copied/resident",
    "slowdown_pinned": "pinned/resident",
    "ms_per_step": "ms/step",
    "tokens_per_s": "tokens/s",
    "mfu_pct": "MFU %",
    "projected_s": "budget s",
}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _table(suite: str, rows: list[Row]) -> Table:
    metric_keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
    table = Table(title=suite, title_justify="left")
    for col in ("case", "device", "dtype", "median", "IQR/med", *(_METRIC_NAMES.get(k, k) for k in metric_keys)):
        table.add_column(col, justify="left" if col in ("case", "device", "dtype") else "right")
    table.add_column("checked / note")
    for r in rows:
        m = r.measurement
        if r.error:
            remark = Text(r.error, style="red")
        else:
            remark = Text(r.note or ("ok" if r.check else ""))
            if m is not None and m.warning:
                remark.append(" (noisy)", style="yellow")
        table.add_row(
            r.case,
            r.device,
            r.dtype,
            fmt_seconds(m.median) if m else "-",
            f"{m.spread:.0%}" if m else "-",
            *(_fmt(r.metrics.get(k)) for k in metric_keys),
            remark,
        )
    return table


def run(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args)
    except UsageError as e:
        console(stderr=True).print(f"tangtoc bench: error: {e}", markup=False)
        return 2
    out = console()
    names = ", ".join(f"{d} ({cfg.infos[str(d)].name})" for d in cfg.devices)
    out.print(
        f"tangtoc bench on {names}; torch {torch.__version__}, CPU threads: {cfg.threads or torch.get_num_threads()}",
        markup=False,
    )
    if not cfg.accelerators:
        out.print("No GPU present: the CPU is measured alone, and GPU comparisons are reported as not measured.")
    gpus = {str(d): t for d in cfg.accelerators if d.type == "cuda" and (t := telemetry.read(d.index or 0))}
    for name, t in gpus.items():  # clocks, throttling and the link explain numbers the datasheet cannot
        out.print(f"{name} now: {t.summary()}", markup=False, soft_wrap=True)
    if args.full:
        out.print("--full: sizes up to 8192 and the real GPT-2 124M; this takes several minutes, more on a CPU.")
    cases = _cases(cfg, args)
    rows: list[Row] = []
    claims: list[Claim] = []
    unwritten: dict[Path, str] = {}
    watch = Stopwatch()
    meta = report.metadata(cfg)
    meta["telemetry"] = {name: t.to_dict() for name, t in gpus.items()}

    def save(final: bool) -> None:
        """Rewrite the JSON with every row so far, so a run killed part-way still leaves its measurements."""
        nonlocal claims
        report.add_speedups(rows)
        claims = seed_claims(rows, cpu_threads=meta["threads"], default_threads=DEFAULT_THREADS)
        meta["wall_s"] = watch.lap()[1]
        meta["cases_done"], meta["cases_planned"] = len(rows), len(cases)
        # A file that cannot be written (disk full, folder gone read-only) must not lose the measurements: the
        # tables are still printed, and the failure is reported once, at the end, with exit status 1.
        for path, write in ((args.json, lambda: report.write_json(args.json, rows, meta, claims)),
                            (args.plot if final and rows else None, lambda: report.plot(args.plot, rows))):  # fmt: skip
            if path is None:
                continue
            try:
                write()
                unwritten.pop(path, None)
            except OutputError as e:
                unwritten[path] = str(e)

    try:
        # SIGTERM (a `timeout`, a scheduler) ends the run like Ctrl-C: the rows measured so far are written.
        with (
            sigterm_as_interrupt(),
            Progress(
                TextColumn("{task.description:<48}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=out,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("starting", total=len(cases))
            for case in cases:
                progress.update(task, description=case.description)
                rows.append(bench.run_case(case))
                progress.advance(task)
                save(final=False)
    finally:
        # Partial results are written even when a case crashes the process or the user presses Ctrl-C.
        save(final=True)
    for suite in dict.fromkeys(r.suite for r in rows):
        out.print(_table(suite, [r for r in rows if r.suite == suite]))
    claims_table = Table(title="The article's claims vs measured here", title_justify="left")
    for col in ("§", "claim", "rule", "measured here", "verdict"):
        claims_table.add_column(col)
    for c in claims:
        claims_table.add_row(c.section, c.claim, c.rule, c.measured, c.verdict)
    out.print(claims_table)
    out.print(f"CPU baseline: {meta['threads']} thread(s) on {meta['cpu_cores']} core(s).", markup=False)
    noisy = sum(1 for r in rows if r.measurement and r.measurement.warning)
    if noisy:
        out.print(noisy_note(noisy), markup=False)
    written = [str(p) for p in (args.json, args.plot) if p and p not in unwritten]
    out.print(f"done in {meta['wall_s']:.0f} s" + (f"; wrote {', '.join(written)}" if written else ""))
    for why in unwritten.values():
        console(stderr=True).print(f"tangtoc bench: error: {why} The measurements are in the tables above.",
                                   markup=False)  # fmt: skip
    failed = [r for r in rows if r.error]
    return 1 if failed or unwritten else 0
