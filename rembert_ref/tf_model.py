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
(output_attentions, use_cache, ...) select the traced graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from converters.errors import UserError
from rembert_ref.config import RemBertConfig

TF_WEIGHTS_NAME = "tf_model.h5"
SAFE_WEIGHTS_NAME = "model.safetensors"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"

PastKeyValues = tuple[tuple[tf.Tensor, tf.Tensor], ...]  # per layer: (key, value), each (B, nh, S, hs)


# -- outputs: the fields of the PyTorch outputs; NamedTuples so they pass through tf.function ----------------


class BaseModelOutput(NamedTuple):
    last_hidden_state: tf.Tensor  # (B, T, H)
    pooler_output: tf.Tensor | None = None  # (B, H)
    past_key_values: PastKeyValues | None = None
    hidden_states: tuple[tf.Tensor, ...] | None = None  # num_layers + 1 tensors (B, T, H)
    attentions: tuple[tf.Tensor, ...] | None = None  # num_layers tensors (B, nh, T, S)


class MaskedLMOutput(NamedTuple):
    loss: tf.Tensor | None = None  # scalar
    logits: tf.Tensor | None = None  # (B, T, V)
    hidden_states: tuple[tf.Tensor, ...] | None = None
    attentions: tuple[tf.Tensor, ...] | None = None


class CausalLMOutput(NamedTuple):
    loss: tf.Tensor | None = None
    logits: tf.Tensor | None = None  # (B, T, V)
    past_key_values: PastKeyValues | None = None
    hidden_states: tuple[tf.Tensor, ...] | None = None
    attentions: tuple[tf.Tensor, ...] | None = None


class SequenceClassifierOutput(NamedTuple):
    loss: tf.Tensor | None = None
    logits: tf.Tensor | None = None  # (B, num_labels), (B, C) for multiple choice, (B, T, num_labels) for tokens
    hidden_states: tuple[tf.Tensor, ...] | None = None
    attentions: tuple[tf.Tensor, ...] | None = None


MultipleChoiceModelOutput = SequenceClassifierOutput
TokenClassifierOutput = SequenceClassifierOutput


class QuestionAnsweringModelOutput(NamedTuple):
    loss: tf.Tensor | None = None
    start_logits: tf.Tensor | None = None  # (B, T)
    end_logits: tf.Tensor | None = None  # (B, T)
    hidden_states: tuple[tf.Tensor, ...] | None = None
    attentions: tuple[tf.Tensor, ...] | None = None


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
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.word_embeddings = w.normal(f"{scope}/word_embeddings/weight", [c.vocab_size, c.input_embedding_size])
        self.position_embeddings = w.normal(f"{scope}/position_embeddings/embeddings",
                                            [c.max_position_embeddings, c.input_embedding_size])
        self.token_type_embeddings = w.normal(f"{scope}/token_type_embeddings/embeddings",
                                              [c.type_vocab_size, c.input_embedding_size])
        self.LayerNorm = LayerNorm(w, f"{scope}/LayerNorm", c.input_embedding_size)
        self.dropout_rate = c.hidden_dropout_prob
        self.vocab_size = c.vocab_size

    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds, training: bool) -> tf.Tensor:
        if inputs_embeds is None:
            # tf.gather returns zeros for out-of-range ids on GPU instead of failing: check first.
            tf.debugging.assert_less(input_ids, tf.cast(self.vocab_size, input_ids.dtype),
                                     message="input_ids must be < vocab_size")
            inputs_embeds = tf.gather(self.word_embeddings, input_ids)  # (B, T, E)
        x = inputs_embeds + tf.gather(self.position_embeddings, position_ids) \
            + tf.gather(self.token_type_embeddings, token_type_ids)  # (B, T, E)
        return dropout(self.LayerNorm(x), self.dropout_rate, training)


