#!/usr/bin/env bash
# Create the virtual environment (default .venv) and install tangtoc with its test tools.
# torch is installed only when it is missing: a PyTorch you already have (say a CUDA build) is kept,
# by letting the environment see the system's packages. Otherwise TANGTOC_TORCH is installed; its
# default pins the CPU build that these machines keep on disk, so nothing multi-GB is downloaded.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
torch_spec=${TANGTOC_TORCH:-torch==2.13.0}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: tangtoc needs Python >= 3.10; $python is $("$python" --version 2>&1). Set PYTHON=python3.11." >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c 'import torch' 2>/dev/null; then
    echo "setup: using the torch already installed for $python ($("$python" -c 'import torch; print(torch.__version__)'))"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "setup: installing $torch_spec"
  pip install "$torch_spec"
fi
pip install -e ".[dev]"
