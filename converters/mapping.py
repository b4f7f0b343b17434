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
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dataclasses import dataclass, field

from rembert_ref.errors import UserError
from rembert_ref.config import RemBertConfig

FLOAT_SOURCE_DTYPES = ("float32", "float16", "bfloat16", "float64")  # what a weight can be read from

Shape = tuple[int, ...]

ENCODER, POOLER, MLM, HEAD = "encoder", "pooler", "mlm", "head"
OUTPUT_EMBEDDING = "<output-embedding>"  # resolved per checkpoint: Google never published the name


@dataclass(frozen=True)
class Rule:
    source: str  # e.g. "bert/encoder/layer_{layer}/attention/self/{proj}/kernel"
    torch: str  # PyTorch name without the "rembert." prefix for encoder/pooler parts
    tf: str  # Keras weight name below the model's root scope
    transpose: bool  # PyTorch Linear weights are [out, in]; TF1 kernels and Keras kernels are [in, out]
    part: str  # ENCODER | POOLER | MLM | HEAD
    shape: Callable[[RemBertConfig], Shape]
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Keras kernels are [in, out] like TF1 dense kernels; only run_classifier/run_squad's [out, in]
    # `output_weights` must be transposed for tf_model.h5.
    tf_transpose: bool = False


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
    # A TF1 optimizer names its slots `<weight>/<optimizer>`, then `_1`, `_2`, ... (a second slot, or a second
    # optimizer of the same kind); BERT's AdamWeightDecay names them adam_m / adam_v.
    IgnoreRule("optimizer-slot", r".*/(adam_m|adam_v|Adafactor\w*|LAMB\w*"
               r"|(Adam|Momentum|RMSProp|Adagrad|Adadelta|Ftrl|ProximalAdagrad|AdagradDA)(_\d+)?)",
               "optimizer state, not a model weight"),
    IgnoreRule("optimizer-slot", r".*AdamWeightDecayOptimizer.*", "optimizer state, not a model weight"),
    IgnoreRule("optimizer-power", r"beta[12]_power(_\d+)?", "optimizer state, not a model weight"),
    IgnoreRule("global-step", r"global_step", "training step counter"),
    IgnoreRule("nsp-head", r"cls/seq_relationship/.*", "next-sentence head: no RemBERT class uses it"),
)

OUTPUT_EMBEDDING_SUFFIXES = ("output_embedding", "output_embeddings")


# -- task heads of fine-tuned checkpoints ----------------------------------------------------------------------

SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING = (
    "sequence-classification", "token-classification", "question-answering")


@dataclass(frozen=True)
class HeadKind:
    """What `--head` names: the Hugging Face class, its head layer (same name in PyTorch and Keras), and the
    encoder output the head reads."""

    architecture: str
    layer: str
    reads: str  # "pooled output" | "sequence output"
    keeps_pooler: bool  # transformers builds these classes with / without the pooler


HEAD_KINDS: dict[str, HeadKind] = {
    SEQUENCE_CLASSIFICATION: HeadKind("RemBertForSequenceClassification", "classifier", "pooled output", True),
    TOKEN_CLASSIFICATION: HeadKind("RemBertForTokenClassification", "classifier", "sequence output", False),
    QUESTION_ANSWERING: HeadKind("RemBertForQuestionAnswering", "qa_outputs", "sequence output", False),
}


@dataclass(frozen=True)
class TaskHeadRule:
    """A fine-tuning script's head: one kernel + bias at the top level of the graph. Its number of outputs is
    read from the checkpoint; `kinds` are the heads its names can be; `named_kind` is the one the names alone
    prove (None where the same names serve a pooled-output and a per-token head)."""

    name: str
    kernel: str
    bias: str
    kernel_in_out: bool  # tf.layers.dense kernels are [hidden, n]; BERT's output_weights are [n, hidden]
    kinds: tuple[str, ...]
    named_kind: str | None
    origin: str
    outputs: int | None = None  # a fixed number of outputs (SQuAD: start and end)


