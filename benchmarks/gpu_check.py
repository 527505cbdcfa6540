"""Every GPU figure that matters, in one call that survives the device machine's limits.

The GPU machine this project can borrow is lent for 15 minutes in all (1-3 of them to start it), one command may
run 10 minutes, and only 8 files come back from its output folder. So this harness runs its steps most important
first, each under a time limit (SIGTERM, then SIGKILL ``GRACE_S`` later), inside a 7-minute plan; skips a step
that cannot finish in what is left, and says so; and after every step rewrites the three files it leaves in OUT:

* ``summary.json``: every step (name, status, seconds, limit) and every key figure with its unit, its goal and a
  verdict (``met``, ``missed``, ``not measured``; ``recorded`` for a figure kept without a goal);
* ``summary.txt``: the table printed last;
* ``results.tgz``: every log, JSON, PNG and the JUnit XML of the steps so far.

Each step saves what it measured as it goes and turns SIGTERM into a clean exit that writes its partial result,
so a step cut short, or the whole call, still leaves its figures. ``--rehearse`` runs every step on the CPU with
the smallest sizes (CUDA hidden), writing the same files, so the harness itself is tested where there is no GPU.

Run:  bash benchmarks/gpu_check.sh OUT [--rehearse] [--only STEP,...] [--budget-s S] [--plan]
Exit status: 0 when every step that ran finished; 1 when a step failed, timed out or was interrupted (the summary
lists the goals missed either way); 2 on a usage error; 143 when the harness itself was terminated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _gpu_figures import (
    Figure,
    advise_figures,
    ddp_figures,
    device_figures,
    matmul_figures,
    pytest_figures,
    small_ops_figures,
    train_figures,
    transfer_figures,
)

ROOT = Path(__file__).resolve().parent.parent
GRACE_S = 5  # between SIGTERM (the step writes its partial result) and SIGKILL
BUDGET_S = {"gpu": 420, "rehearse": 175}  # the whole run: 7 minutes on the GPU, under 3 on the CPU
OUT_FILES = ("summary.json", "summary.txt", "results.tgz")
SCHEMA_VERSION = 1  # of summary.json; equal to tangtoc.schemas.SCHEMAS["tangtoc.gpu_check"] (a test checks it)

# -- the plan ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """A command per mode (split like a shell line; ``{py}`` and ``{work}`` filled in per token), its time limits,
    and the function that reads its figures from the work folder."""

    name: str
    what: str
    limit_s: int  # on the GPU
    rehearse_limit_s: int
    gpu: str
    rehearse: str
    figures: Callable[[Path], list[Figure]]
    ok_codes: tuple[int, ...] = (0,)

    def limit(self, rehearsal: bool) -> int:
        return self.rehearse_limit_s if rehearsal else self.limit_s

    def command(self, rehearsal: bool, py: str, work: Path) -> list[str]:
        return [a.format(py=py, work=work) for a in shlex.split(self.rehearse if rehearsal else self.gpu)]


BENCH = "{py} -m tangtoc bench"
PYTEST = "{py} -m pytest -m cuda -v -p no:cacheprovider -o addopts= --timeout 60 --junitxml {work}/junit.xml tests"
# doctor exits 1 when it finds problems in the environment: a finding to read, not a failed step
DOCTOR = "bash -c '(nvidia-smi || true) && exec {py} -m tangtoc doctor --json > {work}/doctor.json'"
TRAIN = "{py} benchmarks/gpu_train.py --json {work}/gpu_train.json"
ADVISE = "{py} benchmarks/advise_check.py --json {work}/advise_check.json"
DDP = "{py} benchmarks/ddp_overhead.py --json {work}/ddp_overhead.json"
SMALL_OPS = f"{BENCH} small-ops residency --json {{work}}/small_ops.json"

#: Most important first. GPU limits add up to 405 s of the 420 s budget; rehearsal limits to 170 of 175
#: (generous: a loaded CI machine takes 3-4 s to import torch in each step; the run itself takes about 50 s). The CUDA
#: tests get 90 s: ~50 of them, the audit corpus and the real transformers models among them.
PLAN = (
    Step("device", "nvidia-smi; tangtoc doctor --json: the GPU and its published peaks", 15, 20, DOCTOR, DOCTOR,
         device_figures, ok_codes=(0, 1)),
    Step("matmul", "matmul fp32 / TF32 / bf16: TFLOP/s and % of peak", 40, 20,
         f"{BENCH} matmul --matmul-sizes 2048,4096,8192 --json {{work}}/matmul.json",
         f"{BENCH} matmul --matmul-sizes 64,128 --min-time 0.02 --json {{work}}/matmul.json", matmul_figures),
    Step("transfer", "host<->device copies, pageable/pinned, blocking/not, both ways, 4 KiB-256 MiB", 35, 20,
         f"{BENCH} transfer --json {{work}}/transfer.json",
         f"{BENCH} transfer --min-time 0.02 --json {{work}}/transfer.json", transfer_figures),
    Step("gpt2-train", "GPT-2 124M with fit(): bf16, torch.compile, fused AdamW", 120, 25, TRAIN,
         f"{TRAIN} --device cpu --size tiny --steps 20 --batch-size 2 --precision fp32 --no-compile", train_figures),
    Step("pytest-cuda", "the CUDA tests (JUnit XML, 60 s per test)", 90, 30, PYTEST, PYTEST, pytest_figures),
    Step("advise-check", "tangtoc advise: predicted vs measured step", 40, 20, f"{ADVISE} --budget-s 25",
         f"{ADVISE} --dry-run-on-cpu --budget-s 5", advise_figures),
    Step("small-ops", "small ops (eager and graph-replayed) and residency", 35, 15,
         f"{SMALL_OPS} --plot {{work}}/small_ops.png", f"{SMALL_OPS} --op-sizes 100,10000 --min-time 0.02",
         small_ops_figures),
    Step("ddp", "DDP world size 1 vs plain fit() (NCCL)", 30, 20, f"{DDP} --gpu --rounds 3",
         f"{DDP} --single --device cpu --size tiny --rounds 1", ddp_figures),
)  # fmt: skip


# -- running it -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class StepRecord:
    name: str
    what: str
    limit_s: int
    status: str = "pending"  # pending, running, ok, failed, timed out, interrupted, skipped
    seconds: float | None = None
    exit_code: int | None = None
    detail: str = ""
    log: str = ""


@dataclass(slots=True)
class Harness:
    out: Path
    work: Path
    rehearsal: bool
    budget_s: float
    plan: tuple[Step, ...]
    steps: list[StepRecord]  # one per step of the plan, in its order
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    figures: list[Figure] = field(default_factory=list)
    child: subprocess.Popen[bytes] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def collect(self) -> None:
        """Figures of every step that has run, judged; a parser never stops the harness."""
        figures = []
        for step, record in zip(self.plan, self.steps, strict=True):
            if record.status in ("pending", "skipped"):
                continue
            try:
                figures += [f.judge(self.rehearsal) for f in step.figures(self.work)]
            except Exception as e:  # a torn or unexpected output is a finding, not a crash of the harness
                figures.append(
                    Figure(
                        step.name,
                        "figures",
                        None,
                        "",
                        note=f"could not read: {type(e).__name__}: {e}",
                        verdict="not measured",
                    )
                )
        self.figures = figures

    def summary(self) -> dict[str, Any]:
        failed = [s.name for s in self.steps if s.status in ("failed", "timed out", "interrupted")]
        return {
            "schema": "tangtoc.gpu_check",
            "schema_version": SCHEMA_VERSION,
            "harness": "tangtoc benchmarks/gpu_check.py",
            "mode": "rehearsal on the CPU" if self.rehearsal else "gpu",
            "started": self.started_at,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(self.elapsed(), 1),
            "budget_s": self.budget_s,
            "plan_s": sum(s.limit_s for s in self.steps),
            "complete": all(s.status not in ("pending", "running") for s in self.steps),
            "steps_failed": failed,
            "goals_missed": [f"{f.step}: {f.name}" for f in self.figures if f.verdict == "missed"],
            "steps": [asdict(s) for s in self.steps],
            "figures": [f.to_dict() for f in self.figures],
        }

    def write(self) -> None:
        """Rewrite the three files in OUT, each replaced atomically: a reader (or a kill) never sees half a file."""
        self.collect()
        data = self.summary()
        _replace(self.out / "summary.json", json.dumps(data, indent=2).encode())
        _replace(self.out / "summary.txt", render(data).encode())
        tmp = self.out / ".results.tgz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.work, arcname="results")
        os.replace(tmp, self.out / "results.tgz")

    def run_step(self, step: Step, record: StepRecord, py: str, env: dict[str, str]) -> None:
        limit = record.limit_s
        left = self.budget_s - self.elapsed()
        if left < limit:
            record.status, record.detail = (
                "skipped",
                f"{left:.0f} s of the {self.budget_s:.0f} s budget left, needs {limit} s",
            )
            return
        log = self.work / "logs" / f"{step.name}.log"
        record.status, record.log = "running", f"results/logs/{log.name}"
        self.write()
        print(f"[{self.elapsed():5.0f} s] {step.name}: {step.what} (limit {limit} s)", flush=True)
        t0 = time.monotonic()
        with log.open("wb") as f:
            self.child = subprocess.Popen(
                step.command(self.rehearsal, py, self.work),
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
            try:
                code = self.child.wait(timeout=max(1, limit - GRACE_S))
            except subprocess.TimeoutExpired:
                code = self.stop_child()
                record.status, record.detail = "timed out", f"SIGTERM at {limit - GRACE_S} s (limit {limit} s)"
            finally:
                self.child = None
        record.seconds, record.exit_code = round(time.monotonic() - t0, 1), code
        if record.status == "running":
            ok = code in step.ok_codes
            record.status = "ok" if ok else "failed"
            if not ok:
                record.detail = f"exit status {code}; see {record.log}"
        print(f"[{self.elapsed():5.0f} s] {step.name}: {record.status} in {record.seconds:.0f} s", flush=True)

    def stop_child(self) -> int | None:
        """SIGTERM to the step's whole process group (it writes its partial result), SIGKILL after GRACE_S."""
        child = self.child
        if child is None:
            return None
        for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 5)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                break
            try:
                return child.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return child.poll()


