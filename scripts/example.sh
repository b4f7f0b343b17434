#!/usr/bin/env bash
# Set up the environment if needed, then bundle the shipped example checkpoint into out/tiny-rembert
# (pytorch_model.bin, model.safetensors, tf_model.h5, tokenizer files, config and conversion report, parity
# report, model card and SHA256SUMS), parity-checked.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
"$VENV/bin/convert-rembert" bundle examples/tiny-rembert -o out/tiny-rembert --force "$@"
