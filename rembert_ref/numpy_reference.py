"""The ground truth: a numpy float64 forward pass of the ORIGINAL RemBERT TF1 graph, on the original variables.

It follows Google's BERT `modeling.py` (`BertModel`, `embedding_postprocessor`, `transformer_model`,
`attention_layer`) and `run_pretraining.py` (`get_masked_lm_output`, `get_next_sentence_output`) with
RemBERT's changes: small input embeddings, projected up by `bert/encoder/embedding_hidden_mapping_in` before the
first layer, and a decoupled output embedding [vocab, output_embedding_size] in the MLM head.

It reads variables by their original names with TF1 conventions (dense kernels [in, out]) and shares nothing
with the name-mapping table or the PyTorch / TF2 models, so it can judge them. Outputs use Hugging Face's
conventions: `hidden_states[0]` is the embedding output AFTER `embedding_hidden_mapping_in`, then one entry per
layer.

It never holds a float64 copy of the model: weights come from a `WeightSource` one variable at a time, when the
layer that uses them runs (a plain dict of arrays works too, through `ArrayWeights`); the embedding tables are
gathered and the masked-LM logits computed in row slices of the vocabulary, so the largest float64 weight in
memory is one slice (or one [hidden, intermediate] kernel, 42 MB at full size). A checkpoint reader adapts to
`WeightSource` in `validation/parity.py` (this package imports nothing of the converters).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rembert_ref.errors import UserError

LAYER_NORM_EPS = 1e-12  # tf.contrib.layers.layer_norm
MASK_ADDER = -10000.0  # modeling.py: adder = (1.0 - attention_mask) * -10000.0
OUTPUT_EMBEDDING_SUFFIXES = ("output_embedding", "output_embeddings")

SLICE_BYTES = 32 << 20  # float64 bytes per slice of a big table (embeddings, output embedding)

_erf = np.vectorize(math.erf, otypes=[np.float64])  # exact erf without scipy


def gelu(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":  # BERT's TF1 gelu: the tanh approximation (Hugging Face "gelu_new")
        # x * x * x, not x**3: numpy computes a cube with pow(), which made this 7x slower (0.5 s at full size).
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))
    if activation == "exact":  # Hugging Face "gelu"
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    raise UserError(f"unknown activation {activation!r}; use 'tanh' (TF1 BERT's gelu) or 'exact' (erf)")


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    # Biased variance over the last axis, like tf.nn.moments inside tf.contrib.layers.layer_norm.
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + LAYER_NORM_EPS) * gamma + beta


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def find_output_embedding(names: list[str], output_embedding_name: str | None) -> str | None:
    """The decoupled output embedding: the given name, else the unique `*/output_embedding(s)` variable."""
    if output_embedding_name is not None:
        if output_embedding_name not in names:
            raise UserError(f"output embedding {output_embedding_name!r} is not in the checkpoint; "
                            "pass the right name or leave it out to find it by its suffix")
        return output_embedding_name
    # Matching the last segment leaves out optimizer slots such as `.../output_embedding/adam_m`.
    candidates = sorted(n for n in names if n.split("/")[-1] in OUTPUT_EMBEDDING_SUFFIXES)
    if len(candidates) > 1:
        raise UserError(f"several output embeddings ({', '.join(candidates)}); pass output_embedding_name")
    return candidates[0] if candidates else None


@runtime_checkable
class WeightSource(Protocol):
    """Original variables by name, read on demand as float64."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> np.ndarray:
        """The whole variable as float64 (used for kernels and vectors, never for the big tables)."""
        ...

    def row_slices(self, name: str, max_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float64 rows) for consecutive row slices of about `max_bytes` float64 bytes."""
        ...


class ArrayWeights:
    """A `WeightSource` over arrays in memory (tests, small models)."""

    def __init__(self, variables: Mapping[str, np.ndarray]):
        self.variables = variables

    def names(self) -> list[str]:
        return list(self.variables)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self.variables[name]))

    def read(self, name: str) -> np.ndarray:
        return np.asarray(self.variables[name]).astype(np.float64)

    def row_slices(self, name: str, max_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        table = np.asarray(self.variables[name])
        rows = max(1, max_bytes // max(8 * int(np.prod(table.shape[1:], dtype=np.int64)), 1))
        for start in range(0, table.shape[0], rows):
            yield start, table[start:start + rows].astype(np.float64)


def as_weight_source(variables: Mapping[str, np.ndarray] | WeightSource) -> WeightSource:
    return variables if isinstance(variables, WeightSource) else ArrayWeights(variables)


def gather_rows(weights: WeightSource, name: str, ids: np.ndarray) -> np.ndarray:
    """table[ids] in float64, reading the table once in row slices and keeping only the rows asked for."""
    ids = np.asarray(ids)
    out = np.empty((*ids.shape, *weights.shape(name)[1:]), dtype=np.float64)
    flat_ids, flat_out = ids.reshape(-1), out.reshape(ids.size, -1)
    for start, rows in weights.row_slices(name, SLICE_BYTES):
        hit = (flat_ids >= start) & (flat_ids < start + rows.shape[0])
        if hit.any():
            flat_out[hit] = rows[flat_ids[hit] - start].reshape(int(hit.sum()), -1)
    return out


def vocabulary_logits(weights: WeightSource, embedding: str, bias: str, x: np.ndarray) -> np.ndarray:
    """x @ embedding.T + bias over the vocabulary, one row slice of the output embedding at a time: (..., V)."""
    bias_values = weights.read(bias)
    logits = np.empty((*x.shape[:-1], bias_values.shape[0]), dtype=np.float64)
    flat_x, flat_logits = x.reshape(-1, x.shape[-1]), logits.reshape(-1, logits.shape[-1])
    for start, rows in weights.row_slices(embedding, SLICE_BYTES):
        flat_logits[:, start:start + rows.shape[0]] = flat_x @ rows.T + bias_values[start:start + rows.shape[0]]
    return logits


def matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(..., in) @ [in, out] as ONE 2-D product: numpy runs a 3-D @ 2-D product as one product per leading
    index, each reading the whole weight again (at full size that made the reference 10x slower)."""
    return (x.reshape(-1, x.shape[-1]) @ weight).reshape(*x.shape[:-1], weight.shape[-1])