class TFRemBertSelfAttention(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.num_attention_heads, self.attention_head_size = c.num_attention_heads, c.head_size
        self.query = Dense(w, f"{scope}/query", c.hidden_size, c.hidden_size)
        self.key = Dense(w, f"{scope}/key", c.hidden_size, c.hidden_size)
        self.value = Dense(w, f"{scope}/value", c.hidden_size, c.hidden_size)
        self.dropout_rate = c.attention_probs_dropout_prob

    def split_heads(self, x: tf.Tensor) -> tf.Tensor:
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [B, T, self.num_attention_heads, self.attention_head_size])  # (B, T, nh, hs)
        return tf.transpose(x, [0, 2, 1, 3])  # (B, nh, T, hs)

    def __call__(self, hidden_states, attention_mask, head_mask, past_key_value, training: bool):
        q = self.split_heads(self.query(hidden_states))  # (B, nh, T, hs)
        k = self.split_heads(self.key(hidden_states))
        v = self.split_heads(self.value(hidden_states))
        if past_key_value is not None:
            k = tf.concat([past_key_value[0], k], axis=2)  # (B, nh, S, hs)
            v = tf.concat([past_key_value[1], v], axis=2)
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.attention_head_size)  # (B, nh, T, S)
        scores = scores + attention_mask  # 0 where attending, dtype min where masked
        probs = dropout(tf.nn.softmax(scores, axis=-1), self.dropout_rate, training)
        if head_mask is not None:
            probs = probs * head_mask
        context = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])  # (B, T, nh, hs)
        B, T = tf.shape(context)[0], tf.shape(context)[1]
        context = tf.reshape(context, [B, T, self.num_attention_heads * self.attention_head_size])  # (B, T, H)
        return context, probs, (k, v)


