#!/usr/bin/env bash
# Interop check: our tf_model.h5 loads into every TFRemBert* class of Hugging Face transformers 4.57 (the
# last release with TF classes) with no missing or unexpected encoder / MLM-head weights, and the outputs
# match our TF2 reference models within 1e-5.
#
# It builds its own environment (default .venv-tf-interop, gitignored), separate from the project's .venv,
# because transformers' TF classes need Keras 2: tf-keras, installed with --no-deps so that it does not pull
# the full `tensorflow` wheel next to tensorflow-cpu. Torch is not needed.
#
#   bash scripts/tf_interop.sh            # build or update the environment, then run the check
#   TF_INTEROP_VENV=/tmp/venv bash scripts/tf_interop.sh --keep out/interop
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
VENV="${TF_INTEROP_VENV:-.venv-tf-interop}"
make_venv "$VENV"
# tf-keras must have the same minor version as TensorFlow.
venv_pip "$VENV" "tensorflow-cpu==2.21.*" "transformers==4.57.*" "h5py>=3.10" "numpy>=1.26" "google-crc32c>=1.5" \
    "tqdm>=4.66" "click>=8.1" "sentencepiece>=0.2" "protobuf>=3.20"
venv_pip "$VENV" --no-deps "tf-keras==2.21.*"
TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=. "$VENV/bin/python" scripts/tf_interop_check.py "$@"
