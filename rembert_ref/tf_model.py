"""RemBERT in TensorFlow 2, one file, read top to bottom: the seven Hugging Face heads, written with `tf.Module`.

Follows Hugging Face transformers' `modeling_tf_rembert.py` (itself a port of Google's TF1 `modeling.py`) in
behaviour and weight names, and mirrors `rembert_ref/torch_model.py` class by class and attribute by
attribute, so the two files can be read side by side.

Why `tf.Module` and not Keras layers: a `tf.Variable` created under an explicit scope keeps the full path
(`tf_rem_bert_for_masked_lm/rembert/encoder/layer_._0/attention/self/query/kernel:0`) as its name in every
TensorFlow version, which is exactly the weight name that Hugging Face's `tf_model.h5` stores. Keras 3 (the
`tf.keras` of TensorFlow >= 2.16) no longer builds names from name scopes, so Keras layers would need a
second name table and behave differently under Keras 2 and 3. Nothing here depends on Keras.

Layouts: Keras kernels are [in, out] (`y = x @ kernel + bias`), as in the TF1 checkpoint; the MLM decoder
weight is [vocab, output_embedding_size] as in PyTorch. Shape comments use B batch, T query length,
S key length (past + T), E input_embedding_size, H hidden_size, nh heads, hs head size, O
output_embedding_size, V vocab_size, I intermediate_size, C choices.

Every call works eagerly and under `tf.function` (`tf.function(model)(input_ids=...)`); Python booleans
(output_attentions, use_cache, ...) select the traced graph. As in PyTorch, a head's computation is its
`forward`; `__call__` runs it without autograph, which has nothing to convert here and only slows tracing.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rembert_ref.config import RemBertConfig
from rembert_ref.outputs import (
    BaseModelOutput,
    CausalLMOutput,
    ClassifierOutput,
    MaskedLMOutput,
    ModelOutput,
    QuestionAnsweringOutput,
)
from rembert_ref.errors import TF_EXTRA_HINT, UserError
from rembert_ref.weight_files import TF_WEIGHTS_NAME, h5_attribute


@contextlib.contextmanager
def _startup_notices_hidden() -> Iterator[None]:
    """While TensorFlow imports, its C++ libraries print absl/oneDNN notices straight to file descriptor 2
    ("oneDNN custom operations are on", CPU feature hints), whatever TF_CPP_MIN_LOG_LEVEL says. Capture fd 2
    for the import only, then pass on every line that is not such a notice; nothing stays changed."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no sys.stderr (started with fd 2 closed), or no fd: nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not _STARTUP_NOTICE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


# absl-formatted log lines (I0000 00:00:... file.cc:N] ...) and the two unformatted lines that come with them.
_STARTUP_NOTICE = re.compile(r"[IWE]\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\]|WARNING: All log messages before "
                             r"absl::InitializeLog\(\)|To enable the following instructions:")

try:
    with _startup_notices_hidden():
        import tensorflow as tf
except ImportError as exc:  # the lean install: TensorFlow is the [tf] extra
    raise UserError(f"rembert_ref.tf_model needs TensorFlow, which is not installed ({exc}): {TF_EXTRA_HINT}") \
        from exc

CONFIG_NAME = "config.json"

PastKeyValues = tuple[tuple[tf.Tensor, tf.Tensor], ...]  # per layer: (key, value), each (B, nh, S, hs)


# -- outputs: rembert_ref/outputs.py, shared with the other framework's models


def _finish(out: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
    return out if return_dict is not False else out.to_tuple()


# -- building blocks -----------------------------------------------------------------------------------------


def _initial(name: str, shape: list[int], std: float, seed: int) -> tf.Tensor:
    # Seeded by the weight's name, so a new task head gets the same values in every run and process.
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "little") & 0x7FFFFFFF
    return tf.random.stateless_normal(shape, seed=[seed, key], stddev=std)


class Weights:
    """Creates the variables of one model under its root scope, so each `.name` is the Keras weight name."""

    def __init__(self, config: RemBertConfig, root: str, seed: int = 0, dtype: tf.DType = tf.float32):
        self.config, self.root, self.seed, self.dtype = config, root, seed, dtype

    def normal(self, scope: str, shape: list[int]) -> tf.Variable:
        name = f"{self.root}/{scope}"
        return tf.Variable(tf.cast(_initial(name, shape, self.config.initializer_range, self.seed), self.dtype),
                           name=name)

    def constant(self, scope: str, shape: list[int], value: float) -> tf.Variable:
        return tf.Variable(tf.fill(shape, tf.constant(value, self.dtype)), name=f"{self.root}/{scope}")