class TFRemBertSelfOutput(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.dense = Dense(w, f"{scope}/dense", c.hidden_size, c.hidden_size)
        self.LayerNorm = LayerNorm(w, f"{scope}/LayerNorm", c.hidden_size)
        self.dropout_rate = c.hidden_dropout_prob

    def __call__(self, hidden_states, input_tensor, training: bool) -> tf.Tensor:
        return self.LayerNorm(dropout(self.dense(hidden_states), self.dropout_rate, training) + input_tensor)


class TFRemBertAttention(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.self = TFRemBertSelfAttention(w, f"{scope}/self")
        self.output = TFRemBertSelfOutput(w, f"{scope}/output")

    def __call__(self, hidden_states, attention_mask, head_mask, past_key_value, training: bool):
        context, probs, present = self.self(hidden_states, attention_mask, head_mask, past_key_value, training)
        return self.output(context, hidden_states, training), probs, present


class TFRemBertIntermediate(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.dense = Dense(w, f"{scope}/dense", w.config.hidden_size, w.config.intermediate_size)
        self.intermediate_act_fn = activation(w.config.hidden_act)

    def __call__(self, hidden_states: tf.Tensor) -> tf.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))  # (B, T, I)


class TFRemBertOutput(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.dense = Dense(w, f"{scope}/dense", c.intermediate_size, c.hidden_size)
        self.LayerNorm = LayerNorm(w, f"{scope}/LayerNorm", c.hidden_size)
        self.dropout_rate = c.hidden_dropout_prob

    def __call__(self, hidden_states, input_tensor, training: bool) -> tf.Tensor:
        return self.LayerNorm(dropout(self.dense(hidden_states), self.dropout_rate, training) + input_tensor)


class TFRemBertLayer(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.attention = TFRemBertAttention(w, f"{scope}/attention")
        self.intermediate = TFRemBertIntermediate(w, f"{scope}/intermediate")
        self.output = TFRemBertOutput(w, f"{scope}/output")

    def __call__(self, hidden_states, attention_mask, head_mask, past_key_value, training: bool):
        attention_output, probs, present = self.attention(hidden_states, attention_mask, head_mask,
                                                          past_key_value, training)
        layer_output = self.output(self.intermediate(attention_output), attention_output, training)
        return layer_output, probs, present


class TFRemBertEncoder(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.embedding_hidden_mapping_in = Dense(w, f"{scope}/embedding_hidden_mapping_in",
                                                 c.input_embedding_size, c.hidden_size)
        self.layer = [TFRemBertLayer(w, f"{scope}/layer_._{i}") for i in range(c.num_hidden_layers)]

    def __call__(self, hidden_states, attention_mask, head_mask, past_key_values, use_cache: bool,
                 output_attentions: bool, output_hidden_states: bool, training: bool):
        # hidden_states[0] is the embedding output AFTER the mapping up to hidden_size, as in Hugging Face.
        hidden_states = self.embedding_hidden_mapping_in(hidden_states)  # (B, T, E) -> (B, T, H)
        all_hidden_states, all_attentions, presents = [], [], []
        for i, layer in enumerate(self.layer):
            all_hidden_states.append(hidden_states)
            past = past_key_values[i] if past_key_values is not None else None
            hidden_states, probs, present = layer(hidden_states, attention_mask, head_mask[i], past, training)
            all_attentions.append(probs)
            presents.append(present)
        all_hidden_states.append(hidden_states)
        return (hidden_states,
                tuple(presents) if use_cache else None,
                tuple(all_hidden_states) if output_hidden_states else None,
                tuple(all_attentions) if output_attentions else None)


class TFRemBertPooler(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.dense = Dense(w, f"{scope}/dense", w.config.hidden_size, w.config.hidden_size)

    def __call__(self, hidden_states: tf.Tensor) -> tf.Tensor:
        return tf.tanh(self.dense(hidden_states[:, 0]))  # the first token: (B, H)


class TFRemBertMainLayer(tf.Module):
    """The encoder stack: what PyTorch calls RemBertModel, and Hugging Face TF `TFRemBertMainLayer`."""

    def __init__(self, w: Weights, scope: str, add_pooling_layer: bool = True):
        super().__init__()
        self.config = w.config
        self.embeddings = TFRemBertEmbeddings(w, f"{scope}/embeddings")
        self.encoder = TFRemBertEncoder(w, f"{scope}/encoder")
        self.pooler = TFRemBertPooler(w, f"{scope}/pooler") if add_pooling_layer else None

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, past_key_values=None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 training: bool = False) -> BaseModelOutput:
        c = self.config
        use_cache = (c.use_cache if use_cache is None else use_cache) if c.is_decoder else False
        if (input_ids is None) == (inputs_embeds is None):
            raise UserError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            input_ids = tf.convert_to_tensor(input_ids)
            B, T = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        else:
            inputs_embeds = tf.convert_to_tensor(inputs_embeds)
            B, T = tf.shape(inputs_embeds)[0], tf.shape(inputs_embeds)[1]
        past_length = tf.shape(past_key_values[0][0])[2] if past_key_values is not None else 0
        S = past_length + T

        if attention_mask is None:
            attention_mask = tf.ones([B, S])
        if token_type_ids is None:
            token_type_ids = tf.zeros([B, T], tf.int32)
        if position_ids is None:
            position_ids = tf.range(past_length, S)[None, :]  # (1, T), continues after the cache

        embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, training)
        dtype = embedding_output.dtype
        mask = tf.cast(attention_mask, dtype)[:, None, None, :]  # (B, 1, 1, S)
        if c.is_decoder:
            # query i sits at absolute position past_length + i and sees keys 0 .. past_length + i
            causal = tf.range(S)[None, :] <= tf.range(past_length, S)[:, None]  # (T, S)
            mask = mask * tf.cast(causal, dtype)[None, None]  # (B, 1, T, S)
        # Added to the scores before the softmax; the dtype's minimum, as in the PyTorch models.
        extended_mask = (1.0 - mask) * dtype.min
        head_mask = self.get_head_mask(head_mask, dtype)

        sequence_output, presents, hidden_states, attentions = self.encoder(
            embedding_output, extended_mask, head_mask, past_key_values, use_cache, output_attentions,
            output_hidden_states, training)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutput(sequence_output, pooled_output, presents, hidden_states, attentions)

    def get_head_mask(self, head_mask, dtype: tf.DType) -> list:
        """[nh] or [num_layers, nh] of 1 (keep) / 0 (drop) -> one (1, nh, 1, 1) multiplier per layer."""
        layers = self.config.num_hidden_layers
        if head_mask is None:
            return [None] * layers
        head_mask = tf.cast(head_mask, dtype)
        if head_mask.shape.rank == 1:
            head_mask = tf.tile(head_mask[None], [layers, 1])
        return [head_mask[i][None, :, None, None] for i in range(layers)]


# -- heads ---------------------------------------------------------------------------------------------------


class OutputEmbedding(tf.Module):
    """The decoupled output embedding: weight [V, O] as in PyTorch's nn.Linear, logits = x @ weight.T + bias."""

    def __init__(self, w: Weights, scope: str, fan_in: int, vocab: int):
        super().__init__()
        self.weight = w.normal(f"{scope}/weight", [vocab, fan_in])
        self.bias = w.constant(f"{scope}/bias", [vocab], 0.0)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.weight, transpose_b=True) + self.bias


class TFRemBertLMPredictionHead(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        c = w.config
        self.dense = Dense(w, f"{scope}/dense", c.hidden_size, c.output_embedding_size)
        self.activation = activation(c.hidden_act)
        self.LayerNorm = LayerNorm(w, f"{scope}/LayerNorm", c.output_embedding_size)
        self.decoder = OutputEmbedding(w, f"{scope}/decoder", c.output_embedding_size, c.vocab_size)

    def __call__(self, hidden_states: tf.Tensor) -> tf.Tensor:
        x = self.LayerNorm(self.activation(self.dense(hidden_states)))  # (B, T, O)
        return self.decoder(x)  # (B, T, V)


class TFRemBertOnlyMLMHead(tf.Module):
    def __init__(self, w: Weights, scope: str):
        super().__init__()
        self.predictions = TFRemBertLMPredictionHead(w, f"{scope}/predictions")

    def __call__(self, sequence_output: tf.Tensor) -> tf.Tensor:
        return self.predictions(sequence_output)


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor, ignore_index: int | tf.Tensor = -100) -> tf.Tensor:
    """PyTorch's CrossEntropyLoss: the mean over positions whose label is not ignore_index (nan if none)."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    logits = tf.reshape(logits, [tf.size(labels), -1])
    keep = tf.not_equal(labels, ignore_index)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep, labels, 0), logits=logits)
    keep = tf.cast(keep, logits.dtype)
    return tf.reduce_sum(losses * keep) / tf.reduce_sum(keep)


class TFRemBertPreTrainedModel(tf.Module):
    """Root of every head: its Keras name scope (the first part of every weight name) and the loaders."""

    keras_name = ""  # Keras' automatic name for the Hugging Face class, e.g. tf_rem_bert_for_masked_lm
    has_pooler = True
    has_mlm_head = False

    def __init__(self, config: RemBertConfig, seed: int = 0, dtype: tf.DType = tf.float32):
        super().__init__()
        self.config = config
        w = Weights(config, self.keras_name, seed, dtype)
        self.rembert = TFRemBertMainLayer(w, "rembert", add_pooling_layer=self.has_pooler)
        self.build_head(w)
        self.loading_info: dict[str, list[str]] = {}

    def build_head(self, w: Weights) -> None:
        pass

    def __call__(self, *args, **kwargs):
        raise NotImplementedError

    # -- weights by name -----------------------------------------------------------------------------------

    def weights_by_name(self) -> dict[str, tf.Variable]:
        """Keras weight name below the model's root (`rembert/...:0`, `mlm___cls/...:0`) -> variable."""
        return {v.name.split("/", 1)[1]: v for v in self.variables}

    def load_weights_dict(self, values: Mapping[str, np.ndarray], source: str) -> TFRemBertPreTrainedModel:
        """Assign TF-layout arrays by Keras name below the root. Encoder and MLM-head weights must all be
        present; a missing pooler or task head keeps its seeded initialization and is listed in
        `loading_info["initialized"]`, as in Hugging Face."""
        ours = self.weights_by_name()
        missing = sorted(set(ours) - set(values))
        required = [n for n in missing
                    if (n.startswith("rembert/") and not n.startswith("rembert/pooler/")) or n.startswith("mlm___cls/")]
        if required:
            raise UserError(f"{source} lacks {len(required)} weight(s) of {type(self).__name__}: "
                            f"{', '.join(required[:5])}{' ...' if len(required) > 5 else ''}; "
                            "convert the checkpoint again with the MLM head if the head is missing")
        wrong = [f"{n} {list(values[n].shape)} (expected {ours[n].shape.as_list()})" for n in sorted(ours)
                 if n in values and tuple(values[n].shape) != tuple(ours[n].shape.as_list())]
        if wrong:
            raise UserError(f"{source} does not match config.json: {'; '.join(wrong[:5])}; "
                            "use the config.json written with these weights")
        for name, variable in ours.items():
            if name in values:
                variable.assign(np.asarray(values[name]).astype(variable.dtype.as_numpy_dtype))
        self.loading_info = {"missing": [], "initialized": missing,
                             "unexpected": sorted(set(values) - set(ours))}
        return self

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, seed: int = 0, dtype: tf.DType = tf.float32,
                        **config_overrides: Any):
        """Load `config.json` and `tf_model.h5` (else `model.safetensors`, else `pytorch_model.bin`) from a
        directory. `config_overrides` replace config fields, e.g. num_labels=3 or is_decoder=True."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise UserError(f"{directory} has no {CONFIG_NAME}; pass a directory written by convert-rembert")
        config = RemBertConfig.from_json_file(directory / CONFIG_NAME)
        config = dataclasses.replace(config, **config_overrides)
        model = cls(config, seed=seed, dtype=dtype)
        for name, reader in ((TF_WEIGHTS_NAME, read_h5_weights), (SAFE_WEIGHTS_NAME, read_torch_file),
                             (TORCH_WEIGHTS_NAME, read_torch_file)):
            if (directory / name).is_file():
                return model.load_weights_dict(reader(directory / name, config), str(directory / name))
        raise UserError(f"{directory} has none of {TF_WEIGHTS_NAME}, {SAFE_WEIGHTS_NAME}, {TORCH_WEIGHTS_NAME}; "
                        "convert a checkpoint into it first")

    def load_torch_state_dict(self, state_dict: Mapping[str, Any]) -> TFRemBertPreTrainedModel:
        """Assign a PyTorch state dict (any RemBERT head's layout), transposing Linear weights."""
        return self.load_weights_dict(torch_to_tf_weights(state_dict, self.config), "the state dict")


class TFRemBertModel(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_model"

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, past_key_values=None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 training: bool = False) -> BaseModelOutput:
        return self.rembert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            past_key_values, use_cache, output_attentions, output_hidden_states, training)


class TFRemBertForMaskedLM(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_masked_lm"
    has_pooler, has_mlm_head = False, True

    def build_head(self, w: Weights) -> None:
        # Hugging Face's TF port names the PyTorch `cls` module `mlm___cls`; the attribute keeps PyTorch's name.
        self.cls = TFRemBertOnlyMLMHead(w, "mlm___cls")

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, output_attentions: bool = False,
                 output_hidden_states: bool = False, training: bool = False) -> MaskedLMOutput:
        out = self.rembert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           training=training)
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return MaskedLMOutput(loss, logits, out.hidden_states, out.attentions)