TASK_HEAD_RULES: tuple[TaskHeadRule, ...] = (
    TaskHeadRule("dense", "dense/kernel", "dense/bias", True,
                 (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING), None,
                 "tf.layers.dense at the top level, as BLEURT writes it"),
    TaskHeadRule("output_weights", "output_weights", "output_bias", False,
                 (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING), None,
                 "BERT run_classifier.py, [labels, hidden], matmul with transpose_b"),
    TaskHeadRule("cls/squad", "cls/squad/output_weights", "cls/squad/output_bias", False,
                 (QUESTION_ANSWERING,), QUESTION_ANSWERING, "BERT run_squad.py (span logits per token)", outputs=2),
)
BLEURT_CONFIG = "bleurt_config.json"  # ships beside every BLEURT SavedModel; BLEURT scores the pooled output


@dataclass(frozen=True)
class TaskHead:
    """The task head found in a checkpoint, and how its kind was decided."""

    kind: str  # a HEAD_KINDS key
    rule: TaskHeadRule
    num_labels: int  # read from the checkpoint's kernel
    decided_by: str  # "--head", "the variable names", or "bleurt_config.json beside the checkpoint"

    @property
    def architecture(self) -> str:
        return HEAD_KINDS[self.kind].architecture

    @property
    def problem_type(self) -> str | None:
        if self.kind != SEQUENCE_CLASSIFICATION:
            return None  # transformers' token-classification and QA heads have one loss each
        return "regression" if self.num_labels == 1 else "single_label_classification"

    def describe(self) -> str:
        kind = HEAD_KINDS[self.kind]
        what = "regression" if self.problem_type == "regression" else f"{self.num_labels} outputs"
        return (f"{kind.architecture} ({what}, on the {kind.reads}) from {self.rule.kernel} + {self.rule.bias} "
                f"by rule '{self.rule.name}' ({self.rule.origin}); kind decided by {self.decided_by}")

    def rules(self) -> tuple[Rule, ...]:
        """The head as two ordinary table rules, shapes from the config (whose num_labels it sets)."""
        layer = HEAD_KINDS[self.kind].layer
        in_out = self.rule.kernel_in_out

        def kernel_shape(c: RemBertConfig) -> Shape:
            return (c.hidden_size, c.num_labels) if in_out else (c.num_labels, c.hidden_size)

        return (
            Rule(self.rule.kernel, f"{layer}.weight", f"{layer}/kernel:0", in_out, HEAD, kernel_shape,
                 tf_transpose=not in_out),
            Rule(self.rule.bias, f"{layer}.bias", f"{layer}/bias:0", False, HEAD, lambda c: (c.num_labels,)),
        )


