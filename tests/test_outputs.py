"""rembert_ref/outputs.py on its own (plain values stand in for tensors): what transformers' ModelOutput does."""

from __future__ import annotations

import pytest

from rembert_ref.outputs import BaseModelOutput, MaskedLMOutput, QuestionAnsweringOutput


def test_an_output_is_the_tuple_of_its_fields_that_are_not_none():
    out = QuestionAnsweringOutput(start_logits="start", end_logits="end", attentions="attentions")
    assert out.to_tuple() == ("start", "end", "attentions") == out.values()
    assert len(out) == 3 and out[2] == out[-1] == "attentions" and out[1:] == ("end", "attentions")
    assert out["start_logits"] == "start" and out.loss is None
    with pytest.raises(IndexError):
        out[3]


def test_an_output_is_the_dict_of_its_fields_that_are_not_none():
    """As transformers' ModelOutput (an OrderedDict): keys, membership and iteration over the fields that are
    not None, and a KeyError for one that is None."""
    out = QuestionAnsweringOutput(start_logits="start", end_logits="end", attentions="attentions")
    assert list(out) == list(out.keys()) == ["start_logits", "end_logits", "attentions"]
    assert out.items() == (("start_logits", "start"), ("end_logits", "end"), ("attentions", "attentions"))
    assert "start_logits" in out and "loss" not in out and "hidden_states" not in out and "nothing" not in out
    for missing in ("loss", "nothing"):
        with pytest.raises(KeyError):
            out[missing]


@pytest.mark.interop
def test_outputs_behave_as_transformers_model_output():
    from transformers.modeling_outputs import QuestionAnsweringModelOutput

    fields = {"start_logits": "start", "end_logits": "end", "attentions": "attentions"}
    ours, theirs = QuestionAnsweringOutput(**fields), QuestionAnsweringModelOutput(**fields)
    assert list(ours) == list(theirs) and list(ours.keys()) == list(theirs.keys())
    assert list(ours.values()) == list(theirs.values()) and list(ours.items()) == list(theirs.items())
    assert ours.to_tuple() == theirs.to_tuple() and len(ours) == len(theirs)
    assert (ours[0], ours[-1], ours[1:]) == (theirs[0], theirs[-1], theirs[1:])
    for key in ("start_logits", "loss", "hidden_states"):
        assert (key in ours) == (key in theirs)
    for output in (ours, theirs):
        with pytest.raises(KeyError):
            output["loss"]


def test_the_base_models_legacy_tuple_keeps_the_poolers_place():
    assert BaseModelOutput(last_hidden_state="h").legacy_tuple() == ("h", None)
    full = BaseModelOutput("h", "pooled", "hidden", "cache", "attentions", "cross")
    assert full.legacy_tuple() == ("h", "pooled", "cache", "hidden", "attentions", "cross")


def test_tensorflow_nests_an_output_with_all_its_fields():
    """tf.function returns outputs through TensorFlow's nest protocol: None fields keep their places."""
    tf = pytest.importorskip("tensorflow")
    out = MaskedLMOutput(logits=tf.constant([1.0, 2.0]), attentions=(tf.constant(3.0),))
    flat = tf.nest.flatten(out)
    assert len(flat) == 4 and flat[0] is None and flat[2] is None  # loss and hidden_states
    again = tf.nest.pack_sequence_as(out, [None if x is None else x * 2 for x in flat])
    assert type(again) is MaskedLMOutput and again.loss is None and again.hidden_states is None
    assert again.logits.numpy().tolist() == [2.0, 4.0] and float(again.attentions[0]) == 6.0