class TFRemBertForCausalLM(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_causal_lm"
    has_pooler, has_mlm_head = False, True

    def build_head(self, w: Weights) -> None:
        self.cls = TFRemBertOnlyMLMHead(w, "mlm___cls")

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, past_key_values=None, labels=None,
                 use_cache: bool | None = None, output_attentions: bool = False,
                 output_hidden_states: bool = False, training: bool = False) -> CausalLMOutput:
        out = self.rembert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                           past_key_values, use_cache, output_attentions, output_hidden_states, training)
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            # position t predicts token t + 1
            loss = cross_entropy(logits[:, :-1], tf.convert_to_tensor(labels)[:, 1:])
        return CausalLMOutput(loss, logits, out.past_key_values, out.hidden_states, out.attentions)


class TFRemBertForSequenceClassification(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_sequence_classification"

    def build_head(self, w: Weights) -> None:
        self.num_labels = self.config.num_labels
        self.classifier = Dense(w, "classifier", self.config.hidden_size, self.num_labels)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, output_attentions: bool = False,
                 output_hidden_states: bool = False, training: bool = False) -> SequenceClassifierOutput:
        out = self.rembert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           training=training)
        pooled = dropout(out.pooler_output, self.config.classifier_dropout_prob, training)
        logits = self.classifier(pooled)  # (B, num_labels)
        loss = self.loss(logits, tf.convert_to_tensor(labels)) if labels is not None else None
        return SequenceClassifierOutput(loss, logits, out.hidden_states, out.attentions)

    def loss(self, logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        # The PyTorch rule: problem_type if set, else regression for one label, integer labels -> single-label
        # classification, float labels -> multi-label.
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype.is_integer:
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            labels = tf.cast(labels, logits.dtype)
            if self.num_labels == 1:
                return tf.reduce_mean(tf.square(tf.reshape(logits, [-1]) - tf.reshape(labels, [-1])))
            return tf.reduce_mean(tf.square(logits - labels))
        if problem == "single_label_classification":
            return cross_entropy(logits, labels)
        labels = tf.cast(labels, logits.dtype)
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


class TFRemBertForMultipleChoice(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_multiple_choice"

    def build_head(self, w: Weights) -> None:
        self.classifier = Dense(w, "classifier", self.config.hidden_size, 1)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, output_attentions: bool = False,
                 output_hidden_states: bool = False, training: bool = False) -> MultipleChoiceModelOutput:
        # (B, C, T) -> (B*C, T): every choice is encoded on its own
        leading = input_ids if input_ids is not None else inputs_embeds
        leading = tf.convert_to_tensor(leading)
        num_choices, T = tf.shape(leading)[1], tf.shape(leading)[2]

        def flat(x, trailing=()):
            return None if x is None else tf.reshape(x, [-1, T, *trailing])

        embeds = None if inputs_embeds is None else flat(inputs_embeds, [self.config.input_embedding_size])
        out = self.rembert(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                           head_mask, embeds, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training)
        pooled = dropout(out.pooler_output, self.config.classifier_dropout_prob, training)
        logits = tf.reshape(self.classifier(pooled), [-1, num_choices])  # (B, C)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return MultipleChoiceModelOutput(loss, logits, out.hidden_states, out.attentions)


class TFRemBertForTokenClassification(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_token_classification"
    has_pooler = False

    def build_head(self, w: Weights) -> None:
        self.num_labels = self.config.num_labels
        self.classifier = Dense(w, "classifier", self.config.hidden_size, self.num_labels)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, output_attentions: bool = False,
                 output_hidden_states: bool = False, training: bool = False) -> TokenClassifierOutput:
        out = self.rembert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           training=training)
        # PyTorch's RemBertForTokenClassification uses classifier_dropout_prob here (HF TF: hidden_dropout_prob).
        sequence_output = dropout(out.last_hidden_state, self.config.classifier_dropout_prob, training)
        logits = self.classifier(sequence_output)  # (B, T, num_labels)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return TokenClassifierOutput(loss, logits, out.hidden_states, out.attentions)