class Dense(tf.Module):
    """Keras Dense: y = x @ kernel + bias, kernel [in, out]."""

    def __init__(self, w: Weights, scope: str, fan_in: int, fan_out: int):
        super().__init__()
        self.kernel = w.normal(f"{scope}/kernel", [fan_in, fan_out])
        self.bias = w.constant(f"{scope}/bias", [fan_out], 0.0)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.kernel) + self.bias


class LayerNorm(tf.Module):
    """Keras LayerNormalization over the last axis, weights `gamma` / `beta`."""

    def __init__(self, w: Weights, scope: str, width: int):
        super().__init__()
        self.gamma = w.constant(f"{scope}/gamma", [width], 1.0)
        self.beta = w.constant(f"{scope}/beta", [width], 0.0)
        self.eps = w.config.layer_norm_eps

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.eps) * self.gamma + self.beta


def gelu_new(x: tf.Tensor) -> tf.Tensor:
    # TF1 BERT's `gelu`: the tanh approximation (hidden_act "gelu_new" / "gelu_pytorch_tanh").
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


def gelu(x: tf.Tensor) -> tf.Tensor:
    return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


ACT2FN = {"gelu": gelu, "gelu_new": gelu_new, "gelu_pytorch_tanh": gelu_new, "relu": tf.nn.relu, "tanh": tf.tanh}


def activation(name: str):
    if name not in ACT2FN:
        raise UserError(f"hidden_act {name!r} is not supported; use one of: {', '.join(ACT2FN)}")
    return ACT2FN[name]


def dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    return tf.nn.dropout(x, rate=rate) if training and rate > 0 else x


# -- the encoder ---------------------------------------------------------------------------------------------


class TFRemBertEmbeddings(tf.Module):
    """word + position + token type embeddings in the small input size, then LayerNorm."""

    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        E = c.input_embedding_size
        self.word_embeddings = w.normal(f"{scope}/word_embeddings/weight", [c.vocab_size, E])
        self.position_embeddings = w.normal(f"{scope}/position_embeddings/embeddings", [c.max_position_embeddings, E])
        self.token_type_embeddings = w.normal(f"{scope}/token_type_embeddings/embeddings", [c.type_vocab_size, E])
        self.LayerNorm = LayerNorm(w, f"{scope}/LayerNorm", E)
        self.dropout_rate = c.hidden_dropout_prob
        self.vocab_size = c.vocab_size

    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds, training: bool) -> tf.Tensor:
        if inputs_embeds is None:
            # tf.gather returns zeros for out-of-range ids on GPU instead of failing: check first.
            tf.debugging.assert_less(input_ids, tf.cast(self.vocab_size, input_ids.dtype),
                                     message="input_ids must be < vocab_size")
            inputs_embeds = tf.gather(self.word_embeddings, input_ids)  # (B, T, E)
        x = inputs_embeds + tf.gather(self.token_type_embeddings, token_type_ids) \
            + tf.gather(self.position_embeddings, position_ids)  # (B, T, E)
        return dropout(self.LayerNorm(x), self.dropout_rate, training)


class TFRemBertSelfAttention(tf.Module):
    """Multi-head attention. Self-attention by default; cross-attention when given `kv_states`."""

    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.n_head, self.head_size = c.num_attention_heads, c.head_size
        self.query = Dense(w, f"{scope}/query", c.hidden_size, c.hidden_size)
        self.key = Dense(w, f"{scope}/key", c.hidden_size, c.hidden_size)
        self.value = Dense(w, f"{scope}/value", c.hidden_size, c.hidden_size)
        self.dropout_rate = c.attention_probs_dropout_prob

    def split_heads(self, x: tf.Tensor) -> tf.Tensor:
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [B, T, self.n_head, self.head_size])  # (B, T, nh, hs)
        return tf.transpose(x, [0, 2, 1, 3])  # (B, nh, T, hs)

    def __call__(self, x, mask, head_mask=None, kv_states=None, past_kv=None, training: bool = False):
        q = self.split_heads(self.query(x))  # (B, nh, T, hs)
        if kv_states is not None and past_kv is not None:
            k, v = past_kv  # the encoder's keys and values do not change from one decoding step to the next
        else:
            source = x if kv_states is None else kv_states
            k = self.split_heads(self.key(source))  # (B, nh, S, hs)
            v = self.split_heads(self.value(source))
            if past_kv is not None:  # self-attention with a cache: the new positions follow the cached ones
                k = tf.concat([past_kv[0], k], axis=2)
                v = tf.concat([past_kv[1], v], axis=2)
        att = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.head_size)  # (B, nh, T, S)
        if mask is not None:
            att = att + mask  # 0 to attend, the dtype's minimum to ignore
        att = dropout(tf.nn.softmax(att, axis=-1), self.dropout_rate, training)
        if head_mask is not None:
            att = att * head_mask
        y = tf.transpose(tf.matmul(att, v), [0, 2, 1, 3])  # (B, T, nh, hs)
        B, T = tf.shape(y)[0], tf.shape(y)[1]
        y = tf.reshape(y, [B, T, self.n_head * self.head_size])  # (B, T, H)
        return y, att, (k, v)


