"""Shared fixtures. Tiny configs use mutually distinct sizes so that a swapped or transposed axis fails on shape."""

from __future__ import annotations

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
