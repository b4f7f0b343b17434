#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install rembert-convert with everything the tests need
# (extras test = TensorFlow + test tools, interop = transformers 4.57). VENV picks the environment's folder
# (default .venv). Safe to run again: it only installs what is missing.
# torch: see scripts/venv.sh (the pin lives in constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
VENV="${VENV:-.venv}"
make_venv "$VENV"
venv_torch "$VENV"
venv_pip "$VENV" -e ".[test,interop]"
