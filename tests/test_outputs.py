"""rembert_ref/outputs.py on its own (plain values stand in for tensors): what transformers' ModelOutput does."""

from __future__ import annotations

import pytest

from rembert_ref.outputs import BaseModelOutput, MaskedLMOutput, QuestionAnsweringOutput


def test_an_output_is_the_tuple_of_its_fields_that_are_not_none():
    out = QuestionAnsweringOutput(start_logits="start", end_logits="end", attentions="attentions")
    assert out.to_tuple() == ("start", "end", "attentions") == tuple(out)
    assert len(out) == 3 and out[2] == out[-1] == "attentions" and out[1:] == ("end", "attentions")
    assert out["start_logits"] == "start" and out["loss"] is None
    start, end, attentions = out  # unpacking, as code written for transformers' tuples does
    assert (start, end, attentions) == ("start", "end", "attentions")
    with pytest.raises(IndexError):
        out[3]


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
