#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite (the README's test command; CI runs it too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q "$@"
