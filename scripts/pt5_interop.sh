#!/usr/bin/env bash
# Interop check: a bundle in Hugging Face transformers 5.x (PyTorch), as a user gets it from the Auto classes:
# weights and outputs against ours, AutoTokenizer against SentencePiece, fill-mask, the card's usage snippet
# (scripts/pt_interop_check.py says what exactly).
#
# It builds its own environment (default .venv-pt5-interop, gitignored): rembert-convert as a user installs it,
# without extras (no TensorFlow), plus transformers 5.x. torch comes pinned from constraints.txt.
#
#   bash scripts/pt5_interop.sh                                  # build or update the environment, then check
#   PT5_INTEROP_VENV=/tmp/venv bash scripts/pt5_interop.sh --bundle out/tiny-rembert
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
VENV="${PT5_INTEROP_VENV:-.venv-pt5-interop}"
make_venv "$VENV"
venv_torch "$VENV"
venv_pip "$VENV" . "transformers>=5,<6"
# From the repository root, so that the check bundles with this checkout's code.
"$VENV/bin/python" scripts/pt_interop_check.py "$@"
