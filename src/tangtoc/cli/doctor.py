"""``tangtoc doctor``: what this machine and PyTorch build can do, and what to fix. Exit 0 healthy, 1 problems."""

from __future__ import annotations

import argparse

from rich.markup import escape

from tangtoc import doctor
from tangtoc.cli.render import console, fmt_bytes, fmt_flops, to_json
from tangtoc.device import DeviceInfo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="report the environment (paste it into an issue) and the problems to fix",
        description="Report PyTorch, devices and settings, then list problems with their fixes. "
        "Exit status: 0 healthy, 1 problems found, 2 usage error.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(run=run)


def _device_line(info: DeviceInfo) -> str:
    parts = [f"{info.label}: {info.name}"]
    if info.total_memory is not None:
        parts.append(f"{fmt_bytes(info.total_memory)} total, {fmt_bytes(info.free_memory)} free")
    if info.compute_capability:
        parts.append(f"compute capability {info.compute_capability[0]}.{info.compute_capability[1]}")
        parts.append(f"{info.multiprocessors} SMs")
    if info.kind == "cuda":
        tf32 = "on" if info.tf32_matmul else "off"
        parts.append(f"bf16 {'yes' if info.bf16_supported else 'no'}, TF32 matmul {tf32}")
        if info.peak_flops:
            bf16 = info.peak_flops.get("bfloat16")
            parts.append(f"peak bf16 {fmt_flops(bf16)}, {info.memory_bandwidth / 1e9:.0f} GB/s")
        else:
            parts.append("peak rates unknown (not in tangtoc's hardware table)")
    if info.kind == "cpu":
        parts.append(f"{info.cpu_cores} cores, {info.torch_threads} torch threads")
    return " | ".join(parts)


def run(args: argparse.Namespace) -> int:
    report = doctor.diagnose()
    if args.json:
        print(to_json(report.to_dict()))
        return 0 if report.healthy else 1
    env = report.environment
    out = console()
    lines = [
        f"tangtoc {env.packages.get('tangtoc')} | {doctor.torch_summary()} | Python {env.python}",
        f"platform: {env.platform}",
        f"cpu: {env.cpu_model} ({env.cpu_cores} cores)",
        "packages: " + ", ".join(f"{k} {v}" for k, v in env.packages.items() if v and k not in ("tangtoc", "torch")),
        f"NVIDIA driver: {'present' if env.cuda.driver_present else 'not found'}; "
        f"CUDA devices visible: {env.cuda.device_count}",
        *(f"device {_device_line(d)}" for d in env.devices),
        *(f"telemetry cuda:{t.index}: {t.summary()}" for t in env.telemetry),
        "env: " + (", ".join(f"{k}={v}" for k, v in env.env_vars.items()) or "(none of the variables tangtoc reads)"),
        f"/dev/shm: {fmt_bytes(env.shm_bytes) if env.shm_bytes is not None else 'none'}; "
        f"C compiler: {env.c_compiler or 'none'}; C++ compiler: {env.cxx_compiler or 'none'}",
    ]
    out.print("[bold]Environment[/bold] (copy this block into your issue)")
    out.print("```", markup=False)
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)
    out.print("```", markup=False)
    faults = [p for p in report.problems if p.severity == "problem"]
    advice = [p for p in report.problems if p.severity != "problem"]
    if faults:
        out.print(f"[bold red]{len(faults)} problem(s) found[/bold red]")
    else:
        out.print("[green]No problems found.[/green]")
    for heading, items in (("", faults), ("Advice for your training script", advice)):
        if heading and items:
            out.print(f"[bold]{heading}[/bold]")
        for n, p in enumerate(items, 1):
            out.print(f"[bold]{n}. {escape(p.title)}[/bold]", soft_wrap=True)
            out.print(f"   why: {p.detail}", markup=False, soft_wrap=True)
            out.print(f"   [green]fix:[/green] {escape(p.fix)}", soft_wrap=True)
    return 0 if report.healthy else 1