def causal_mask(attention_mask: np.ndarray) -> np.ndarray:
    """A (B, T) 1/0 padding mask -> (B, T, T): query t attends to keys <= t that are not padding (what a
    decoder adds to the original graph; `original_forward` takes 3-D masks as they are)."""
    attention_mask = np.asarray(attention_mask)
    T = attention_mask.shape[-1]
    return np.tril(np.ones((T, T)))[None] * attention_mask[:, None, :]


def original_forward(
    variables: Mapping[str, np.ndarray] | WeightSource,
    original_config: dict,
    input_ids: np.ndarray,
    token_type_ids: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    *,
    activation: str = "tanh",
    output_embedding_name: str | None = None,
    output_attentions: bool = True,
) -> dict[str, Any]:
    """Run the original graph in float64 (no dropout). Returns "embedding_output", "hidden_states"
    (num_layers + 1), "attentions" (empty unless `output_attentions`), "last_hidden_state", "pooler_output"
    (None without a pooler), "mlm_logits" (None without an MLM head) and "nsp_logits" (None without the
    next-sentence head).

    `attention_mask` is (B, T) (1 = attend) or (B, T, T) per query, e.g. `causal_mask(mask)`; rows of one
    batch may mix both kinds, since every position's dense layers are independent of the others."""
    gelu(np.zeros(1), activation)  # refuse an unknown activation before any work
    weights = as_weight_source(variables)
    present = set(weights.names())

    def require(name: str) -> str:
        if name not in present:
            raise UserError(f"variable {name} is missing from the checkpoint; is it an original RemBERT one?")
        return name

    def var(name: str) -> np.ndarray:
        return weights.read(require(name))

    def dense(x: np.ndarray, scope: str) -> np.ndarray:
        return matmul(x, var(f"{scope}/kernel")) + var(f"{scope}/bias")  # TF1 kernels are [in, out]

    missing = [k for k in ("num_hidden_layers", "num_attention_heads") if k not in original_config]
    if missing:
        raise UserError(f"original config lacks {', '.join(missing)}; pass the checkpoint's bert_config.json")
    num_layers = int(original_config["num_hidden_layers"])
    num_heads = int(original_config["num_attention_heads"])
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
        raise UserError(f"input_ids must be a 2-D integer array [batch, seq], got {input_ids.dtype} "
                        f"{input_ids.shape}")
    B, T = input_ids.shape
    token_type_ids = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
    attention_mask = np.ones((B, T)) if attention_mask is None else np.asarray(attention_mask)
    if token_type_ids.shape != (B, T) or attention_mask.shape not in ((B, T), (B, T, T)):
        raise UserError(f"token_type_ids {token_type_ids.shape} and attention_mask {attention_mask.shape} must "
                        f"match input_ids {input_ids.shape}")

    # Embeddings: word + token type + position, LayerNorm (dropout is off at inference).
    for name in ("word_embeddings", "token_type_embeddings", "position_embeddings"):
        require(f"bert/embeddings/{name}")
    for ids, name, what in ((input_ids, "word_embeddings", "input_ids"),
                            (token_type_ids, "token_type_embeddings", "token_type_ids")):
        rows = weights.shape(f"bert/embeddings/{name}")[0]
        if ids.size and (ids.min() < 0 or ids.max() >= rows):
            raise UserError(f"{what} must lie in [0, {rows}); got values in [{ids.min()}, {ids.max()}]")
    positions = weights.shape("bert/embeddings/position_embeddings")[0]
    if positions < T:
        raise UserError(f"sequence length {T} exceeds max_position_embeddings {positions}; shorten it")
    x = (gather_rows(weights, "bert/embeddings/word_embeddings", input_ids)  # (B, T, E)
         + gather_rows(weights, "bert/embeddings/token_type_embeddings", token_type_ids)
         + gather_rows(weights, "bert/embeddings/position_embeddings", np.arange(T))[None])
    embedding_output = layer_norm(x, var("bert/embeddings/LayerNorm/gamma"), var("bert/embeddings/LayerNorm/beta"))

    # RemBERT: project the small input embedding up to the hidden size before the first layer.
    h = dense(embedding_output, "bert/encoder/embedding_hidden_mapping_in")  # (B, T, H)
    H = h.shape[-1]
    if H % num_heads:
        raise UserError(f"hidden size {H} is not a multiple of num_attention_heads {num_heads}; fix the config")
    D = H // num_heads  # head size

    # (B, 1, 1 or T, T): masked keys get -10000 added to the query's score, as in modeling.py.
    mask = attention_mask.astype(np.float64)
    adder = (1.0 - (mask[:, None, None, :] if mask.ndim == 2 else mask[:, None])) * MASK_ADDER

    def split_heads(t: np.ndarray) -> np.ndarray:
        return t.reshape(B, T, num_heads, D).transpose(0, 2, 1, 3)  # (B, nh, T, D)

    hidden_states, attentions = [h], []
    for i in range(num_layers):  # one layer's weights in memory at a time
        layer = f"bert/encoder/layer_{i}"
        q = split_heads(dense(h, f"{layer}/attention/self/query"))  # (B, nh, T, D)
        k = split_heads(dense(h, f"{layer}/attention/self/key"))
        v = split_heads(dense(h, f"{layer}/attention/self/value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D) + adder  # (B, nh, T, T)
        probs = softmax(scores)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, H)  # (B, T, H)
        attention_output = layer_norm(
            dense(context, f"{layer}/attention/output/dense") + h,
            var(f"{layer}/attention/output/LayerNorm/gamma"), var(f"{layer}/attention/output/LayerNorm/beta"),
        )
        intermediate = gelu(dense(attention_output, f"{layer}/intermediate/dense"), activation)  # (B, T, I)
        h = layer_norm(
            dense(intermediate, f"{layer}/output/dense") + attention_output,
            var(f"{layer}/output/LayerNorm/gamma"), var(f"{layer}/output/LayerNorm/beta"),
        )
        hidden_states.append(h)
        if output_attentions:
            attentions.append(probs)

    pooler_output = None
    if "bert/pooler/dense/kernel" in present:
        pooler_output = np.tanh(dense(h[:, 0], "bert/pooler/dense"))  # (B, H): the first token

    mlm_logits = None
    if "cls/predictions/transform/dense/kernel" in present:
        output_embedding = find_output_embedding(sorted(present), output_embedding_name)
        if output_embedding is None:
            raise UserError("the checkpoint has an MLM head but no output embedding (*/output_embedding); "
                            "pass output_embedding_name")
        t = gelu(dense(h, "cls/predictions/transform/dense"), activation)  # (B, T, O)
        t = layer_norm(t, var("cls/predictions/transform/LayerNorm/gamma"),
                       var("cls/predictions/transform/LayerNorm/beta"))
        mlm_logits = vocabulary_logits(weights, output_embedding, "cls/predictions/output_bias", t)  # (B, T, V)

    nsp_logits = None
    if "cls/seq_relationship/output_weights" in present and pooler_output is not None:
        nsp_weights = var("cls/seq_relationship/output_weights")  # (2, H)
        nsp_logits = pooler_output @ nsp_weights.T + var("cls/seq_relationship/output_bias")  # (B, 2)

    return {
        "embedding_output": embedding_output,
        "hidden_states": hidden_states,
        "attentions": attentions,
        "last_hidden_state": h,
        "pooler_output": pooler_output,
        "mlm_logits": mlm_logits,
        "nsp_logits": nsp_logits,
    }


# -- task heads on top of the original graph -----------------------------------------------------------------
# A head is one dense layer (weight [out, in] as in run_classifier.py's `output_weights`, bias [out]) applied to
# the pooled output (sequence classification, multiple choice) or to every token (token classification,
# question answering). The weights come from the caller: seeded new heads, or a fine-tuned checkpoint's own.

POOLED, PER_TOKEN = "pooled", "per-token"


def head_logits(outputs: Mapping[str, Any], weight: np.ndarray, bias: np.ndarray, applies_to: str) -> np.ndarray:
    """(B, out) on the pooled output, or (B, T, out) on the last hidden state, in float64."""
    weight, bias = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    if applies_to == POOLED:
        if outputs["pooler_output"] is None:
            raise UserError("this head reads the pooled output but the checkpoint has no pooler")
        return outputs["pooler_output"] @ weight.T + bias
    if applies_to == PER_TOKEN:
        return outputs["last_hidden_state"] @ weight.T + bias
    raise UserError(f"unknown head input {applies_to!r}; use {POOLED!r} or {PER_TOKEN!r}")


# -- fine-tuned checkpoints: the original fine-tuning code's head, by the names that code gives it ------------

# (kernel, bias, kernel is [hidden, n] as tf.layers.dense makes it; else [n, hidden], which the code uses
# with matmul(..., transpose_b=True)).
ORIGINAL_TASK_HEADS = {
    "bleurt": ("dense/kernel", "dense/bias", True),  # BLEURT: tf.layers.dense(pooled_output, 1)
    "run_classifier": ("output_weights", "output_bias", False),  # BERT run_classifier.py
    "run_squad": ("cls/squad/output_weights", "cls/squad/output_bias", False),  # BERT run_squad.py
}
TASK_HEAD_INPUTS = {  # what each transformers head class reads, and so which original computation it is
    "sequence-classification": POOLED,
    "token-classification": PER_TOKEN,
    "question-answering": PER_TOKEN,
}


def original_head_weights(variables: Mapping[str, np.ndarray] | WeightSource) -> tuple[str, np.ndarray, np.ndarray]:
    """(script, weight [n, hidden], bias [n]) of the one original task head among the variables."""
    weights = as_weight_source(variables)
    names = set(weights.names())
    found = [script for script, (kernel, _, _) in ORIGINAL_TASK_HEADS.items() if kernel in names]
    if len(found) != 1:
        raise UserError(f"expected one task head ({', '.join(k for k, _, _ in ORIGINAL_TASK_HEADS.values())}), "
                        f"found {len(found)}; pass the fine-tuned checkpoint")
    kernel_name, bias_name, in_out = ORIGINAL_TASK_HEADS[found[0]]
    if bias_name not in names:
        raise UserError(f"task head {kernel_name} has no {bias_name}; the checkpoint is incomplete")
    kernel = weights.read(kernel_name)
    return found[0], (kernel.T if in_out else kernel), weights.read(bias_name)


def original_head_logits(
    variables: Mapping[str, np.ndarray] | WeightSource, kind: str, outputs: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The fine-tuned head's outputs in float64, from `original_forward`'s outputs.

    - sequence-classification (BLEURT, run_classifier): logits = pooled_output @ W^T + b, (B, n); BLEURT's
      score is logits[:, 0], run_classifier softmaxes them.
    - token-classification: the same map on every token of the last hidden state, (B, T, n).
    - question-answering (run_squad): logits = sequence_output @ W^T + b, (B, T, 2), unstacked into
      start_logits = logits[..., 0] and end_logits = logits[..., 1], each (B, T).
    """
    if kind not in TASK_HEAD_INPUTS:
        raise UserError(f"unknown head kind {kind!r}; use one of: {', '.join(TASK_HEAD_INPUTS)}")
    _, weight, bias = original_head_weights(variables)
    logits = head_logits(outputs, weight, bias, TASK_HEAD_INPUTS[kind])
    if kind != "question-answering":
        return {"logits": logits}
    if logits.shape[-1] != 2:
        raise UserError(f"a question-answering head has 2 outputs (start, end), this one has {logits.shape[-1]}")
    return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