class TFRemBertForQuestionAnswering(TFRemBertPreTrainedModel):
    keras_name = "tf_rem_bert_for_question_answering"
    has_pooler = False

    def build_head(self, w: Weights) -> None:
        self.num_labels = self.config.num_labels
        self.qa_outputs = Dense(w, "qa_outputs", self.config.hidden_size, self.num_labels)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, start_positions=None, end_positions=None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 training: bool = False) -> QuestionAnsweringModelOutput:
        out = self.rembert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           training=training)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence are clamped to T and ignored, as in PyTorch.
            T = tf.shape(start_logits)[1]

            def clamp(p):
                return tf.clip_by_value(tf.reshape(tf.cast(p, tf.int32), [-1]), 0, T)

            loss = (cross_entropy(start_logits, clamp(start_positions), T)
                    + cross_entropy(end_logits, clamp(end_positions), T)) / 2
        return QuestionAnsweringModelOutput(loss, start_logits, end_logits, out.hidden_states, out.attentions)


ALL_HEADS = (TFRemBertModel, TFRemBertForMaskedLM, TFRemBertForCausalLM, TFRemBertForSequenceClassification,
             TFRemBertForMultipleChoice, TFRemBertForTokenClassification, TFRemBertForQuestionAnswering)


# -- reading weight files ------------------------------------------------------------------------------------


