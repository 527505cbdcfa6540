#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one call of under 8 minutes: the CUDA tests and the GPU
# benchmarks. Logs and JSON go into the folder named by the first argument (default benchmarks/out/);
# a short table is printed last. Runs from the source tree (PYTHONPATH=src), nothing installed, so it
# works on a machine with torch but no package registry:  bash benchmarks/gpu_check.sh "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out}
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
declare -a rows=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, remember the status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  rows+=("$(printf '%-22s %-8s %4ss  %s' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAIL($rc)")" $((SECONDS - t0)) "$out/$name.log")")
}

# Time limits add up to under 8 minutes (the typical run is far shorter).
step nvidia-smi 10 nvidia-smi
step doctor 20 "$py" -m tangtoc doctor --json
step pytest-cuda 80 "$py" -m pytest -m cuda -q -p no:cacheprovider -o addopts="" tests
step move-overhead 25 "$py" benchmarks/move_overhead.py --quick --json "$out/move_overhead.json"
step bench-quick 90 "$py" -m tangtoc bench --json "$out/bench.json" --plot "$out/bench.png"
step advise-check 55 "$py" benchmarks/advise_check.py --json "$out/advise_check.json"
step gpu-train 110 "$py" benchmarks/gpu_train.py --json "$out/gpu_train.json"
step guard-overhead 20 "$py" benchmarks/guard_overhead.py --quick --json "$out/guard_overhead.json"
step audit-overhead 20 "$py" benchmarks/audit_overhead.py --quick --json "$out/audit_overhead.json"
step ddp-overhead 40 "$py" benchmarks/ddp_overhead.py --gpu --json "$out/ddp_overhead.json"

echo
echo "== tangtoc gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) =="
tail -n 1 "$out/pytest-cuda.log" | sed 's/^/pytest -m cuda: /'  # pytest's summary is its last line
grep -E "Verdict" "$out/move-overhead.log" | sed 's/^/move_overhead: /'
grep -E "Verdict" "$out/advise-check.log" | sed 's/^/advise_check: /'
grep -E "steady state|goal" "$out/gpu-train.log" | sed 's/^/gpu_train: /'
grep -E "Verdict|goal" "$out/guard-overhead.log" "$out/audit-overhead.log" | tail -n 4
grep -E "DDP of world size 1" "$out/ddp-overhead.log" | sed 's/^/ddp_overhead:/'
"$py" - "$out/bench.json" <<'PY' || true
import json, sys
data = json.load(open(sys.argv[1]))
best = {}
for r in data["rows"]:
    s = (r["metrics"] or {}).get("speedup_vs_cpu")
    if s and (r["suite"] not in best or s > best[r["suite"]][0]):
        best[r["suite"]] = (s, f'{r["case"]} {r["dtype"]} on {r["device"]}')
for suite, (s, where) in best.items():
    print(f"bench {suite}: best GPU/CPU speed-up {s:.1f}x ({where})")
for c in data["seed_claims"]:
    print(f"seed claim: {c['claim']}: {c['measured']} -> {c['verdict']}")
PY
printf '%s\n' "${rows[@]}"
