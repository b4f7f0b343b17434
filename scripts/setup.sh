#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install rembert-convert with everything the tests need
# (extras test = TensorFlow + test tools, interop = transformers 4.57). VENV picks the environment's folder
# (default .venv). Safe to run again: it only installs what is missing.
#
# torch is pinned in one place, constraints.txt. From the standard package index torch==2.13.0 on Linux is
# the CUDA build (about 20 nvidia-* packages); for the CPU-only build set
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$VENV/bin/pip" install --quiet -c constraints.txt torch --index-url "$TORCH_INDEX_URL"
fi
"$VENV/bin/pip" install --quiet -c constraints.txt -e ".[test,interop]"