def _h5_attribute(group, name: str) -> list[str]:
    # Keras splits attributes above HDF5's 64 KB header limit into name0, name1, ...
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, k = [], 0
        while f"{name}{k}" in group.attrs:
            chunks.append(group.attrs[f"{name}{k}"])
            k += 1
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for chunk in chunks for n in chunk]


def read_h5_weights(path: str | os.PathLike, config: RemBertConfig | None = None) -> dict[str, np.ndarray]:
    """A Hugging Face `tf_model.h5` -> {Keras name below the root: array}. The root (the first part of each
    stored name, e.g. tf_rem_bert_for_masked_lm) is dropped, as Hugging Face's loader does."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc}); convert the checkpoint again") from exc
    values: dict[str, np.ndarray] = {}
    with handle:
        layer_names = _h5_attribute(handle, "layer_names")
        if not layer_names:
            raise UserError(f"{path} has no layer_names attribute: not a Keras weights file")
        for layer in layer_names:
            for stored in _h5_attribute(handle[layer], "weight_names"):
                values[stored.split("/", 1)[1]] = handle[layer][stored][()]
    return values


def read_torch_file(path: str | os.PathLike, config: RemBertConfig) -> dict[str, np.ndarray]:
    """`model.safetensors` or `pytorch_model.bin` -> TF-layout arrays by Keras name (Linear weights transposed)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch_to_tf_weights(state_dict, config)


def torch_to_tf_weights(state_dict: Mapping[str, Any], config: RemBertConfig) -> dict[str, np.ndarray]:
    from converters.mapping import torch_to_tf_name

    values = {}
    for torch_name, tensor in state_dict.items():
        target = torch_to_tf_name(torch_name, config)
        # A name outside the table stays under its PyTorch name, so the loader lists it as unexpected.
        tf_name, transpose = target if target is not None else (torch_name, False)
        array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        values[tf_name] = array.T if transpose else array
    return values
