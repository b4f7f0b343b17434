"""The one name-mapping table: original TF1 RemBERT variables -> Hugging Face names, for every format.

Each `Rule` names an original variable (a template over `{layer}` and one-of choices), its PyTorch target,
its TF2 (Keras h5) target, whether PyTorch needs the TF1 [in, out] kernel transposed, which part of the model
it belongs to, and its TF1 shape as a function of the config. Every writer, `inspect` and the parity checks
use this table; the numpy ground truth in `rembert_ref/numpy_reference.py` deliberately does not.

`plan_conversion` matches a checkpoint's variables against the table: every source variable is mapped or
ignored by a named rule, every target is filled (or absent by design: a checkpoint without a pooler), and
anything else is a `UserError` that lists the names.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dataclasses import dataclass, field

from rembert_ref.errors import UserError
from rembert_ref.config import RemBertConfig

Shape = tuple[int, ...]

ENCODER, POOLER, MLM = "encoder", "pooler", "mlm"
OUTPUT_EMBEDDING = "<output-embedding>"  # resolved per checkpoint: Google never published the name


@dataclass(frozen=True)
class Rule:
    source: str  # e.g. "bert/encoder/layer_{layer}/attention/self/{proj}/kernel"
    torch: str  # PyTorch name without the "rembert." prefix for encoder/pooler parts
    tf: str  # Keras weight name below the model's root scope
    transpose: bool  # PyTorch Linear weights are [out, in]; TF1 kernels and Keras kernels are [in, out]
    part: str  # ENCODER | POOLER | MLM
    shape: Callable[[RemBertConfig], Shape]
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)


def _dense(scope: str, torch: str, tf: str, part: str, fan_in: Callable, fan_out: Callable, **choices) -> list[Rule]:
    return [
        Rule(f"{scope}/kernel", f"{torch}.weight", f"{tf}/kernel:0", True, part,
             lambda c: (fan_in(c), fan_out(c)), choices),
        Rule(f"{scope}/bias", f"{torch}.bias", f"{tf}/bias:0", False, part, lambda c: (fan_out(c),), choices),
    ]


def _layer_norm(scope: str, torch: str, tf: str, part: str, width: Callable, **choices) -> list[Rule]:
    return [
        Rule(f"{scope}/gamma", f"{torch}.weight", f"{tf}/gamma:0", False, part, lambda c: (width(c),), choices),
        Rule(f"{scope}/beta", f"{torch}.bias", f"{tf}/beta:0", False, part, lambda c: (width(c),), choices),
    ]


def _hidden(c: RemBertConfig) -> int:
    return c.hidden_size


LAYER = "bert/encoder/layer_{layer}"
TF_LAYER = "rembert/encoder/layer_._{layer}"

RULES: tuple[Rule, ...] = (
    Rule("bert/embeddings/word_embeddings", "embeddings.word_embeddings.weight",
         "rembert/embeddings/word_embeddings/weight:0", False, ENCODER,
         lambda c: (c.vocab_size, c.input_embedding_size)),
    Rule("bert/embeddings/position_embeddings", "embeddings.position_embeddings.weight",
         "rembert/embeddings/position_embeddings/embeddings:0", False, ENCODER,
         lambda c: (c.max_position_embeddings, c.input_embedding_size)),
    Rule("bert/embeddings/token_type_embeddings", "embeddings.token_type_embeddings.weight",
         "rembert/embeddings/token_type_embeddings/embeddings:0", False, ENCODER,
         lambda c: (c.type_vocab_size, c.input_embedding_size)),
    *_layer_norm("bert/embeddings/LayerNorm", "embeddings.LayerNorm", "rembert/embeddings/LayerNorm", ENCODER,
                 lambda c: c.input_embedding_size),
    *_dense("bert/encoder/embedding_hidden_mapping_in", "encoder.embedding_hidden_mapping_in",
            "rembert/encoder/embedding_hidden_mapping_in", ENCODER, lambda c: c.input_embedding_size, _hidden),
    *_dense(f"{LAYER}/attention/self/{{proj}}", "encoder.layer.{layer}.attention.self.{proj}",
            f"{TF_LAYER}/attention/self/{{proj}}", ENCODER, _hidden, _hidden, proj=("query", "key", "value")),
    *_dense(f"{LAYER}/attention/output/dense", "encoder.layer.{layer}.attention.output.dense",
            f"{TF_LAYER}/attention/output/dense", ENCODER, _hidden, _hidden),
    *_layer_norm(f"{LAYER}/attention/output/LayerNorm", "encoder.layer.{layer}.attention.output.LayerNorm",
                 f"{TF_LAYER}/attention/output/LayerNorm", ENCODER, _hidden),
    *_dense(f"{LAYER}/intermediate/dense", "encoder.layer.{layer}.intermediate.dense",
            f"{TF_LAYER}/intermediate/dense", ENCODER, _hidden, lambda c: c.intermediate_size),
    *_dense(f"{LAYER}/output/dense", "encoder.layer.{layer}.output.dense", f"{TF_LAYER}/output/dense", ENCODER,
            lambda c: c.intermediate_size, _hidden),
    *_layer_norm(f"{LAYER}/output/LayerNorm", "encoder.layer.{layer}.output.LayerNorm",
                 f"{TF_LAYER}/output/LayerNorm", ENCODER, _hidden),
    *_dense("bert/pooler/dense", "pooler.dense", "rembert/pooler/dense", POOLER, _hidden, _hidden),
    *_dense("cls/predictions/transform/dense", "cls.predictions.dense", "mlm___cls/predictions/dense", MLM,
            _hidden, lambda c: c.output_embedding_size),
    *_layer_norm("cls/predictions/transform/LayerNorm", "cls.predictions.LayerNorm",
                 "mlm___cls/predictions/LayerNorm", MLM, lambda c: c.output_embedding_size),
    Rule("cls/predictions/output_bias", "cls.predictions.decoder.bias", "mlm___cls/predictions/decoder/bias:0",
         False, MLM, lambda c: (c.vocab_size,)),
    # The decoupled output embedding is [vocab, output_embedding_size] in TF1 and in both targets.
    Rule(OUTPUT_EMBEDDING, "cls.predictions.decoder.weight", "mlm___cls/predictions/decoder/weight:0",
         False, MLM, lambda c: (c.vocab_size, c.output_embedding_size)),
)


@dataclass(frozen=True)
class IgnoreRule:
    name: str
    pattern: str  # a regex matched against the whole variable name
    reason: str


IGNORE_RULES: tuple[IgnoreRule, ...] = (
    IgnoreRule("optimizer-slot", r".*/(adam_m|adam_v|Adam|Adam_\d+|Adafactor\w*|LAMB\w*|Momentum)",
               "optimizer state, not a model weight"),
    IgnoreRule("optimizer-slot", r".*AdamWeightDecayOptimizer.*", "optimizer state, not a model weight"),
    IgnoreRule("optimizer-power", r"beta[12]_power(_\d+)?", "optimizer state, not a model weight"),
    IgnoreRule("global-step", r"global_step", "training step counter"),
    IgnoreRule("nsp-head", r"cls/seq_relationship/.*", "next-sentence head: no RemBERT class uses it"),
)

OUTPUT_EMBEDDING_SUFFIXES = ("output_embedding", "output_embeddings")


# -- planning ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorMapping:
    """One source variable and where it goes."""

    source: str
    source_shape: Shape
    source_dtype: str
    torch_name: str  # full name in the written file's layout
    tf_name: str  # below the Keras model's root scope
    transpose: bool
    part: str
    rule: str  # the source template, for reports

    @property
    def target_shape(self) -> Shape:
        return tuple(reversed(self.source_shape)) if self.transpose else self.source_shape


@dataclass(frozen=True)
class VariableRow:
    """What happens to one source variable, or to one expected variable the checkpoint lacks."""

    variable: str
    shape: Shape
    dtype: str
    status: str  # mapped | ignored | absent (by design) | missing | error | unknown (no config given)
    detail: str
    mapping: TensorMapping | None = None


PROBLEM_STATUSES = ("missing", "error")


@dataclass
class ConversionPlan:
    config: RemBertConfig
    mlm_head: bool
    mappings: list[TensorMapping]  # sorted by torch name: the order of every written file
    rows: list[VariableRow]
    output_embedding: str | None

    @property
    def ignored(self) -> list[VariableRow]:
        return [r for r in self.rows if r.status == "ignored"]

    @property
    def absent_by_design(self) -> list[VariableRow]:
        return [r for r in self.rows if r.status == "absent"]


def torch_prefix(part: str, mlm_head: bool) -> str:
    """With the MLM head the file has the RemBertForMaskedLM layout (`rembert.` + `cls.`), else the bare model."""
    return "rembert." if mlm_head and part != MLM else ""


def expand(rule: Rule, config: RemBertConfig) -> Iterable[tuple[str, str, str]]:
    """(source, torch, tf) names of one rule, over all layers and choices of the config."""
    keys = list(rule.choices)
    layers = range(config.num_hidden_layers) if "{layer}" in rule.source else [None]
    for layer, values in itertools.product(layers, itertools.product(*(rule.choices[k] for k in keys))):
        subst = dict(zip(keys, values, strict=True), layer=layer)
        yield (rule.source.format(**subst), rule.torch.format(**subst), rule.tf.format(**subst))


def _template_regex(rule: Rule) -> re.Pattern:
    pattern = re.escape(rule.source).replace(re.escape("{layer}"), r"(?P<layer>\d+)")
    for key, options in rule.choices.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), "(?:" + "|".join(map(re.escape, options)) + ")")
    return re.compile(pattern)


def ignore_reason(name: str) -> str | None:
    for rule in IGNORE_RULES:
        if re.fullmatch(rule.pattern, name):
            return f"{rule.name}: {rule.reason}"
    return None


def find_output_embedding(variables: Mapping[str, tuple[Shape, str]], explicit: str | None) -> str | None:
    if explicit is not None:
        if explicit not in variables:
            raise UserError(f"--output-embedding-name {explicit!r} is not in the checkpoint; "
                            "run `convert-rembert inspect CKPT` to list its variables")
        return explicit
    candidates = sorted(n for n in variables
                        if n.rsplit("/", 1)[-1] in OUTPUT_EMBEDDING_SUFFIXES and ignore_reason(n) is None)
    if len(candidates) > 1:
        raise UserError(f"several output-embedding candidates ({', '.join(candidates)}); "
                        "name the right one with --output-embedding-name")
    return candidates[0] if candidates else None


def classify(
    config: RemBertConfig | None,
    variables: Mapping[str, tuple[Shape, str]],
    *,
    mlm_head: bool = True,
    output_embedding_name: str | None = None,
) -> tuple[list[VariableRow], str | None]:
    """One row per source variable and per expected-but-absent variable. Never raises on a mismatch: the
    rows say what is wrong, so `inspect` can show everything at once."""
    output_embedding = find_output_embedding(variables, output_embedding_name)
    expected: dict[str, tuple[Rule, str, str]] = {}
    for rule in RULES if config is not None else ():
        for source, torch, tf in expand(rule, config):
            if source == OUTPUT_EMBEDDING:
                source = output_embedding or "<output embedding: a variable named */output_embedding(s)>"
            expected[source] = (rule, torch, tf)

    rows: list[VariableRow] = []
    for name in sorted(variables):
        shape, dtype = tuple(variables[name][0]), variables[name][1]
        if name in expected:
            rule, torch, tf = expected[name]
            want = rule.shape(config)
            if not mlm_head and rule.part == MLM:
                rows.append(VariableRow(name, shape, dtype, "ignored", "mlm-head: dropped by --no-mlm-head"))
            elif shape != want:
                rows.append(VariableRow(name, shape, dtype, "error",
                                        f"has shape {list(shape)} but the config implies {list(want)}"))
            else:
                mapping = TensorMapping(name, shape, dtype, torch_prefix(rule.part, mlm_head) + torch, tf,
                                        rule.transpose, rule.part, rule.source)
                detail = mapping.torch_name + (" (transposed)" if rule.transpose else "")
                rows.append(VariableRow(name, shape, dtype, "mapped", detail, mapping))
        elif (reason := ignore_reason(name)) is not None:
            rows.append(VariableRow(name, shape, dtype, "ignored", reason))
        elif config is None:
            rows.append(VariableRow(name, shape, dtype, "unknown", "no config: pass --config to check it"))
        else:
            rows.append(VariableRow(name, shape, dtype, "error", _explain_unknown(name, config)))

    for source, (rule, torch, _) in expected.items():
        if source in variables or (rule.part == MLM and not mlm_head):
            continue
        target = torch_prefix(rule.part, mlm_head) + torch
        if rule.part == POOLER:
            rows.append(VariableRow(source, rule.shape(config), "-", "absent",
                                    f"{target}: the checkpoint has no pooler (absent by design)"))
        else:
            rows.append(VariableRow(source, rule.shape(config), "-", "missing",
                                    f"is missing from the checkpoint (needed for {target})"))
    return rows, output_embedding


def plan_conversion(
    config: RemBertConfig,
    variables: Mapping[str, tuple[Shape, str]],
    *,
    mlm_head: bool = True,
    output_embedding_name: str | None = None,
) -> ConversionPlan:
    """Match checkpoint variables (name -> (shape, dtype)) against the table, or fail listing every problem."""
    rows, output_embedding = classify(config, variables, mlm_head=mlm_head,
                                      output_embedding_name=output_embedding_name)
    problems = [f"{r.variable} {r.detail}" for r in rows if r.status in PROBLEM_STATUSES]
    if problems:
        raise UserError(f"checkpoint and config disagree on {len(problems)} variable(s): " + "; ".join(problems)
                        + ". Check --config, or run `convert-rembert inspect CKPT` for the full table")
    mappings = sorted((r.mapping for r in rows if r.mapping is not None), key=lambda m: m.torch_name)
    return ConversionPlan(config, mlm_head, mappings, rows, output_embedding)


def _explain_unknown(name: str, config: RemBertConfig) -> str:
    for rule in RULES:
        match = _template_regex(rule).fullmatch(name) if rule.source != OUTPUT_EMBEDDING else None
        if match and "layer" in match.groupdict():
            return (f"belongs to layer {match['layer']} but the config has num_hidden_layers = "
                    f"{config.num_hidden_layers}")
    return "matches no mapping or ignore rule"


# -- PyTorch <-> TF2 names, derived from RULES ---------------------------------------------------------------

# Task heads are not in the original checkpoint, so RULES does not hold them; each is one Linear / Dense with
# the same name in both frameworks (Hugging Face's RemBERT heads).
TASK_HEAD_LINEARS = ("classifier", "qa_outputs")


def torch_to_tf_name(torch_name: str, config: RemBertConfig) -> tuple[str, bool] | None:
    """(Keras name below the model root, transpose) for a PyTorch weight name of any RemBERT head's layout
    (bare model, `rembert.` + `cls.`, or a task head), or None if it is no weight of the table."""
    table = _torch_to_tf_table(config.num_hidden_layers)
    name = torch_name.removeprefix("rembert.")
    if name in table:
        return table[name]
    if ".crossattention." in name:  # a decoder's cross-attention has the self-attention block's names
        found = table.get(name.replace(".crossattention.", ".attention."))
        return (found[0].replace("/attention/", "/crossattention/"), found[1]) if found else None
    head, _, kind = torch_name.rpartition(".")
    if head in TASK_HEAD_LINEARS and kind in ("weight", "bias"):
        return (f"{head}/kernel:0", True) if kind == "weight" else (f"{head}/bias:0", False)
    return None


def tf_to_torch_name(tf_name: str, config: RemBertConfig, mlm_head: bool) -> tuple[str, bool] | None:
    """The inverse of `torch_to_tf_name`, in the file layout `torch_prefix` gives."""
    if "/crossattention/" in tf_name:
        found = tf_to_torch_name(tf_name.replace("/crossattention/", "/attention/"), config, mlm_head)
        return (found[0].replace(".attention.", ".crossattention."), found[1]) if found else None
    for rule in RULES:
        for _, torch, tf in expand(rule, config):
            if tf == tf_name:
                return torch_prefix(rule.part, mlm_head) + torch, rule.transpose
    head, _, kind = tf_name.rpartition("/")
    if head in TASK_HEAD_LINEARS and kind in ("kernel:0", "bias:0"):
        return (f"{head}.weight", True) if kind == "kernel:0" else (f"{head}.bias", False)
    return None


@functools.lru_cache(maxsize=8)
def _torch_to_tf_table(num_layers: int) -> dict[str, tuple[str, bool]]:
    # Names depend on the config only through the layer count; a stand-in config keeps the cache key small.
    config = RemBertConfig(num_hidden_layers=num_layers)
    return {torch: (tf, rule.transpose) for rule in RULES for _, torch, tf in expand(rule, config)}


def read_torch_weights_as_tf(directory: Path, config: RemBertConfig) -> tuple[dict[str, np.ndarray], str]:
    """Our PyTorch files (`model.safetensors`, sharded or not, or `pytorch_model.bin`), read by the PyTorch
    reference's reader, as TF-layout arrays by Keras name (Linear weights transposed)."""
    from rembert_ref.torch_model import read_state_dict

    state_dict, weights_file = read_state_dict(directory)
    return torch_to_tf_weights(state_dict, config), weights_file


def torch_to_tf_weights(state_dict: Mapping[str, Any], config: RemBertConfig) -> dict[str, np.ndarray]:
    """A PyTorch state dict of any RemBERT head's layout -> TF-layout arrays by Keras name below the root."""
    values = {}
    for torch_name, tensor in state_dict.items():
        if torch_name.endswith("embeddings.position_ids"):
            continue  # a buffer older transformers versions saved: arange(max_positions), no weights
        target = torch_to_tf_name(torch_name, config)
        # A name outside the table stays under its PyTorch name, so the loader lists it as unexpected.
        tf_name, transpose = target if target is not None else (torch_name, False)
        array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        values[tf_name] = array.T if transpose else array
    return values