def find_task_head(
    variables: Mapping[str, tuple[Shape, str]],
    head: str | None = None,
    *,
    hint: tuple[str, str] | None = None,
) -> TaskHead | None:
    """The checkpoint's task head (None if it has none). `head` is the user's `--head`; `hint` is
    (kind, evidence) from the files beside the checkpoint (BLEURT's bleurt_config.json). Refuses when the
    names do not decide and nothing else does, naming the choices."""
    if head is not None and head not in HEAD_KINDS:
        raise UserError(f"unknown --head {head!r}; use one of: {', '.join(HEAD_KINDS)}")
    found = [rule for rule in TASK_HEAD_RULES if rule.kernel in variables or rule.bias in variables]
    if not found:
        if head is not None:
            raise UserError(f"--head {head} given but the checkpoint has no task head (none of "
                            + ", ".join(f"{r.kernel}/{r.bias.rsplit('/', 1)[-1]}" for r in TASK_HEAD_RULES)
                            + "); leave --head out")
        return None
    if len(found) > 1:
        raise UserError("the checkpoint has several task heads (" + ", ".join(f"{r.kernel} + {r.bias}" for r in found)
                        + "); convert a checkpoint with one head")
    rule = found[0]
    stacked = sorted(name for name in variables if re.fullmatch(r"dense_\d+/kernel", name))
    if rule.name == "dense" and stacked:
        raise UserError(f"{rule.kernel} with {', '.join(stacked)} after it is a head of {len(stacked) + 1} dense "
                        "layers (BLEURT's n_hidden_layers > 0); transformers' heads are one layer, so it cannot be "
                        "converted")
    for name in (rule.kernel, rule.bias):
        if name not in variables:
            other = rule.bias if name == rule.kernel else rule.kernel
            raise UserError(f"task head {other} has no {name} beside it; the checkpoint is incomplete")
    kernel_shape = tuple(variables[rule.kernel][0])
    if len(kernel_shape) != 2:
        raise UserError(f"task head {rule.kernel} has shape {list(kernel_shape)}; a head kernel is 2-D")
    num_labels = kernel_shape[1] if rule.kernel_in_out else kernel_shape[0]
    if head is not None:
        kind, decided_by = head, "--head"
        if kind not in rule.kinds:
            raise UserError(f"--head {head} does not fit {rule.kernel} ({rule.origin}); it can only be "
                            f"--head {' or '.join(rule.kinds)}")
    elif rule.named_kind is not None:
        kind, decided_by = rule.named_kind, "the variable names"
    elif hint is not None and hint[0] in rule.kinds:
        kind, decided_by = hint
    else:
        raise UserError(f"task head {rule.kernel} {list(kernel_shape)} + {rule.bias} can read the pooled output "
                        "or every token; say which with --head "
                        + "|".join(rule.kinds))
    if rule.outputs is not None and num_labels != rule.outputs:
        raise UserError(f"{rule.kernel} has {num_labels} outputs; {rule.origin} writes {rule.outputs}: the "
                        "checkpoint is not what its names say")
    if kind == QUESTION_ANSWERING and num_labels != 2:
        others = " or ".join(f"--head {k}" for k in rule.kinds if k != QUESTION_ANSWERING)
        raise UserError(f"question answering needs 2 outputs (start, end) but {rule.kernel} has {num_labels}; "
                        f"pass {others}")
    return TaskHead(kind, rule, num_labels, decided_by)


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
    tf_transpose: bool = False  # tf_model.h5 needs the source transposed (BERT's [out, in] output_weights)

    @property
    def read_whole(self) -> bool:
        """Transposed kernels are read whole (the largest real one is 21 MB), the rest in row slices: convert
        and the tensor proof both cut tensors by this, so every format is compared in the same slices."""
        return self.transpose or self.tf_transpose

    @property
    def target_shape(self) -> Shape:
        return tuple(reversed(self.source_shape)) if self.transpose else self.source_shape

    @property
    def tf_shape(self) -> Shape:
        return tuple(reversed(self.source_shape)) if self.tf_transpose else self.source_shape


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
    task_head: TaskHead | None = None

    @property
    def architecture(self) -> str:
        if self.task_head is not None:
            return self.task_head.architecture
        return "RemBertForMaskedLM" if self.mlm_head else "RemBertModel"

    @property
    def ignored(self) -> list[VariableRow]:
        return [r for r in self.rows if r.status == "ignored"]

    @property
    def absent_by_design(self) -> list[VariableRow]:
        return [r for r in self.rows if r.status == "absent"]


