"""RemBertConfig: translation of Google's bert_config.json and the Hugging Face config.json round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rembert_ref.errors import UserError
from rembert_ref.config import RemBertConfig
from tests.conftest import TINY_ORIGINAL_CONFIG


def test_from_original_translates_every_size_and_the_activation():
    tanh = RemBertConfig.from_original(TINY_ORIGINAL_CONFIG)
    assert (tanh.vocab_size, tanh.hidden_size, tanh.num_hidden_layers, tanh.num_attention_heads) == (99, 32, 3, 4)
    assert (tanh.input_embedding_size, tanh.output_embedding_size, tanh.intermediate_size) == (18, 43, 37)
    assert (tanh.max_position_embeddings, tanh.type_vocab_size, tanh.head_size) == (40, 2, 8)
    assert tanh.hidden_act == "gelu_new"
    assert RemBertConfig.from_original(TINY_ORIGINAL_CONFIG, activation="exact").hidden_act == "gelu"


def test_embedding_size_is_an_alias_of_input_embedding_size():
    values = dict(TINY_ORIGINAL_CONFIG)
    values["embedding_size"] = values.pop("input_embedding_size")
    assert RemBertConfig.from_original(values).input_embedding_size == 18


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "lacks hidden_size"),
        ({"input_embedding_size": None, "output_embedding_size": None}, "for a BERT checkpoint .* BERT conversion"),
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"num_attention_heads": 5}, "not a multiple of num_attention_heads"),
    ],
)
def test_bad_original_configs(change, message):
    values = {**TINY_ORIGINAL_CONFIG, **change}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(UserError, match=message):
        RemBertConfig.from_original(values)


def test_hf_json_round_trip_keeps_unknown_keys_and_fixes_stale_label_maps(tmp_path):
    config = RemBertConfig.from_original(TINY_ORIGINAL_CONFIG)
    values = config.to_dict()
    assert values["model_type"] == "rembert" and values["architectures"] == ["RemBertForMaskedLM"]
    values["task_specific_params"] = {"x": 1}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    loaded = RemBertConfig.from_json_file(path)
    assert loaded.to_dict() == values
    three = dataclasses.replace(loaded, num_labels=3).to_dict()
    assert len(three["id2label"]) == len(three["label2id"]) == 3
    assert RemBertConfig.from_dict(three).num_labels == 3


@pytest.mark.interop
def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = RemBertConfig.from_original(TINY_ORIGINAL_CONFIG)
    config.save(tmp_path / "config.json")
    theirs = transformers.RemBertConfig.from_pretrained(tmp_path)
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "input_embedding_size",
                 "output_embedding_size", "intermediate_size", "hidden_act", "layer_norm_eps", "num_labels"):
        assert getattr(theirs, name) == getattr(config, name), name
