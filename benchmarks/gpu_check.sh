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

step nvidia-smi 20 nvidia-smi
step doctor 60 "$py" -m tangtoc doctor --json
cp "$out/doctor.log" "$out/doctor.json" 2>/dev/null
step pytest-cuda 240 "$py" -m pytest -m cuda -q -p no:cacheprovider -o addopts="" tests
step move-overhead 120 "$py" benchmarks/move_overhead.py --quick --json "$out/move_overhead.json"

echo
echo "== tangtoc gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) =="
grep -m1 -E "passed|failed|error" "$out/pytest-cuda.log" | sed 's/^/pytest -m cuda: /'
grep -E "to_device|verdict|goal" "$out/move-overhead.log" | tail -n 6
printf '%s\n' "${rows[@]}"
