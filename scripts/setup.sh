#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install rembert-convert with everything the tests need
# (extras test = TensorFlow + test tools, interop = transformers 4.57). VENV picks the environment's folder
# (default .venv). Safe to run again: once installed, it installs again only when pyproject.toml or
# constraints.txt changed (the install is editable, so code changes need none), so a set-up machine runs the
# two commands without the package index.
# torch: see scripts/venv.sh (the pin lives in constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
VENV="${VENV:-.venv}"
stamp="$VENV/.rembert-convert-installed"
wanted="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
# Installed means the entry point exists and the packages import from outside the repository (inside it,
# the source folder would import whether or not the project is installed).
installed() {
    local python
    python="$(cd "$VENV/bin" 2>/dev/null && pwd)/python" || return 1
    [ -x "$VENV/bin/convert-rembert" ] \
        && (cd / && "$python" -c "import rembert_convert, torch, tensorflow, transformers, pytest") 2>/dev/null
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && installed; then
    exit 0
fi
make_venv "$VENV"
venv_torch "$VENV"
venv_pip "$VENV" -e ".[test,interop]"
echo "$wanted" > "$stamp"