def torch_prefix(part: str, with_head: bool) -> str:
    """With a head (MLM or task) the file has that class's layout (`rembert.` + `cls.` / `classifier.` /
    `qa_outputs.`), else the bare model's."""
    return "rembert." if with_head and part not in (MLM, HEAD) else ""


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
    task_head: TaskHead | None = None,
    head_problem: str | None = None,
) -> tuple[list[VariableRow], str | None]:
    """One row per source variable and per expected-but-absent variable. Never raises on a mismatch: the
    rows say what is wrong, so `inspect` can show everything at once.

    With a `task_head` (whose num_labels the config holds) the head's two rules join the table, the MLM
    head is not needed (its variables, if any, are ignored), and the pooler is needed only by a head that
    reads it. `head_problem` (why no task head could be chosen) is the detail of the head's variables."""
    output_embedding = find_output_embedding(variables, output_embedding_name)
    with_mlm = mlm_head and task_head is None
    with_head = mlm_head or task_head is not None  # the `rembert.` layout
    drop_pooler = task_head is not None and not HEAD_KINDS[task_head.kind].keeps_pooler
    rules = RULES + (task_head.rules() if task_head is not None else ())
    expected: dict[str, tuple[Rule, str, str]] = {}
    for rule in rules if config is not None else ():
        for source, torch, tf in expand(rule, config):
            if source == OUTPUT_EMBEDDING:
                source = output_embedding or "<output embedding: a variable named */output_embedding(s)>"
            if source in expected:  # one variable cannot fill two places: the other would be left empty
                other = expected[source][0]
                if with_mlm or MLM not in (rule.part, other.part):
                    raise UserError(f"{source} would be both {expected[source][1]} and {torch}; the output "
                                    "embedding must be a variable of its own: pass its name with "
                                    "--output-embedding-name, or --no-mlm-head for a checkpoint without one")
                if rule.part == MLM:  # the MLM head is not converted: the other place keeps the variable
                    continue
            expected[source] = (rule, torch, tf)
    head_variables = {n for r in TASK_HEAD_RULES for n in (r.kernel, r.bias)}

    rows: list[VariableRow] = []
    for name in sorted(variables):
        shape, dtype = tuple(variables[name][0]), variables[name][1]
        if name in expected:
            rule, torch, tf = expected[name]
            want = rule.shape(config)
            if not with_mlm and rule.part == MLM:
                why = (f"mlm-head: not part of {task_head.architecture} (the task head is converted)"
                       if task_head is not None else "mlm-head: dropped by --no-mlm-head")
                rows.append(VariableRow(name, shape, dtype, "ignored", why))
            elif drop_pooler and rule.part == POOLER:
                rows.append(VariableRow(name, shape, dtype, "ignored",
                                        f"pooler: {task_head.architecture} has none (its head reads every token)"))
            elif shape != want:
                rows.append(VariableRow(name, shape, dtype, "error",
                                        f"has shape {list(shape)} but the config implies {list(want)}"))
            elif dtype not in FLOAT_SOURCE_DTYPES:
                rows.append(VariableRow(name, shape, dtype, "error",
                                        f"has dtype {dtype}; only float tensors map to weights"))
            else:
                mapping = TensorMapping(name, shape, dtype, torch_prefix(rule.part, with_head) + torch, tf,
                                        rule.transpose, rule.part, rule.source, rule.tf_transpose)
                detail = mapping.torch_name + (" (transposed)" if rule.transpose else "")
                if rule.part == HEAD:
                    detail += f" [task head, rule '{task_head.rule.name}']"
                rows.append(VariableRow(name, shape, dtype, "mapped", detail, mapping))
        elif (reason := ignore_reason(name)) is not None:
            rows.append(VariableRow(name, shape, dtype, "ignored", reason))
        elif config is None:
            rows.append(VariableRow(name, shape, dtype, "unknown", "no config: pass --config to check it"))
        elif name in head_variables and head_problem is not None:
            rows.append(VariableRow(name, shape, dtype, "error", head_problem))
        else:
            rows.append(VariableRow(name, shape, dtype, "error", _explain_unknown(name, config)))

    for source, (rule, torch, _) in expected.items():
        if source in variables or (rule.part == MLM and not with_mlm) or (rule.part == POOLER and drop_pooler):
            continue
        target = torch_prefix(rule.part, with_head) + torch
        if rule.part == POOLER and task_head is not None:
            rows.append(VariableRow(source, rule.shape(config), "-", "missing",
                                    f"is missing from the checkpoint ({task_head.architecture} reads the pooled "
                                    f"output: needed for {target})"))
        elif rule.part == POOLER:
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
    task_head: TaskHead | None = None,
    inspect_args: Sequence[str] = ("CKPT",),
    next_step: str | None = None,
) -> ConversionPlan:
    """Match checkpoint variables (name -> (shape, dtype)) against the table, or fail naming the first problems
    and the `inspect` command (with `inspect_args`) that lists them all, or `next_step` where that is another.
    With a `task_head`, `config.num_labels` must already be the head's (see `apply_task_head`)."""
    rows, output_embedding = classify(config, variables, mlm_head=mlm_head,
                                      output_embedding_name=output_embedding_name, task_head=task_head)
    problems = [f"{r.variable} {r.detail}" for r in rows if r.status in PROBLEM_STATUSES]
    if problems:
        raise UserError(mismatch_message(problems, inspect_args, next_step))
    mappings = sorted((r.mapping for r in rows if r.mapping is not None), key=lambda m: m.torch_name)
    return ConversionPlan(config, mlm_head and task_head is None, mappings, rows, output_embedding, task_head)


