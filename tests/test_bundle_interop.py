"""A bundle in transformers 4.57's PyTorch classes, through the Auto classes and the card's own snippet: the
same check (scripts/pt_interop_check.py) that CI runs against transformers 5.x in an environment of its own."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.interop


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_bundle_in_transformers_auto_classes(tmp_path):
    pytest.importorskip("transformers")
    # The card says: with TensorFlow + Keras 3 beside PyTorch (as in this environment), set USE_TF=0.
    result = _run(["scripts/pt_interop_check.py", "--format", "pytorch", "--format", "safetensors"], USE_TF="0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all checks passed" in result.stdout and "FAIL" not in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf_keras")
                    is not None, reason="the USE_TF=0 workaround is about TensorFlow with Keras 3 and no tf-keras")
def test_the_cards_use_tf_workaround_is_needed(tmp_path):
    """The card's note is true: without USE_TF=0, transformers 4.57's pipeline() fails here."""
    transformers = pytest.importorskip("transformers")
    if not transformers.__version__.startswith("4."):
        pytest.skip("the note is about transformers 4.57")
    out = tmp_path / "tiny"
    made = _run(["-m", "rembert_convert.cli", "convert", "examples/tiny-rembert", "-o", str(out),
                 "--format", "safetensors", "--quiet"])
    assert made.returncode == 0, made.stderr
    code = f"import transformers; transformers.pipeline('fill-mask', model={str(out)!r})"
    env = {k: v for k, v in os.environ.items() if k not in ("USE_TF", "USE_TORCH")}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert plain.returncode != 0 and "Keras 3" in plain.stderr
    fixed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                           env={**env, "USE_TF": "0"})
    assert fixed.returncode == 0, fixed.stderr[-2000:]


def test_the_card_snippet_of_a_bundle_without_tokenizer_runs(tiny_ckpt, tmp_path):
    """vocab 99 here: the snippet's ids must come from the vocabulary, not from the full model's specials."""
    pytest.importorskip("transformers")
    from converters.convert import ConvertOptions
    from validation.bundle import bundle_checkpoint, card_snippets

    out = tmp_path / "no-tokenizer"
    bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True), formats=("safetensors",),
                      heads=("RemBertModel", "RemBertForMaskedLM"))
    code = card_snippets((out / "README.md").read_text())["pytorch"]
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "USE_TF": "0"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith(f"{tiny_ckpt.config['vocab_size']}])")
