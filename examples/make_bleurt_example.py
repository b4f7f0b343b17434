"""Regenerate the shipped BLEURT-shaped example `examples/tiny-bleurt/`: a tiny TF1 SavedModel laid out like
BLEURT-20 (saved_model.pb, variables/variables.*, bert_config.json, sent_piece.model, bleurt_config.json):
a RemBERT encoder with distilled-style sizes, the pooler, and BLEURT's regression head `dense/{kernel,bias}`
[hidden, 1] on the pooled output; no MLM head. Written by TensorFlow's own SavedModel builder; the values
are synthetic (seeded), so its scores mean nothing. Deterministic: rerunning rewrites the same values.

    python examples/make_bleurt_example.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from testkit.finetuned import write_tf1_saved_model
from testkit.spm_models import train_example_model

EXAMPLE_DIR = Path(__file__).resolve().parent / "tiny-bleurt"

# Sizes distinct from each other and from tiny-rembert; like BLEURT-20's, the config has no
# output_embedding_size (no MLM head) and spells the input embedding size `embedding_size`.
EXAMPLE_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 40,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 56,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "embedding_size": 16,
}


def main() -> None:
    if EXAMPLE_DIR.exists():
        shutil.rmtree(EXAMPLE_DIR)
    with tempfile.TemporaryDirectory() as scratch:
        spm = train_example_model(Path(scratch) / "sent_piece.model")
        write_tf1_saved_model(EXAMPLE_DIR, EXAMPLE_CONFIG, "bleurt", seed=2020, spm_model=spm)
    for path in sorted(EXAMPLE_DIR.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(EXAMPLE_DIR.parent)}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