def refuse_object_graph_checkpoint(variables: Mapping[str, Any], where: str) -> None:
    """A TF2 SavedModel (or object-based checkpoint) stores variables by object path
    (`model/layer_with_weights-0/.../.ATTRIBUTES/VARIABLE_VALUE`), not by TF1 graph name: nothing in it says
    which tensor is which RemBERT weight, so it is refused rather than guessed at."""
    object_keys = sorted(n for n in variables if "/.ATTRIBUTES/" in n)  # VARIABLE_VALUE, table-keys, ...
    graph_names = [n for n in variables if n not in object_keys and n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    if object_keys and not graph_names:  # object paths only, even if one starts with bert/ (an attribute's name)
        raise UserError(f"{where} is a TF2 object-graph SavedModel/checkpoint (keys like {object_keys[0]}), not a "
                        "TF1 one with graph names (bert/...); export the model with TF1 names (an Estimator "
                        "SavedModel or tf.compat.v1 Saver checkpoint) and convert that")


def apply_task_head(config: RemBertConfig, task_head: TaskHead | None, labels: Sequence[str] | None = None) -> None:
    """Give the config the head's class, size, label names and problem type (generic LABEL_i names unless
    `labels` are given, one per output)."""
    if task_head is None:
        if labels is not None:
            raise UserError("--labels given but the checkpoint has no task head; leave --labels out")
        return
    config.num_labels = task_head.num_labels
    config.problem_type = task_head.problem_type
    config.architectures = [task_head.architecture]
    config.set_labels(labels)


SHOWN_PROBLEMS = 3


def mismatch_message(problems: Sequence[str], inspect_args: Sequence[str], next_step: str | None = None) -> str:
    """The count, the first few problems and the command that lists every one: one line a person reads."""
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    next_step = next_step or f"Check --config; `convert-rembert inspect {shlex.join(inspect_args)}` lists them all"
    return f"checkpoint and config disagree on {len(problems)} variable(s): {shown}{more}. {next_step}"


def _explain_unknown(name: str, config: RemBertConfig) -> str:
    for rule in RULES:
        match = _template_regex(rule).fullmatch(name) if rule.source != OUTPUT_EMBEDDING else None
        if match and "layer" in match.groupdict():
            return (f"belongs to layer {match['layer']} but the config has num_hidden_layers = "
                    f"{config.num_hidden_layers}")
    return "matches no mapping or ignore rule"


# -- PyTorch <-> TF2 names, derived from RULES ---------------------------------------------------------------

# Task heads are not in pre-trained RemBERT, so RULES does not hold them (a fine-tuned checkpoint's head is
# matched by TASK_HEAD_RULES); each is one Linear / Dense with the same name in both frameworks (Hugging Face's
# RemBERT heads).
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