def _replace(path: Path, data: bytes) -> None:
    # Not tangtoc.files.write_atomic on purpose: the harness imports nothing of tangtoc (whose import pulls in
    # torch), so a broken tangtoc still leaves a summary saying which step broke. OUT is the harness's own folder.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def render(data: dict[str, Any]) -> str:
    """The table printed last (and kept as summary.txt): steps, then figures with goals and verdicts."""
    lines = [
        f"== tangtoc gpu_check ({data['mode']}), started {data['started']}, {data['elapsed_s']:.0f} s of a "
        f"{data['budget_s']:.0f} s budget ==",
        f"{'step':<13} {'status':<12} {'seconds':>8} {'limit':>6}  detail",
    ]
    for s in data["steps"]:
        secs = "-" if s["seconds"] is None else f"{s['seconds']:.0f}"
        lines.append(f"{s['name']:<13} {s['status']:<12} {secs:>8} {s['limit_s']:>6}  {s['detail']}")
    lines += ["", f"{'figure':<52} {'value':>10} {'unit':<18} {'goal':<30} {'verdict':<12} note"]
    for f in data["figures"]:
        lines.append(
            f"{f['step'] + ': ' + f['name']:<52} {_fmt(f['value']):>10} {f['unit']:<18} "
            f"{f['goal'] or '-':<30} {f['verdict']:<12} {f['note']}"
        )
    lines.append("")
    lines.append("steps failed: " + (", ".join(data["steps_failed"]) or "none"))
    lines.append("goals missed: " + ("; ".join(data["goals_missed"]) or "none"))
    return "\n".join(lines) + "\n"


