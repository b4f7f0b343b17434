"""RemBertConfig: translation of Google's bert_config.json and the Hugging Face config.json round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rembert_ref.errors import UserError
from rembert_ref.config import RemBertConfig, is_original_config
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 0),  # below the range of whole numbers from 1
        ("num_hidden_layers", 1025),  # above the layer limit
        ("hidden_size", True),  # a bool is an int to Python, not a size
        ("intermediate_size", 36.5),  # a fraction
        ("num_labels", "2"),
        ("hidden_dropout_prob", float("nan")),
        ("layer_norm_eps", float("inf")),
        ("initializer_range", False),
        ("hidden_act", 3),
    ],
)
def test_a_bad_value_in_a_config_json_is_a_one_line_error_naming_it(field, value):
    """A corrupt config.json value must be refused by name at load, not crash or build a broken model later."""
    values = {**RemBertConfig.from_original(TINY_ORIGINAL_CONFIG).to_dict(), field: value}
    with pytest.raises(UserError, match=f"config: {field} must be"):
        RemBertConfig.from_dict(values)


def test_whole_floats_are_sizes_and_stay_ints():
    """JSON writers may store 32 as 32.0; it is the same size, and must not turn the model's sizes into floats."""
    values = {**TINY_ORIGINAL_CONFIG, "hidden_size": 32.0, "vocab_size": 99.0}
    config = RemBertConfig.from_original(values)
    assert (config.hidden_size, config.vocab_size) == (32, 99)
    assert isinstance(config.hidden_size, int) and isinstance(config.vocab_size, int)


def test_a_config_json_of_another_model_type_is_refused():
    """Loading a BERT or T5 config.json as RemBERT would build a model of the wrong architecture silently."""
    values = {**RemBertConfig.from_original(TINY_ORIGINAL_CONFIG).to_dict(), "model_type": "bert"}
    with pytest.raises(UserError, match="model_type 'bert'"):
        RemBertConfig.from_dict(values)


def test_input_embedding_size_wins_over_its_embedding_size_alias():
    """A bert_config.json with both names must keep input_embedding_size; the alias only fills it in."""
    values = {**TINY_ORIGINAL_CONFIG, "embedding_size": TINY_ORIGINAL_CONFIG["input_embedding_size"] + 1}
    assert RemBertConfig.from_original(values).input_embedding_size == TINY_ORIGINAL_CONFIG["input_embedding_size"]


def test_a_missing_output_embedding_size_repeats_the_input_embedding_size():
    """README: a bert_config.json without output_embedding_size (BLEURT's) is accepted and config.json repeats the
    input embedding size there; another default would write a size no checkpoint variable has."""
    values = {k: v for k, v in TINY_ORIGINAL_CONFIG.items() if k != "output_embedding_size"}
    assert RemBertConfig.from_original(values).output_embedding_size == TINY_ORIGINAL_CONFIG["input_embedding_size"]


def test_an_unknown_activation_option_is_a_user_error():
    """A mistyped --activation must name the choices, not fail with a KeyError."""
    with pytest.raises(UserError, match="unknown activation 'erf'; use one of: tanh, exact"):
        RemBertConfig.from_original(TINY_ORIGINAL_CONFIG, activation="erf")


def test_a_bert_config_without_hidden_act_is_gelu():
    """BERT's code defaults hidden_act to gelu; a bert_config.json that leaves it out must still convert."""
    values = {k: v for k, v in TINY_ORIGINAL_CONFIG.items() if k != "hidden_act"}
    assert RemBertConfig.from_original(values, activation="exact").hidden_act == "gelu"


def test_dropouts_and_initializer_range_are_taken_from_the_bert_config():
    """Fine-tuning from the converted model must use the checkpoint's own dropout and initializer range."""
    values = {**TINY_ORIGINAL_CONFIG, "hidden_dropout_prob": 0.125, "attention_probs_dropout_prob": 0.25,
              "initializer_range": 0.03}
    config = RemBertConfig.from_original(values)
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.initializer_range) == (
        0.125, 0.25, 0.03)


@pytest.mark.interop
def test_a_config_json_saved_by_transformers_is_not_taken_for_an_original_one(tmp_path):
    """transformers writes no architectures for a bare config; it must still load as a config.json (keeping its
    layer_norm_eps and the rest), not be re-translated as a bert_config.json."""
    transformers = pytest.importorskip("transformers")
    transformers.RemBertConfig(**{k: v for k, v in TINY_ORIGINAL_CONFIG.items() if k != "hidden_act"},
                               layer_norm_eps=1e-6).save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    assert not is_original_config(values)
    assert is_original_config(TINY_ORIGINAL_CONFIG)
    assert RemBertConfig.from_dict(values).layer_norm_eps == 1e-6


def test_a_config_file_that_is_not_a_json_object_is_a_user_error(tmp_path):
    """A JSON list or number as config must be refused in one line, not fail on the first key lookup."""
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="must hold a JSON object"):
        RemBertConfig.from_json_file(path)


@pytest.mark.interop
def test_defaults_are_transformers_but_the_tf1_activation():
    """RemBertConfig() must build the model transformers' RemBertConfig() builds; only hidden_act differs on
    purpose (TF1 BERT's gelu is the tanh approximation, gelu_new)."""
    transformers = pytest.importorskip("transformers")
    theirs, ours = transformers.RemBertConfig(), RemBertConfig()
    for f in dataclasses.fields(RemBertConfig):
        if f.name in ("extra", "hidden_act", "architectures", "torch_dtype", "problem_type"):
            continue
        assert getattr(ours, f.name) == getattr(theirs, f.name), f.name
    assert (theirs.hidden_act, ours.hidden_act) == ("gelu", "gelu_new")


def test_the_dtype_transformers_saves_is_the_configs_and_saved_back_under_both_names(tmp_path):
    """transformers 4.56+ saves the dtype only as "dtype": read as float32 (the default) and saved beside it, the
    two names disagreed, and transformers 5.x reads "dtype" first."""
    transformers = pytest.importorskip("transformers")
    sizes = {k: v for k, v in TINY_ORIGINAL_CONFIG.items() if k != "hidden_act"}
    transformers.RemBertConfig(**sizes, dtype="float16").save_pretrained(tmp_path / "theirs")
    ours = RemBertConfig.from_json_file(tmp_path / "theirs" / "config.json")
    assert ours.torch_dtype == "float16"
    ours.torch_dtype = "bfloat16"
    ours.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["torch_dtype"], saved["dtype"]) == ("bfloat16", "bfloat16")
    assert "dtype" not in RemBertConfig().to_dict()  # written only where the config came with the newer name
