#!/usr/bin/env bash
# Every CUDA test and GPU benchmark in one call of at most 7 minutes, most important first; after every step it
# rewrites summary.json, summary.txt and results.tgz in OUT (3 files: the device machine returns at most 8).
# Runs from the source tree (nothing installed, no package registry needed):
#   bash benchmarks/gpu_check.sh OUT              on a machine with an NVIDIA GPU
#   bash benchmarks/gpu_check.sh OUT --rehearse   the same steps on the CPU, smallest sizes, under 3 minutes
#   bash benchmarks/gpu_check.sh OUT --plan       the plan and each step's time limit
# The harness itself is benchmarks/gpu_check.py (see its docstring); PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