def plan_text(limits: dict[str, int], rehearsal: bool, budget_s: float) -> str:
    rows = [f"  {i}. {s.name:<13} {limits[s.name]:>4} s  {s.what}" for i, s in enumerate(PLAN, 1)]
    total = sum(limits.values())
    mode = "rehearsal on the CPU" if rehearsal else "GPU"
    return "\n".join(
        [
            f"plan ({mode}), most important first, with each step's limit:",
            *rows,
            f"  total of the limits: {total} s; the budget: {budget_s:.0f} s{'' if total <= budget_s else ' (OVER)'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, nargs="?", default=ROOT / "benchmarks" / "out", help="output folder (OUT)")
    p.add_argument("--rehearse", action="store_true", help="every step on the CPU with the smallest sizes")
    p.add_argument("--only", help="comma-separated steps to run (the others are marked skipped)")
    p.add_argument("--budget-s", type=float, help="the whole run's budget in seconds (default 420; 175 rehearsing)")
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="STEP=S",
        help="another limit for a step, e.g. gpt2-train=200 to rerun a step that timed out (repeatable)",
    )
    p.add_argument("--plan", action="store_true", help="print the plan with its limits and exit")
    args = p.parse_args(argv)
    budget = args.budget_s or BUDGET_S["rehearse" if args.rehearse else "gpu"]
    only = set(args.only.split(",")) if args.only else None
    limits = {s.name: s.limit(args.rehearse) for s in PLAN}
    for item in args.limit:
        name, _, value = item.partition("=")
        if name not in limits or not value.isdigit() or int(value) <= GRACE_S:
            p.error(f"--limit expects STEP=SECONDS with a known step and more than {GRACE_S} s, got {item!r}")
        limits[name] = int(value)
    unknown = sorted((only or set()) - set(limits))
    if unknown:
        p.error(f"unknown step(s) {', '.join(unknown)}; the steps are: {', '.join(limits)}")
    print(plan_text(limits, args.rehearse, budget), flush=True)
    if args.plan:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    stray = [x.name for x in args.out.iterdir() if x.name not in OUT_FILES]
    if stray:  # only 8 files come back from the device machine: OUT holds this harness's three and nothing else
        p.error(f"{args.out} holds other files ({', '.join(stray[:5])}); give an empty folder or this harness's own")
    work = Path(tempfile.mkdtemp(prefix="tangtoc-gpu-check-"))
    (work / "logs").mkdir()
    records = [StepRecord(s.name, s.what, limits[s.name]) for s in PLAN]
    h = Harness(args.out, work, args.rehearse, budget, PLAN, records)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    if args.rehearse:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the rehearsal runs on the CPU even where a GPU is present
        # One thread per step: on a loaded machine (CI, a shared VM) torch's threads wait for each other's
        # descheduled peers at every op, which made a 4 s step take 20 s; the rehearsal tests the harness, not speed.
        env["OMP_NUM_THREADS"] = "1"

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        for step, record in zip(PLAN, records, strict=True):
            if only is not None and step.name not in only:
                record.status, record.detail = "skipped", "not selected (--only)"
                continue
            h.run_step(step, record, sys.executable, env)
            h.write()
    except KeyboardInterrupt as e:
        h.stop_child()
        for r in records:
            if r.status == "running":
                r.status, r.detail = "interrupted", f"the harness received {e or 'SIGINT'}"
            elif r.status == "pending":
                r.status, r.detail = "skipped", "the harness was interrupted"
        code = 143
    finally:
        h.write()
        print(render(h.summary()), end="", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    if code:
        return code
    return 1 if h.summary()["steps_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
