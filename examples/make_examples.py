"""Regenerate the shipped examples. Deterministic: rerunning rewrites the same values.

- `examples/tiny-rembert/`: a tiny original-format RemBERT TF1 checkpoint (with Adam slots, an NSP head and
  global_step, as Google's pretraining checkpoints have them), its bert_config.json, and a 512-piece
  SentencePiece model.
- `examples/tiny-bleurt/`: a tiny TF1 SavedModel laid out like BLEURT-20 (saved_model.pb, variables/variables.*,
  bert_config.json, sent_piece.model, bleurt_config.json): a RemBERT encoder with distilled-style sizes, the
  pooler, and BLEURT's regression head `dense/{kernel,bias}` [hidden, 1] on the pooled output; no MLM head.
  Written by TensorFlow's own SavedModel builder; the values are synthetic (seeded), so its scores mean nothing.

    python examples/make_examples.py                 # both
    python examples/make_examples.py tiny-bleurt     # one
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from testkit.finetuned import write_tf1_saved_model
from testkit.spm_models import train_example_model
from testkit.synthetic_checkpoint import write_synthetic_checkpoint

EXAMPLES_DIR = Path(__file__).resolve().parent

# Mutually distinct sizes, like the test configs, and a vocabulary that matches the SentencePiece model.
REMBERT_CONFIG = {
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

# Sizes distinct from each other and from tiny-rembert; like BLEURT-20's, the config has no
# output_embedding_size (no MLM head) and spells the input embedding size `embedding_size`.
BLEURT_CONFIG = {
    **{key: REMBERT_CONFIG[key] for key in ("vocab_size", "num_attention_heads", "hidden_act", "hidden_dropout_prob",
                                           "attention_probs_dropout_prob", "max_position_embeddings",
                                           "type_vocab_size", "initializer_range")},
    "hidden_size": 40,
    "num_hidden_layers": 3,
    "intermediate_size": 56,
    "embedding_size": 16,
}
BLEURT_SEED = 2020


def write_tiny_rembert(directory: Path) -> None:
    write_synthetic_checkpoint(directory, REMBERT_CONFIG, seed=2021, step=3, optimizer_slots=True, with_nsp=True)
    train_example_model(directory / "sentencepiece.model")


def write_tiny_bleurt(directory: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        spm = train_example_model(Path(scratch) / "sent_piece.model")
        write_tf1_saved_model(directory, BLEURT_CONFIG, "bleurt", seed=BLEURT_SEED, spm_model=spm)


EXAMPLES: dict[str, Callable[[Path], None]] = {"tiny-rembert": write_tiny_rembert, "tiny-bleurt": write_tiny_bleurt}


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(EXAMPLES))
    if unknown:
        sys.exit(f"error: no example {', '.join(unknown)}; choose from {', '.join(EXAMPLES)}")
    for name in names or list(EXAMPLES):
        directory = EXAMPLES_DIR / name
        if directory.exists():
            shutil.rmtree(directory)
        EXAMPLES[name](directory)
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                print(f"{path.relative_to(EXAMPLES_DIR)}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
