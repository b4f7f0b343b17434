"""Regenerate the shipped example `examples/tiny-rembert/`: a tiny original-format RemBERT TF1 checkpoint
(with Adam slots, an NSP head and global_step, as Google's pretraining checkpoints have them), its
bert_config.json, and a 512-piece SentencePiece model. Deterministic: rerunning rewrites the same values.

    python examples/make_example.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from testkit.spm_models import train_example_model
from testkit.synthetic_checkpoint import write_synthetic_checkpoint

EXAMPLE_DIR = Path(__file__).resolve().parent / "tiny-rembert"

# Mutually distinct sizes, like the test configs, and a vocabulary that matches the SentencePiece model.
EXAMPLE_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 72,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "input_embedding_size": 24,
    "output_embedding_size": 40,
}


def main() -> None:
    if EXAMPLE_DIR.exists():
        shutil.rmtree(EXAMPLE_DIR)
    write_synthetic_checkpoint(EXAMPLE_DIR, EXAMPLE_CONFIG, seed=2021, step=3, optimizer_slots=True,
                               with_nsp=True)
    train_example_model(EXAMPLE_DIR / "sentencepiece.model")
    for path in sorted(EXAMPLE_DIR.iterdir()):
        print(f"{path.relative_to(EXAMPLE_DIR.parent)}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
