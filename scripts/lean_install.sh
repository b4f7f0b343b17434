#!/usr/bin/env bash
# The lean install: `pip install .` with no extras (no TensorFlow) converts the shipped example to every format,
# tf_model.h5 included (h5py writes it), and verifies PyTorch and safetensors; verifying tf_model.h5 or importing
# rembert_ref.tf_model is a one-line error that names the [tf] extra. CI runs it in a fresh environment.
#
#   LEAN_VENV=/tmp/venv-lean bash scripts/lean_install.sh      # default .venv-lean (gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
VENV="${LEAN_VENV:-.venv-lean}"
make_venv "$VENV"
venv_torch "$VENV"
venv_pip "$VENV" .
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cli="$VENV/bin/convert-rembert"
fail() { echo "FAIL  $*"; exit 1; }

"$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)" \
    || fail "the lean install pulled in TensorFlow"
echo "PASS  pip install . brings no TensorFlow"

"$cli" convert examples/tiny-rembert -o "$work/all" --quiet
for name in pytorch_model.bin model.safetensors tf_model.h5 tokenizer.json tokenizer_config.json \
        special_tokens_map.json sentencepiece.model config.json conversion_report.json; do
    [ -s "$work/all/$name" ] || fail "convert did not write $name"
done
echo "PASS  convert writes every format without TensorFlow"

"$cli" verify examples/tiny-rembert "$work/all" --format pytorch --format safetensors > "$work/verify.log" \
    || fail "verify: $(tail -1 "$work/verify.log")"
echo "PASS  $(tail -1 "$work/verify.log")"

set +e
"$cli" verify examples/tiny-rembert "$work/all" > "$work/out.log" 2> "$work/err.log"
status=$?
set -e
[ "$status" -eq 2 ] && [ "$(wc -l < "$work/err.log")" -eq 1 ] && grep -q "rembert-convert\[tf\]" "$work/err.log" \
    || fail "verify of tf_model.h5 without TensorFlow: exit $status, $(cat "$work/err.log")"
echo "PASS  verify of tf_model.h5 without TensorFlow: $(cat "$work/err.log")"

if "$VENV/bin/python" -c "import rembert_ref.tf_model" 2> "$work/err.log"; then
    fail "rembert_ref.tf_model imported without TensorFlow"
fi
grep -q "rembert-convert\[tf\]" "$work/err.log" || fail "import error does not name the extra: $(tail -1 "$work/err.log")"
echo "PASS  import rembert_ref.tf_model without TensorFlow: $(tail -1 "$work/err.log")"
