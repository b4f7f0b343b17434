#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install rembert-convert with its test extras.
# VENV picks the environment's folder (default .venv). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU build.
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet -e ".[test,interop]"
