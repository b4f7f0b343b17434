"""The numpy ground truth against TensorFlow's own ops running the original TF1 graph in float64.

`tf_original_graph` below is a second, independent transcription of Google's BERT `modeling.py` (2-D matmuls,
one-hot token types, `tf.nn.moments` + `tf.nn.batch_normalization` as in `tf.contrib.layers.layer_norm`,
`create_attention_mask_from_input_mask`) plus RemBERT's `embedding_hidden_mapping_in` and decoupled output
embedding, so the two only agree if both follow the original graph.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rembert_ref.errors import UserError
from testkit.synthetic_checkpoint import synthetic_variables
from rembert_ref.numpy_reference import POOLED, head_logits, original_forward
from tests.conftest import TINY_ORIGINAL_CONFIG

# Both sides compute in float64; only the order of operations differs, worth ~1e-15 relative per op over a few
# hundred ops on values of order 10 at most. 1e-10 leaves ample room and is still 6 orders below the 1e-4
# that separates the two gelu variants on these weights.
FLOAT64_TOLERANCE = 1e-10


def tf_original_graph(variables, config, input_ids, token_type_ids, input_mask, activation,
                      output_embedding="cls/predictions/output_embedding") -> dict:
    def v(name):
        return tf.constant(np.asarray(variables[name], np.float64))

    def dense(x2d, scope):
        return tf.matmul(x2d, v(f"{scope}/kernel")) + v(f"{scope}/bias")

    def layer_norm(x, scope):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return tf.nn.batch_normalization(x, mean, variance, offset=v(f"{scope}/beta"), scale=v(f"{scope}/gamma"),
                                         variance_epsilon=1e-12)

    def gelu(x):
        if activation == "tanh":  # modeling.py's gelu
            cdf = 0.5 * (1.0 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))
            return x * cdf
        return x * 0.5 * (1.0 + tf.math.erf(x / tf.sqrt(tf.constant(2.0, tf.float64))))

    batch, seq = input_ids.shape
    n_heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head = hidden // n_heads

    # embedding_lookup + embedding_postprocessor
    x = tf.gather(v("bert/embeddings/word_embeddings"), input_ids)
    one_hot = tf.one_hot(token_type_ids.reshape(-1), depth=config["type_vocab_size"], dtype=tf.float64)
    x += tf.reshape(tf.matmul(one_hot, v("bert/embeddings/token_type_embeddings")), [batch, seq, -1])
    x += tf.expand_dims(tf.slice(v("bert/embeddings/position_embeddings"), [0, 0], [seq, -1]), 0)
    embedding_output = layer_norm(x, "bert/embeddings/LayerNorm")
    width = embedding_output.shape[-1]
    prev = dense(tf.reshape(embedding_output, [-1, width]), "bert/encoder/embedding_hidden_mapping_in")

    # create_attention_mask_from_input_mask: [B, F, T], then expanded over heads
    to_mask = tf.cast(tf.reshape(input_mask, [batch, 1, seq]), tf.float64)
    mask = tf.ones([batch, seq, 1], tf.float64) * to_mask
    adder = (1.0 - tf.expand_dims(mask, axis=1)) * -10000.0

    def transpose_for_scores(t):
        return tf.transpose(tf.reshape(t, [batch, seq, n_heads, head]), [0, 2, 1, 3])

    hidden_states, attentions = [tf.reshape(prev, [batch, seq, hidden])], []
    for i in range(config["num_hidden_layers"]):
        scope = f"bert/encoder/layer_{i}"
        q = transpose_for_scores(dense(prev, f"{scope}/attention/self/query"))
        k = transpose_for_scores(dense(prev, f"{scope}/attention/self/key"))
        val = transpose_for_scores(dense(prev, f"{scope}/attention/self/value"))
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / np.sqrt(float(head))) + adder
        probs = tf.nn.softmax(scores)
        context = tf.reshape(tf.transpose(tf.matmul(probs, val), [0, 2, 1, 3]), [batch * seq, hidden])
        attention_output = layer_norm(dense(context, f"{scope}/attention/output/dense") + prev,
                                      f"{scope}/attention/output/LayerNorm")
        intermediate = gelu(dense(attention_output, f"{scope}/intermediate/dense"))
        prev = layer_norm(dense(intermediate, f"{scope}/output/dense") + attention_output,
                          f"{scope}/output/LayerNorm")
        hidden_states.append(tf.reshape(prev, [batch, seq, hidden]))
        attentions.append(probs)
    sequence_output = hidden_states[-1]

    pooled = tf.tanh(dense(tf.squeeze(sequence_output[:, 0:1, :], axis=1), "bert/pooler/dense"))
    # get_masked_lm_output over every position (no gather of masked positions)
    t = layer_norm(gelu(dense(prev, "cls/predictions/transform/dense")), "cls/predictions/transform/LayerNorm")
    logits = tf.matmul(t, v(output_embedding), transpose_b=True) + v("cls/predictions/output_bias")
    out = {
        "embedding_output": embedding_output,
        "hidden_states": hidden_states,
        "attentions": attentions,
        "last_hidden_state": sequence_output,
        "pooler_output": pooled,
        "mlm_logits": tf.reshape(logits, [batch, seq, -1]),
    }
    if "cls/seq_relationship/output_weights" in variables:
        out["nsp_logits"] = tf.matmul(pooled, v("cls/seq_relationship/output_weights"), transpose_b=True) \
            + v("cls/seq_relationship/output_bias")
    return out


def make_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    batch, seq = 3, 13
    input_ids = rng.integers(0, TINY_ORIGINAL_CONFIG["vocab_size"], size=(batch, seq))
    token_type_ids = (np.arange(seq)[None] >= rng.integers(3, seq, size=(batch, 1))).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[1, 9:] = 0  # padding at the end
    mask[2, [2, 5]] = 0  # holes in the middle
    return input_ids, token_type_ids, mask


def assert_outputs_match(ours: dict, theirs: dict, keys) -> None:
    for key in keys:
        a, b = ours[key], theirs[key]
        if isinstance(a, list):
            assert len(a) == len(b), key
        pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
        for n, (x, y) in enumerate(pairs):
            y = np.asarray(y)
            assert x.dtype == np.float64 and x.shape == y.shape, (key, n, x.shape, y.shape)
            np.testing.assert_allclose(x, y, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE, err_msg=f"{key}[{n}]")


@pytest.fixture(scope="module")
def checkpoint_variables(tiny_ckpt) -> dict[str, np.ndarray]:
    """Everything in the tiny checkpoint, as TensorFlow reads it back: model values, Adam slots, global_step."""
    reader = tf.train.load_checkpoint(str(tiny_ckpt.prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize("activation", ["tanh", "exact"])
def test_matches_tensorflow_ops_on_the_checkpoint(checkpoint_variables, activation):
    input_ids, token_type_ids, mask = make_inputs()
    ours = original_forward(checkpoint_variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask,
                            activation=activation)
    theirs = tf_original_graph(checkpoint_variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask,
                               activation)
    assert_outputs_match(ours, theirs, ["embedding_output", "hidden_states", "attentions", "last_hidden_state",
                                        "pooler_output", "mlm_logits"])
    c = TINY_ORIGINAL_CONFIG
    assert ours["embedding_output"].shape == (3, 13, c["input_embedding_size"])
    assert len(ours["hidden_states"]) == c["num_hidden_layers"] + 1
    assert ours["hidden_states"][0].shape == (3, 13, c["hidden_size"])
    assert ours["attentions"][0].shape == (3, c["num_attention_heads"], 13, 13)
    assert ours["mlm_logits"].shape == (3, 13, c["vocab_size"])
    assert ours["nsp_logits"] is None
    # The weights keep activations of order one, so a wrong activation or transpose cannot hide.
    assert 0.3 < ours["last_hidden_state"].std() < 3 and 0.3 < ours["mlm_logits"].std() < 10


def test_next_sentence_head_matches_tensorflow_ops():
    variables = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=5, with_nsp=True)
    input_ids, token_type_ids, mask = make_inputs(seed=5)
    ours = original_forward(variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    theirs = tf_original_graph(variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask, "tanh")
    assert_outputs_match(ours, theirs, ["pooler_output", "mlm_logits", "nsp_logits"])
    assert ours["nsp_logits"].shape == (3, 2)


def test_the_two_activations_differ_on_these_weights(checkpoint_variables):
    input_ids, token_type_ids, mask = make_inputs()
    tanh = original_forward(checkpoint_variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask,
                            activation="tanh")
    exact = original_forward(checkpoint_variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask,
                             activation="exact")
    np.testing.assert_array_equal(tanh["hidden_states"][0], exact["hidden_states"][0])  # no gelu before layer 0
    for key in ("last_hidden_state", "pooler_output", "mlm_logits"):
        assert np.abs(tanh[key] - exact[key]).max() > 1e-4, key


def test_masked_keys_do_not_influence_unmasked_positions(tiny_ckpt):
    input_ids, token_type_ids, mask = make_inputs()
    base = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    for probs in base["attentions"]:
        assert np.all(probs[np.broadcast_to(mask[:, None, None, :], probs.shape) == 0] < 1e-300)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    changed = input_ids.copy()
    changed[mask == 0] = (changed[mask == 0] + 1) % TINY_ORIGINAL_CONFIG["vocab_size"]
    other = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, changed, token_type_ids, mask)
    keep = mask == 1
    np.testing.assert_allclose(other["last_hidden_state"][keep], base["last_hidden_state"][keep], atol=1e-12)
    np.testing.assert_allclose(other["mlm_logits"][keep], base["mlm_logits"][keep], atol=1e-12)
    # ...while changing a visible token moves the outputs at the other positions.
    visible = input_ids.copy()
    visible[0, 4] = (visible[0, 4] + 1) % TINY_ORIGINAL_CONFIG["vocab_size"]
    moved = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, visible, token_type_ids, mask)
    assert np.abs(moved["last_hidden_state"][0, 0] - base["last_hidden_state"][0, 0]).max() > 1e-3


def test_defaults_are_no_types_and_no_mask(tiny_ckpt):
    input_ids, _, _ = make_inputs()
    default = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids)
    explicit = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids, np.zeros_like(input_ids),
                                np.ones_like(input_ids))
    np.testing.assert_array_equal(default["mlm_logits"], explicit["mlm_logits"])


def test_finds_the_output_embedding_and_handles_missing_heads():
    input_ids, token_type_ids, mask = make_inputs()
    variables = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=3)
    base = original_forward(variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    renamed = dict(variables)
    renamed["cls/predictions/output_embeddings"] = renamed.pop("cls/predictions/output_embedding")
    renamed["cls/predictions/output_embeddings/adam_m"] = np.zeros_like(renamed["cls/predictions/output_embeddings"])
    found = original_forward(renamed, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    np.testing.assert_array_equal(found["mlm_logits"], base["mlm_logits"])

    # Two candidates are ambiguous until the name is given; then the given one is used.
    two = dict(variables, **{"decoder/output_embedding": -variables["cls/predictions/output_embedding"]})
    with pytest.raises(UserError, match="several output embeddings .*pass output_embedding_name"):
        original_forward(two, TINY_ORIGINAL_CONFIG, input_ids)
    chosen = original_forward(two, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask,
                              output_embedding_name="decoder/output_embedding")
    assert not np.allclose(chosen["mlm_logits"], base["mlm_logits"])
    with pytest.raises(UserError, match="output embedding 'nope' is not in the checkpoint"):
        original_forward(variables, TINY_ORIGINAL_CONFIG, input_ids, output_embedding_name="nope")
    no_embedding = {k: val for k, val in variables.items() if k != "cls/predictions/output_embedding"}
    with pytest.raises(UserError, match="MLM head but no output embedding"):
        original_forward(no_embedding, TINY_ORIGINAL_CONFIG, input_ids)

    bare = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=3, with_pooler=False, with_mlm_head=False)
    out = original_forward(bare, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    assert out["pooler_output"] is None and out["mlm_logits"] is None and out["nsp_logits"] is None
    with pytest.raises(UserError, match="reads the pooled output but the checkpoint has no pooler"):
        head_logits(out, np.ones((3, TINY_ORIGINAL_CONFIG["hidden_size"])), np.ones(3), POOLED)
    np.testing.assert_array_equal(out["last_hidden_state"], base["last_hidden_state"])


def test_user_errors(tiny_ckpt):
    variables, config = tiny_ckpt.variables, TINY_ORIGINAL_CONFIG
    ids = np.zeros((2, 5), np.int64)
    with pytest.raises(UserError, match="unknown activation 'relu'"):
        original_forward(variables, config, ids, activation="relu")
    with pytest.raises(UserError, match=r"input_ids must lie in \[0, 99\)"):
        original_forward(variables, config, ids + 99)
    with pytest.raises(UserError, match=r"token_type_ids must lie in \[0, 2\)"):
        original_forward(variables, config, ids, ids + 2)
    with pytest.raises(UserError, match="sequence length 41 exceeds max_position_embeddings 40"):
        original_forward(variables, config, np.zeros((1, 41), np.int64))
    with pytest.raises(UserError, match="must be a 2-D integer array"):
        original_forward(variables, config, np.zeros(5, np.int64))
    with pytest.raises(UserError, match="must match input_ids"):
        original_forward(variables, config, ids, attention_mask=np.ones((2, 4)))
    with pytest.raises(UserError, match="bert/encoder/layer_3/attention/self/query/kernel is missing"):
        original_forward(variables, dict(config, num_hidden_layers=4), ids)


def test_streamed_slices_give_the_same_outputs_as_whole_tables(tiny_ckpt, monkeypatch):
    """Weights are read in row slices (embedding gathers, vocabulary logits): slices of a few rows must give
    what one slice of the whole table gives (BLAS may round a smaller product differently, ~1e-16)."""
    import rembert_ref.numpy_reference as reference

    input_ids, token_type_ids, mask = make_inputs()
    whole = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    monkeypatch.setattr(reference, "SLICE_BYTES", 8 * 43 * 7)  # 7 rows of the output embedding per slice
    sliced = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    for key in ("embedding_output", "last_hidden_state", "mlm_logits"):
        np.testing.assert_allclose(sliced[key], whole[key], rtol=0, atol=FLOAT64_TOLERANCE)


def test_causal_mask_makes_each_position_see_only_its_prefix(tiny_ckpt):
    from rembert_ref.numpy_reference import causal_mask

    input_ids, token_type_ids, _ = make_inputs()
    mask = causal_mask(np.ones_like(input_ids))
    causal = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids, mask)
    later = input_ids.copy()
    later[:, 6:] = (later[:, 6:] + 1) % TINY_ORIGINAL_CONFIG["vocab_size"]  # change every token after 5
    changed = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, later, token_type_ids, mask)
    np.testing.assert_allclose(changed["mlm_logits"][:, :6], causal["mlm_logits"][:, :6], atol=1e-12)
    assert np.abs(changed["mlm_logits"][:, 6:] - causal["mlm_logits"][:, 6:]).max() > 1e-3
    full = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids)
    assert np.abs(full["mlm_logits"][:, 1] - causal["mlm_logits"][:, 1]).max() > 1e-3


def test_the_causal_mask_keeps_the_padding_mask(tiny_ckpt):
    """A causal mask that forgot the padding would let later positions see padded tokens."""
    from rembert_ref.numpy_reference import causal_mask

    input_ids, token_type_ids, mask = make_inputs()  # padding at the end of row 1, holes in row 2
    causal = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, input_ids, token_type_ids,
                              causal_mask(mask))
    changed = input_ids.copy()
    changed[mask == 0] = (changed[mask == 0] + 1) % TINY_ORIGINAL_CONFIG["vocab_size"]
    other = original_forward(tiny_ckpt.variables, TINY_ORIGINAL_CONFIG, changed, token_type_ids, causal_mask(mask))
    keep = mask == 1
    np.testing.assert_allclose(other["mlm_logits"][keep], causal["mlm_logits"][keep], atol=1e-12)