class TFRemBertOutput(tf.Module):
    """Output projection from `in_size`, dropout, residual, LayerNorm (post-LN, like BERT): after attention
    (transformers' RemBertSelfOutput, from the hidden size) and after the feed-forward (its RemBertOutput, from the
    intermediate size)."""

    def __init__(self, w: Weights, scope: str, in_size: int):
        super().__init__()
        c = w.config
        self.dense = Dense(w, f"{scope}/dense", in_size, c.hidden_size)
        self.LayerNorm = LayerNorm(w, f"{scope}/LayerNorm", c.hidden_size)
        self.dropout_rate = c.hidden_dropout_prob

    def __call__(self, y: tf.Tensor, residual: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.LayerNorm(dropout(self.dense(y), self.dropout_rate, training) + residual)  # (B, T, H)


class TFRemBertAttention(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.self = TFRemBertSelfAttention(w, f"{scope}/self")
        self.output = TFRemBertOutput(w, f"{scope}/output", w.config.hidden_size)

    def __call__(self, x, mask, head_mask=None, kv_states=None, past_kv=None, training: bool = False):
        y, att, kv = self.self(x, mask, head_mask, kv_states, past_kv, training)
        return self.output(y, x, training), att, kv


class TFRemBertIntermediate(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.dense = Dense(w, f"{scope}/dense", w.config.hidden_size, w.config.intermediate_size)
        self.act = activation(w.config.hidden_act)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.act(self.dense(x))  # (B, T, I)


class TFRemBertLayer(tf.Module):
    """Self-attention, then (decoders with add_cross_attention) cross-attention, then the feed-forward."""

    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.attention = TFRemBertAttention(w, f"{scope}/attention")
        if w.config.add_cross_attention:
            self.crossattention = TFRemBertAttention(w, f"{scope}/crossattention")
        self.intermediate = TFRemBertIntermediate(w, f"{scope}/intermediate")
        self.output = TFRemBertOutput(w, f"{scope}/output", w.config.intermediate_size)

    def __call__(self, x, mask, head_mask=None, encoder_hidden_states=None, encoder_mask=None, past=None,
                 training: bool = False):
        # past: (k, v), or (k, v, cross_k, cross_v) for decoders with cross-attention
        x, att, present = self.attention(x, mask, head_mask, past_kv=past[:2] if past is not None else None,
                                         training=training)
        cross_att = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise UserError("encoder_hidden_states were given but the model has no cross-attention; "
                                "build it with is_decoder=True and add_cross_attention=True")
            cross_past = past[2:4] if past is not None and len(past) == 4 else None
            x, cross_att, cross_present = self.crossattention(x, encoder_mask, head_mask, encoder_hidden_states,
                                                              cross_past, training)
            present = present + cross_present
        x = self.output(self.intermediate(x), x, training)  # (B, T, H)
        return x, att, cross_att, present


class TFRemBertEncoder(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.embedding_hidden_mapping_in = Dense(w, f"{scope}/embedding_hidden_mapping_in",
                                                 c.input_embedding_size, c.hidden_size)
        self.layer = [TFRemBertLayer(w, f"{scope}/layer_._{i}") for i in range(c.num_hidden_layers)]


class TFRemBertPooler(tf.Module):
    """tanh(dense(hidden state of the first token))."""

    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.dense = Dense(w, f"{scope}/dense", w.config.hidden_size, w.config.hidden_size)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.tanh(self.dense(x[:, 0]))  # (B, H)


class OutputEmbedding(tf.Module):
    """The decoupled output embedding: weight [V, O] as in PyTorch's nn.Linear, logits = x @ weight.T + bias."""

    def __init__(self, w: Weights, scope: str, fan_in: int, vocab: int):
        super().__init__()
        self.weight = w.normal(f"{scope}/weight", [vocab, fan_in])
        self.bias = w.constant(f"{scope}/bias", [vocab], 0.0)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.weight, transpose_b=True) + self.bias


class TFRemBertLMPredictionHead(tf.Module):
    """RemBERT's decoupled output embedding: hidden -> output_embedding_size -> vocab, not tied to the input."""

    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.dense = Dense(w, f"{scope}/dense", c.hidden_size, c.output_embedding_size)
        self.act = activation(c.hidden_act)
        self.LayerNorm = LayerNorm(w, f"{scope}/LayerNorm", c.output_embedding_size)
        self.decoder = OutputEmbedding(w, f"{scope}/decoder", c.output_embedding_size, c.vocab_size)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = self.LayerNorm(self.act(self.dense(x)))  # (B, T, O)
        return self.decoder(x)  # (B, T, V)


class TFRemBertOnlyMLMHead(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.predictions = TFRemBertLMPredictionHead(w, f"{scope}/predictions")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.predictions(x)


# -- the base model: masks and the forward pass --------------------------------------------------------------


class TFRemBertMainLayer(tf.Module):
    """What PyTorch calls RemBertModel (and Hugging Face TF `TFRemBertMainLayer`): every head's `rembert`."""

    def __init__(self, w: Weights, scope: str, add_pooling_layer: bool = True):
        super().__init__()
        self.config = w.config
        if self.config.add_cross_attention and not self.config.is_decoder:
            raise UserError("add_cross_attention needs is_decoder=True in the config; set both or neither")
        self.embeddings = TFRemBertEmbeddings(w, f"{scope}/embeddings")
        self.encoder = TFRemBertEncoder(w, f"{scope}/encoder")
        self.pooler = TFRemBertPooler(w, f"{scope}/pooler") if add_pooling_layer else None

    def extended_attention_mask(self, attention_mask: tf.Tensor, T, dtype: tf.DType) -> tf.Tensor:
        """1/0 mask (B, S) or (B, T, S) -> additive (B, 1, T or 1, S): 0 to attend, dtype min to ignore.
        Decoders given a (B, S) mask also get the causal mask, with the S - T cached positions visible."""
        mask = tf.cast(attention_mask, dtype)
        if mask.shape.rank == 3:
            mask = mask[:, None, :, :]  # (B, 1, T, S)
        elif mask.shape.rank == 2:
            if self.config.is_decoder:
                S = tf.shape(mask)[1]
                i = tf.range(T)[:, None] + (S - T)  # absolute query positions
                j = tf.range(S)[None, :]
                causal = tf.cast(j <= i, dtype)  # (T, S)
                mask = causal[None, None, :, :] * mask[:, None, None, :]  # (B, 1, T, S)
            else:
                mask = mask[:, None, None, :]  # (B, 1, 1, S)
        else:
            raise UserError(f"attention_mask must have 2 or 3 dimensions, got shape {mask.shape}")
        return (1.0 - mask) * dtype.min

    def invert_encoder_mask(self, encoder_attention_mask: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        mask = tf.cast(encoder_attention_mask, dtype)
        mask = mask[:, None, :, :] if mask.shape.rank == 3 else mask[:, None, None, :]  # (B, 1, 1 or T, S)
        return (1.0 - mask) * dtype.min

    def expand_head_mask(self, head_mask, dtype: tf.DType) -> list:
        """(nh,) or (L, nh), 1 keeps a head, 0 drops it -> per layer, broadcastable to (B, nh, T, S)."""
        L = self.config.num_hidden_layers
        if head_mask is None:
            return [None] * L
        head_mask = tf.cast(head_mask, dtype)
        if head_mask.shape.rank == 1:
            head_mask = tf.tile(head_mask[None], [L, 1])
        if head_mask.shape.rank != 2:
            raise UserError(f"head_mask must be (num_heads,) or (num_layers, num_heads), got {head_mask.shape}")
        return [head_mask[i][None, :, None, None] for i in range(L)]  # (1, nh, 1, 1)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 past_key_values=None, use_cache: bool | None = None, output_attentions: bool | None = None,
                 output_hidden_states: bool | None = None, return_dict: bool | None = None,
                 training: bool = False) -> BaseModelOutput | tuple:
        config = self.config
        use_cache = (config.use_cache if use_cache is None else use_cache) if config.is_decoder else False
        if (input_ids is None) == (inputs_embeds is None):
            raise UserError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            input_ids = tf.convert_to_tensor(input_ids)
            B, T = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        else:
            inputs_embeds = tf.convert_to_tensor(inputs_embeds)
            B, T = tf.shape(inputs_embeds)[0], tf.shape(inputs_embeds)[1]
        T_past = tf.shape(past_key_values[0][0])[2] if past_key_values is not None else 0
        dtype = self.embeddings.LayerNorm.gamma.dtype

        if attention_mask is None:
            attention_mask = tf.ones([B, T_past + T], dtype)
        if token_type_ids is None:
            token_type_ids = tf.zeros([B, T], tf.int32)
        if position_ids is None:
            position_ids = tf.range(T_past, T_past + T)[None]  # (1, T)
        mask = self.extended_attention_mask(tf.convert_to_tensor(attention_mask), T, dtype)
        encoder_mask = None
        if config.is_decoder and encoder_hidden_states is not None:
            encoder_hidden_states = tf.convert_to_tensor(encoder_hidden_states)
            if encoder_attention_mask is None:
                encoder_attention_mask = tf.ones(tf.shape(encoder_hidden_states)[:2], dtype)
            encoder_mask = self.invert_encoder_mask(tf.convert_to_tensor(encoder_attention_mask), dtype)
        head_masks = self.expand_head_mask(head_mask, dtype)

        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, training)  # (B, T, E)
        # hidden_states[0] is the embedding output AFTER the mapping up to hidden_size, as in Hugging Face.
        x = self.encoder.embedding_hidden_mapping_in(x)  # (B, T, H)
        hidden_states, attentions, cross_attentions, presents = [], [], [], []
        for i, block in enumerate(self.encoder.layer):
            hidden_states.append(x)
            past = past_key_values[i] if past_key_values is not None else None
            x, att, cross_att, present = block(x, mask, head_masks[i], encoder_hidden_states, encoder_mask, past,
                                               training)
            attentions.append(att)
            cross_attentions.append(cross_att)
            presents.append(present)
        hidden_states.append(x)

        out = BaseModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            past_key_values=tuple(presents) if use_cache else None,
            attentions=tuple(attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions and config.add_cross_attention else None,
        )
        return _finish(out, return_dict)


# -- the heads -----------------------------------------------------------------------------------------------


def cross_entropy(logits: tf.Tensor, labels, ignore_index: int | tf.Tensor = -100) -> tf.Tensor:
    """PyTorch's F.cross_entropy: the mean over positions whose label is not ignore_index (nan if none)."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    logits = tf.reshape(logits, [tf.size(labels), -1])
    keep = tf.not_equal(labels, ignore_index)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep, labels, 0), logits=logits)
    keep = tf.cast(keep, logits.dtype)
    return tf.reduce_sum(losses * keep) / tf.reduce_sum(keep)


class TFRemBertPreTrainedModel(tf.Module):
    """Root of every head: its Keras name scope (the first part of every weight name) and the loaders."""

    keras_name = ""  # Keras' automatic name for the Hugging Face class, e.g. tf_rem_bert_for_masked_lm
    base_model_prefix = "rembert"
    add_pooling_layer = True

    def __init__(self, config: RemBertConfig, seed: int = 0, dtype: tf.DType = tf.float32,
                 weights: Weights | None = None):
        super().__init__()
        self.config = config
        # `weights` lets several heads share one set of variables (a `Weights` whose normal/constant return
        # existing variables): the parity check builds every head on one copy of the model this way.
        w = weights if weights is not None else Weights(config, self.keras_name, seed, dtype)
        self.rembert = TFRemBertMainLayer(w, "rembert", add_pooling_layer=self.add_pooling_layer)
        self.build_head(w)
        self.loading_info: dict[str, list[str]] = {"missing": [], "unexpected": [], "newly_initialized": []}

    def build_head(self, w: Weights) -> None:
        """The task head's variables, under the root scope like Hugging Face's (`classifier/kernel:0`)."""

    # Autograph would only slow tracing down: no Python branch here depends on a tensor's value.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, *args: Any, **kwargs: Any):
        """Run `forward` (PyTorch's name for it), eagerly or inside tf.function."""
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any):
        raise NotImplementedError

    def weights_by_name(self) -> dict[str, tf.Variable]:
        """Keras weight name below the model's root (`rembert/...:0`, `mlm___cls/...:0`) -> variable."""
        return {v.name.split("/", 1)[1]: v for v in self.variables}

    def assign_weights(self, values: Mapping[str, np.ndarray], source: str = "the weights") -> list[str]:
        """Assign arrays in TF layout by Keras name below the root, after checking every shape; returns the
        names this model has no place for. Variables not in `values` keep their values."""
        ours = self.weights_by_name()
        # .shape: numpy arrays and h5py datasets alike, without reading a dataset
        wrong = [f"{n}: file {list(values[n].shape)}, model {ours[n].shape.as_list()}" for n in sorted(ours)
                 if n in values and tuple(values[n].shape) != tuple(ours[n].shape.as_list())]
        if wrong:
            raise UserError(f"weights in {source} do not fit the config: {'; '.join(wrong)}; "
                            "use the config.json the weights were written with")
        for name, variable in ours.items():
            if name in values:
                variable.assign(np.asarray(values[name]).astype(variable.dtype.as_numpy_dtype))
        return sorted(set(values) - set(ours))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, config: RemBertConfig | None = None,
                        strict_backbone: bool = True, seed: int = 0, dtype: tf.DType = tf.float32,
                        weights: Mapping[str, Any] | None = None, weights_file: str = "given weights"):
        """Load `config.json` and the weights from `directory`'s `tf_model.h5` (Hugging Face's Keras layout),
        or from `weights` (arrays by Keras name below the root, e.g. PyTorch files read by
        `converters.mapping.read_torch_weights_as_tf`), which `weights_file` names in messages.

        As in the PyTorch models: a missing backbone (pooler included) or MLM-head weight is a UserError
        (with `strict_backbone=False` it keeps its seeded initialization and is listed under "missing");
        weights this class has no place for are listed under "unexpected"; task heads and cross-attention
        start from normal(0, initializer_range) weights and zero biases (seeded by `seed` and the weight's
        name) and are listed under "newly_initialized". The lists are in `model.loading_info`."""
        directory = Path(directory)
        if config is None:
            if not (directory / CONFIG_NAME).is_file():
                raise UserError(f"{directory / CONFIG_NAME} does not exist; pass config= or convert the "
                                f"checkpoint into {directory}")
            config = RemBertConfig.from_json_file(directory / CONFIG_NAME)
        with contextlib.ExitStack() as stack:
            if weights is not None:
                values = weights
            elif (directory / TF_WEIGHTS_NAME).is_file():
                # h5py datasets, read one at a time while assigning: one copy of the weights in memory
                values = stack.enter_context(open_h5_weights(directory / TF_WEIGHTS_NAME))
                weights_file = TF_WEIGHTS_NAME
            else:
                raise UserError(f"{directory} has no {TF_WEIGHTS_NAME}; write it with `convert-rembert tf2`, or "
                                "pass weights= (PyTorch files: converters.mapping.read_torch_weights_as_tf)")
            model = cls(config, seed=seed, dtype=dtype)
            absent = sorted(set(model.weights_by_name()) - set(values))
            missing = [n for n in absent if _is_pretrained(n)]
            if missing and strict_backbone:
                raise UserError(f"{weights_file} in {directory} lacks {len(missing)} weight(s) {cls.__name__} "
                                f"needs: {', '.join(missing)}; convert the full checkpoint, or pass "
                                "strict_backbone=False to initialise them")
            unexpected = model.assign_weights(values, f"{directory / weights_file}")
        model.loading_info = {"missing": missing, "unexpected": unexpected,
                              "newly_initialized": sorted(set(absent) - set(missing)),
                              "weights_file": [weights_file]}
        return model


def _is_pretrained(tf_name: str) -> bool:
    """Names a pretrained file must supply: backbone and MLM head; task heads and cross-attention may start
    fresh (the PyTorch models' rule)."""
    return "/crossattention/" not in tf_name and tf_name.startswith(("rembert/", "mlm___cls/"))


class TFRemBertModel(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_model"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 past_key_values=None, use_cache: bool | None = None, output_attentions: bool | None = None,
                 output_hidden_states: bool | None = None, return_dict: bool | None = None,
                 training: bool = False) -> BaseModelOutput | tuple:
        return self.rembert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            encoder_hidden_states, encoder_attention_mask, past_key_values, use_cache,
                            output_attentions, output_hidden_states, return_dict, training)


class TFRemBertForMaskedLM(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_masked_lm"
    add_pooling_layer = False

    def build_head(self, w: Weights) -> None:
        if self.config.is_decoder:
            warnings.warn("TFRemBertForMaskedLM with is_decoder=True attends only to the left; set is_decoder=False",
                          stacklevel=3)
        # Hugging Face's TF port names PyTorch's `cls` module `mlm___cls`; the attribute keeps PyTorch's name.
        self.cls = TFRemBertOnlyMLMHead(w, "mlm___cls")

    def forward(self, input_ids=None, attention_mask=None, *, labels=None, return_dict: bool | None = None,
                training: bool = False, **inputs: Any) -> MaskedLMOutput | tuple:
        out = self.rembert(input_ids, attention_mask, use_cache=False, training=training, **inputs)
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        loss = cross_entropy(logits, labels) if labels is not None else None  # labels (B, T), -100 = not scored
        return _finish(MaskedLMOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


class TFRemBertForCausalLM(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_causal_lm"
    add_pooling_layer = False

    def build_head(self, w: Weights) -> None:
        if not self.config.is_decoder:
            # Hugging Face only warns, and then runs without the causal mask; that is never what one wants.
            raise UserError("TFRemBertForCausalLM needs is_decoder=True in the config; "
                            "pass dataclasses.replace(config, is_decoder=True)")
        self.cls = TFRemBertOnlyMLMHead(w, "mlm___cls")

    def forward(self, input_ids=None, attention_mask=None, *, labels=None, return_dict: bool | None = None,
                training: bool = False, **inputs: Any) -> CausalLMOutput | tuple:
        out = self.rembert(input_ids, attention_mask, training=training, **inputs)
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:  # labels are the inputs themselves: position t predicts token t + 1
            loss = cross_entropy(logits[:, :-1], tf.convert_to_tensor(labels)[:, 1:])
        return _finish(CausalLMOutput(loss, logits, out.past_key_values, out.hidden_states, out.attentions,
                                      out.cross_attentions), return_dict)


class TFRemBertForSequenceClassification(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_sequence_classification"

    def build_head(self, w: Weights) -> None:
        self.dropout_rate = self.config.classifier_dropout_prob
        self.classifier = Dense(w, "classifier", self.config.hidden_size, self.config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, *, labels=None, return_dict: bool | None = None,
                training: bool = False, **inputs: Any) -> ClassifierOutput | tuple:
        out = self.rembert(input_ids, attention_mask, training=training, **inputs)
        logits = self.classifier(dropout(out.pooler_output, self.dropout_rate, training))  # (B, num_labels)
        loss = sequence_classification_loss(logits, tf.convert_to_tensor(labels), self.config) \
            if labels is not None else None
        return _finish(ClassifierOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


def sequence_classification_loss(logits: tf.Tensor, labels: tf.Tensor, config: RemBertConfig) -> tf.Tensor:
    """The loss by config.problem_type; when unset, inferred like transformers: one label -> regression,
    integer labels -> single-label cross-entropy, anything else -> multi-label BCE with logits."""
    n = config.num_labels
    problem = config.problem_type
    if problem is None:
        if n == 1:
            problem = "regression"
        elif labels.dtype.is_integer:
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        labels = tf.cast(labels, logits.dtype)
        if n == 1:
            return tf.reduce_mean(tf.square(tf.reshape(logits, [-1]) - tf.reshape(labels, [-1])))
        return tf.reduce_mean(tf.square(logits - labels))
    if problem == "single_label_classification":
        return cross_entropy(logits, labels)
    if problem == "multi_label_classification":
        labels = tf.cast(labels, logits.dtype)
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
    raise UserError(f"unknown problem_type {problem!r}; use regression, single_label_classification "
                    "or multi_label_classification")


class TFRemBertForMultipleChoice(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_multiple_choice"

    def build_head(self, w: Weights) -> None:
        self.dropout_rate = self.config.classifier_dropout_prob
        self.classifier = Dense(w, "classifier", self.config.hidden_size, 1)

    def forward(self, input_ids=None, attention_mask=None, *, labels=None, return_dict: bool | None = None,
                training: bool = False, **inputs: Any) -> ClassifierOutput | tuple:
        # input_ids (B, C, T), inputs_embeds (B, C, T, E); labels (B,) index of the right choice
        leading = input_ids if input_ids is not None else inputs.get("inputs_embeds")

        def flat(t):  # (B, C, T, ...) -> (B * C, T, ...)
            if t is None:
                return None
            t = tf.convert_to_tensor(t)
            return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], axis=0))

        per_token = ("token_type_ids", "position_ids", "inputs_embeds")
        inputs = {k: flat(v) if k in per_token else v for k, v in inputs.items()}
        out = self.rembert(flat(input_ids), flat(attention_mask), training=training, **inputs)  # refuses no input
        n_choices = tf.shape(tf.convert_to_tensor(leading))[1]
        logits = tf.reshape(self.classifier(dropout(out.pooler_output, self.dropout_rate, training)),
                            [-1, n_choices])  # (B, C)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return _finish(ClassifierOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


class TFRemBertForTokenClassification(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_token_classification"
    add_pooling_layer = False

    def build_head(self, w: Weights) -> None:
        # PyTorch's head uses classifier_dropout_prob here (Hugging Face's TF port: hidden_dropout_prob).
        self.dropout_rate = self.config.classifier_dropout_prob
        self.classifier = Dense(w, "classifier", self.config.hidden_size, self.config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, *, labels=None, return_dict: bool | None = None,
                training: bool = False, **inputs: Any) -> ClassifierOutput | tuple:
        out = self.rembert(input_ids, attention_mask, training=training, **inputs)
        logits = self.classifier(dropout(out.last_hidden_state, self.dropout_rate, training))  # (B, T, num_labels)
        loss = cross_entropy(logits, labels) if labels is not None else None  # labels (B, T), -100 = not scored
        return _finish(ClassifierOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


class TFRemBertForQuestionAnswering(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_question_answering"
    add_pooling_layer = False

    def build_head(self, w: Weights) -> None:
        self.qa_outputs = Dense(w, "qa_outputs", self.config.hidden_size, 2)  # start and end scores

    def forward(self, input_ids=None, attention_mask=None, *, start_positions=None, end_positions=None,
                return_dict: bool | None = None, training: bool = False,
                **inputs: Any) -> QuestionAnsweringOutput | tuple:
        out = self.rembert(input_ids, attention_mask, training=training, **inputs)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # Like transformers: answers outside the window are clamped to index T and that index is ignored.
            T = tf.shape(start_logits)[1]
            start = tf.clip_by_value(tf.reshape(tf.cast(start_positions, tf.int32), [-1]), 0, T)
            end = tf.clip_by_value(tf.reshape(tf.cast(end_positions, tf.int32), [-1]), 0, T)
            loss = (cross_entropy(start_logits, start, T) + cross_entropy(end_logits, end, T)) / 2
        return _finish(QuestionAnsweringOutput(loss, start_logits, end_logits, out.hidden_states, out.attentions),
                       return_dict)


MODEL_CLASSES: dict[str, type[TFRemBertPreTrainedModel]] = {
    c.__name__: c
    for c in (
        TFRemBertModel,
        TFRemBertForMaskedLM,
        TFRemBertForCausalLM,
        TFRemBertForSequenceClassification,
        TFRemBertForMultipleChoice,
        TFRemBertForTokenClassification,
        TFRemBertForQuestionAnswering,
    )
}


# -- reading weight files ------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_h5_weights(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """A Hugging Face `tf_model.h5` -> {Keras name below the root: h5py dataset}, open while in the block.
    The root (the first part of each stored name, e.g. tf_rem_bert_for_masked_lm) is dropped, as Hugging
    Face's loader does, so the file of any head loads into any other."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc}); convert the checkpoint again") from exc
    with handle:
        layer_names = h5_attribute(handle, "layer_names")
        if not layer_names:
            raise UserError(f"{path} has no layer_names attribute: not a Keras weights file")
        values = {}
        for layer in layer_names:
            if layer not in handle:
                raise UserError(f"{path} lists layer {layer!r} but has no such group; convert the checkpoint again")
            for stored in h5_attribute(handle[layer], "weight_names"):
                if stored not in handle[layer]:
                    raise UserError(f"{path} lists weight {stored!r} but does not hold it; "
                                    "convert the checkpoint again")
                values[stored.split("/", 1)[1]] = handle[layer][stored]
        yield values


def read_h5_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every weight of a `tf_model.h5` as an array, by Keras name below the root."""
    with open_h5_weights(path) as datasets:
        return {name: dataset[()] for name, dataset in datasets.items()}
