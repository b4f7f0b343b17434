"""Shared fixtures. Tiny configs use mutually distinct sizes so that a swapped or transposed axis fails on shape."""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import pytest

# vocab 99, hidden 32, 3 layers, 4 heads (head size 8), input embedding 18, output embedding 43,
# intermediate 37, 40 positions, 2 token types: no two sizes are equal.
TINY_ORIGINAL_CONFIG = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "input_embedding_size": 18,
    "output_embedding_size": 43,
}


@pytest.fixture
def tiny_original_config() -> dict:
    return dict(TINY_ORIGINAL_CONFIG)


class TinyCheckpoint(NamedTuple):
    prefix: pathlib.Path  # <directory>/model.ckpt-3
    directory: pathlib.Path  # also holds `checkpoint` and `bert_config.json`
    config: dict  # the original config (TINY_ORIGINAL_CONFIG)
    variables: dict  # float32 model values by original name (no slots, no global_step)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """A synthetic original-format checkpoint of TINY_ORIGINAL_CONFIG with Adam slots (seed 0), written once
    per session. Treat it as read-only: other tests share it."""
    from testkit.synthetic_checkpoint import synthetic_variables, write_synthetic_checkpoint  # imports TensorFlow

    directory = tmp_path_factory.mktemp("tiny_ckpt")
    config = dict(TINY_ORIGINAL_CONFIG)
    prefix = write_synthetic_checkpoint(directory, config, seed=0, optimizer_slots=True)
    return TinyCheckpoint(prefix, directory, config, synthetic_variables(config, seed=0))


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Tokenizer files converted from a 512-piece unigram model trained on the probe corpus (read-only)."""
    from testkit.spm_models import train_sentencepiece
    from converters.tokenizer import convert_tokenizer

    root = tmp_path_factory.mktemp("tok")
    model = train_sentencepiece(root / "m.model", model_type="unigram", vocab_size=512)
    convert_tokenizer(model, root / "out", probe_lines=10)
    return root / "out"


@pytest.fixture(scope="session")
def pair(tok_dir: pathlib.Path):
    """(slow, fast) reference tokenizers loaded from `tok_dir`."""
    from rembert_ref.tokenization import RemBertTokenizer, RemBertTokenizerFast

    return RemBertTokenizer.from_pretrained(tok_dir), RemBertTokenizerFast.from_pretrained(tok_dir)
