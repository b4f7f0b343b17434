"""`verify`: the proof that a converted folder holds the checkpoint, in two independent parts.

1. The tensor proof (`validation/tensor_proof.py`): every tensor of every format, bit for bit against its
   source variable (cast-exact for float16 / bfloat16), driven by the mapping table. Catches any changed value.
2. The functional proof (here): every head in every format, loaded by its Hugging Face names into the
   reference models (`rembert_ref`), run against a float64 forward pass of the ORIGINAL TF1 graph on the
   ORIGINAL variable names (`rembert_ref/numpy_reference.py`), which does not use the mapping table. Catches an
   error in the table (a transposed square kernel, swapped layers) that the tensor proof would share.

Inputs: text through the folder's own tokenizer when it has one (a built-in multilingual sample, a sentence
pair with both token types, and a short text padded with an attention mask); without one, seeded ids of the
same three shapes. Task heads that the checkpoint does not hold (classifier, qa_outputs) get seeded weights,
the same in every format and in the float64 reference; a head the checkpoint provides can be added to
`HEAD_SPECS` with its weights passed in `task_head_weights`.

Cost at full size: one format's model is in memory at a time, memory-mapped (pytorch_model.bin, safetensors)
or, for tf_model.h5, each dataset mapped and handed to TensorFlow through DLPack (convert aligns them; other
files are read once into memory); the reference reads one layer's weights at a time. Every head of a
format shares one copy of the weights, and the heads that run the same encoder on the same inputs share its
result (`_SharedEncoder`): each head's own forward still runs (its loading, reshaping, pooling and head layers),
the 32-layer encoder runs once per format for the bidirectional heads and once for the causal LM.

Each functional row: head, format, output, shape, max abs diff, mean abs diff, relative error (max abs /
max |reference|), tolerance (atol + rtol x max |reference|, per weight dtype; an override is recorded), pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import numpy as np

from rembert_ref.errors import UserError, require_tensorflow
from rembert_ref.numpy_reference import PER_TOKEN, POOLED
from converters.progress import StepProgress, Update
from validation.tensor_proof import TensorRow

if TYPE_CHECKING:  # for annotations only: both are imported where they are used
    from converters.tf1_checkpoint import CheckpointReader
    from rembert_ref.config import RemBertConfig

# (atol, rtol) per weight dtype. fp32 against float64: rounding of ~1e-7 per op, grown through the layers;
# fp16 / bf16 weights carry 2^-11 / 2^-8 relative rounding into every product.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-5),
    "float16": (5e-3, 5e-3),
    "bfloat16": (4e-2, 4e-2),
}
FORMAT_FILES = {
    "pytorch": ("pytorch_model.bin",),
    "safetensors": ("model.safetensors", "model.safetensors.index.json"),
    "tf2": ("tf_model.h5",),
}
FORMATS = tuple(FORMAT_FILES)
ORIGINAL = "original-fp64"
PARITY_JSON, PARITY_MARKDOWN = "parity_report.json", "parity_report.md"
BIDIRECTIONAL, CAUSAL = "bidirectional", "causal"

# The built-in probe text: several scripts, accents, digits, an emoji; a sentence pair; a short text to pad.
# Short on purpose: the functional proof is there to catch a wrong mapping (a transposed kernel, swapped layers,
# a miswired head), which any few distinct tokens do; every value of every tensor, far position rows and unused
# vocabulary rows included, is the tensor proof's job. At full size each probe token costs an encoder pass over
# 510 M weights and a 250,300-word projection, per format and again in float64: rows stay within 16 tokens.
MULTILINGUAL_SAMPLE = "東京 Москва القاهرة नदी ποταμός Zürich 42 🌊"
SENTENCE_PAIR = ("Wie alt ist der Turm?", "130 Jahre.")
SHORT_TEXT = "Olá!"
MAX_PROBE_TOKENS = 16
# The causal LM runs on the sentence pair only: its encoder pass is a second one anyway, and in the float64
# reference every extra row costs a full pass over the 250,300-word vocabulary.
CAUSAL_ROWS = slice(1, 2)


@dataclass(frozen=True)
class HeadSpec:
    """A head the verify runs: its class name (in both reference frameworks, TF with a `TF` prefix), which
    encoder it runs, and for a task head its layer: the attribute (`classifier` / `qa_outputs`), its output
    size, whether it reads the pooled output or every token, and how its logits are laid out."""

    name: str
    encoder: str = BIDIRECTIONAL
    layer: str | None = None
    out_features: int = 0
    applies_to: str = ""  # numpy_reference.POOLED | PER_TOKEN
    outputs: tuple[str, ...] = ("logits",)
    from_checkpoint: bool = False  # a fine-tuned head: its weights come from the file and the checkpoint


def head_specs(num_labels: int = 3) -> dict[str, HeadSpec]:
    return {spec.name: spec for spec in (
        HeadSpec("RemBertModel", outputs=()),
        HeadSpec("RemBertForMaskedLM"),
        HeadSpec("RemBertForCausalLM", encoder=CAUSAL),
        HeadSpec("RemBertForSequenceClassification", layer="classifier", out_features=num_labels,
                 applies_to=POOLED),
        HeadSpec("RemBertForMultipleChoice", layer="classifier", out_features=1, applies_to=POOLED),
        HeadSpec("RemBertForTokenClassification", layer="classifier", out_features=num_labels,
                 applies_to=PER_TOKEN),
        HeadSpec("RemBertForQuestionAnswering", layer="qa_outputs", out_features=2, applies_to=PER_TOKEN,
                 outputs=("start_logits", "end_logits")),
    )}


HEAD_SPECS = head_specs()
HEADS = tuple(HEAD_SPECS)


@dataclass(frozen=True)
class ParityRow:
    head: str
    format: str
    output: str
    reference: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    rel_err: float
    tolerance: float
    passed: bool


@dataclass
class ParityReport:
    dtype: str
    activation: str
    tolerance: dict[str, float]
    tolerance_override: bool
    inputs: dict[str, Any]
    formats: list[str]
    rows: list[ParityRow] = field(default_factory=list)
    tensor_rows: list[TensorRow] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.rows or self.tensor_rows) and not self.failures and not self.tensor_failures

    @property
    def failures(self) -> list[ParityRow]:
        return [row for row in self.rows if not row.passed]

    @property
    def tensor_failures(self) -> list[TensorRow]:
        return [row for row in self.tensor_rows if not row.passed]

    def worst_rows(self) -> list[ParityRow]:
        """The row nearest to (or furthest beyond) its tolerance, per head and format."""
        worst: dict[tuple[str, str], ParityRow] = {}
        for row in self.rows:
            key = (row.head, row.format)
            if key not in worst or severity(row) > severity(worst[key]):
                worst[key] = row
        return list(worst.values())

    def summary(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "functional_rows": len(self.rows), "functional_failed": len(self.failures),
            "tensor_rows": len(self.tensor_rows), "tensor_failed": len(self.tensor_failures),
            "worst_per_head_and_format": [
                {"head": r.head, "format": r.format, "output": r.output, "max_abs": r.max_abs,
                 "rel_err": r.rel_err, "tolerance": r.tolerance, "passed": r.passed} for r in self.worst_rows()],
            "failing_tensors": [{"format": r.format, "tensor": r.tensor, "source": r.source, "check": r.check,
                                 "detail": r.detail} for r in self.tensor_failures],
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything but the timings (`seconds`): the same folder gives the same report, byte for byte."""
        values = dataclasses.asdict(self)
        values.pop("seconds")
        values["passed"] = self.passed
        values["summary"] = self.summary()
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n"

    def to_markdown(self) -> str:
        tol = self.tolerance
        lines = [
            f"# Parity report: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"Weights dtype {self.dtype}, activation {self.activation}. Formats: {', '.join(self.formats)}.",
            f"Tensors: {len(self.tensor_rows) - len(self.tensor_failures)}/{len(self.tensor_rows)} checks pass "
            "(every value bit-identical to the source cast to the weights' dtype).",
            f"Functional: {len(self.rows) - len(self.failures)}/{len(self.rows)} outputs within tolerance "
            f"(atol {tol['atol']:g} + rtol {tol['rtol']:g} x max|reference|"
            + (", overridden by the user" if self.tolerance_override else "") + ") of the float64 original graph.",
            f"Inputs: {self.inputs.get('description', '')}",
            "",
            "## Summary",
            "",
            "The worst output of each head and format is the one nearest its tolerance (max abs / tolerance).",
            "",
            "| head | format | worst output | max abs | rel err | tolerance | pass |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.worst_rows():
            lines.append(f"| {r.head} | {r.format} | {r.output} | {r.max_abs:.2e} | {r.rel_err:.2e} | "
                         f"{r.tolerance:.2e} | {'yes' if r.passed else 'NO'} |")
        if self.tensor_failures:
            lines += ["", "Failing tensors:", ""]
            lines += [f"- {r.format}: `{r.tensor}` ({r.check}; source `{r.source}`): {r.detail}"
                      for r in self.tensor_failures]
        lines += ["", "## Functional rows", "",
                  "| head | format | output | reference | shape | max abs | mean abs | rel err | tolerance | pass |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            lines.append(f"| {r.head} | {r.format} | {r.output} | {r.reference} | {list(r.shape)} | {r.max_abs:.2e} "
                         f"| {r.mean_abs:.2e} | {r.rel_err:.2e} | {r.tolerance:.2e} | {'yes' if r.passed else 'NO'} |")
        lines += ["", "## Tensor rows", "", "| format | tensor | source | check | shape | dtype | differing | "
                  "max abs | pass |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.tensor_rows:
            lines.append(f"| {r.format} | `{r.tensor}` | `{r.source}` | {r.check} | {list(r.shape)} | {r.dtype} | "
                         f"{r.differing} | {r.max_abs:.2e} | {'yes' if r.passed else 'NO'} |")
        return "\n".join(lines) + "\n"

    def to_junit(self) -> str:
        """JUnit XML (pytest's --junitxml shape): one testcase per row, failures carry the figures."""
        suites = []
        cases = [(f"tensors.{r.format}", r.tensor, None if r.passed else
                  f"{r.check}: {r.detail or 'failed'} (source {r.source}, shape {list(r.shape)}, dtype {r.dtype}, "
                  f"{r.differing} differing, max abs {r.max_abs:.3e})") for r in self.tensor_rows]
        suites.append(("verify.tensors", cases))
        cases = [(f"functional.{r.head}.{r.format}", r.output, None if r.passed else
                  f"max abs {r.max_abs:.3e} > tolerance {r.tolerance:.3e} (mean abs {r.mean_abs:.3e}, rel err "
                  f"{r.rel_err:.3e}, shape {list(r.shape)}, reference {r.reference})") for r in self.rows]
        suites.append(("verify.functional", cases))
        total = sum(len(c) for _, c in suites)
        failed = sum(1 for _, c in suites for case in c if case[2] is not None)
        out = ['<?xml version="1.0" encoding="utf-8"?>',
               f'<testsuites name="convert-rembert verify" tests="{total}" failures="{failed}" errors="0">']
        for suite, cases in suites:
            n_failed = sum(1 for case in cases if case[2] is not None)
            out.append(f'  <testsuite name="{suite}" tests="{len(cases)}" failures="{n_failed}" errors="0" '
                       'skipped="0">')
            for classname, name, failure in cases:
                head = f"    <testcase classname={quoteattr(classname)} name={quoteattr(name)}"
                if failure is None:
                    out.append(head + "/>")
                else:
                    out += [head + ">", f"      <failure message={quoteattr(failure)}/>", "    </testcase>"]
            out.append("  </testsuite>")
        out.append("</testsuites>")
        return "\n".join(out) + "\n"

    def write(self, directory: Path) -> list[Path]:
        paths = [directory / PARITY_JSON, directory / PARITY_MARKDOWN]
        paths[0].write_text(self.to_json(), encoding="utf-8")
        paths[1].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def severity(row: ParityRow) -> float:
    """How near a row is to failing: its max abs difference over its tolerance (above 1 fails)."""
    return row.max_abs / row.tolerance if row.tolerance > 0 else float("inf")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not serialisable: {type(value).__name__}")


COMPARE_BLOCK = 1 << 18  # elements per block: float64 temporaries of 2 MB, not 3 x 200 MB for the MLM logits


def compare(head: str, fmt: str, output: str, reference_name: str, ours: Any, reference: Any,
            atol: float, rtol: float) -> ParityRow:
    ours, reference = _to_numpy(ours), np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        return ParityRow(head, fmt, output, reference_name, tuple(ours.shape), float("inf"), float("inf"),
                         float("inf"), 0.0, False)
    # Block by block in float64, so the peak memory of a comparison is its two inputs; a NaN anywhere
    # propagates into the maximum (np.max, not Python's max) and fails the row.
    ours_flat, reference_flat = ours.reshape(-1), reference.reshape(-1)
    max_abs, scale, total = 0.0, 0.0, 0.0
    for start in range(0, reference_flat.size, COMPARE_BLOCK):
        want = reference_flat[start:start + COMPARE_BLOCK]
        diff = np.abs(ours_flat[start:start + COMPARE_BLOCK].astype(np.float64) - want)
        max_abs = float(np.max([max_abs, np.max(diff)]))
        scale = float(np.max([scale, np.max(np.abs(want))]))
        total += float(np.sum(diff))
    tolerance = atol + rtol * scale
    return ParityRow(head, fmt, output, reference_name, tuple(reference.shape), max_abs,
                     total / reference.size if reference.size else 0.0, max_abs / scale if scale else max_abs,
                     tolerance, bool(np.isfinite(max_abs) and max_abs <= tolerance))


def _to_numpy(value: Any) -> np.ndarray:
    """A model output as numpy in its own dtype (a view where the framework allows): widened block by block."""
    if hasattr(value, "detach"):
        value = value.detach()
        return value.numpy() if value.dtype.is_floating_point and value.itemsize >= 4 else value.double().numpy()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


# -- inputs ------------------------------------------------------------------------------------------------------


def present_formats(directory: Path) -> list[str]:
    return [fmt for fmt, names in FORMAT_FILES.items() if any((directory / n).is_file() for n in names)]


def make_inputs(config: RemBertConfig, tokenizer_dir: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Three rows: the multilingual sample, a sentence pair (token types 0 and 1), a short text padded to the
    others' length (attention mask 0). Through the folder's tokenizer when it has tokenizer.json, else seeded
    ids of the same shapes. Returns input_ids / token_type_ids / attention_mask arrays and a description."""
    limit = min(MAX_PROBE_TOKENS, config.max_position_embeddings)
    if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").is_file():
        from rembert_ref.tokenization import RemBertTokenizerFast

        tokenizer = RemBertTokenizerFast.from_pretrained(tokenizer_dir)
        encoded = [tokenizer(MULTILINGUAL_SAMPLE, truncation=True, max_length=limit),
                   tokenizer(*SENTENCE_PAIR, truncation=True, max_length=limit),
                   tokenizer(SHORT_TEXT, truncation=True, max_length=limit)]
        rows = [(e["input_ids"], e["token_type_ids"]) for e in encoded]
        description = (f"the folder's tokenizer on a multilingual sample, a sentence pair and a short padded text "
                       f"({', '.join(str(len(r[0])) for r in rows)} tokens)")
    else:
        rng = np.random.default_rng(seed)
        lengths = (limit // 2, limit // 2, max(2, limit // 8))
        ids = [rng.integers(0, config.vocab_size, size=n).tolist() for n in lengths]
        half = lengths[1] // 2
        types = [[0] * lengths[0], [0] * half + [1] * (lengths[1] - half), [0] * lengths[2]]
        rows = list(zip(ids, types, strict=True))
        description = f"seeded ids (seed {seed}, no tokenizer): rows of {', '.join(map(str, lengths))} tokens"
    T = max(len(r[0]) for r in rows)
    if all(len(r[0]) == T for r in rows):  # make sure one row is padded
        T += 1
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    input_ids = np.full((len(rows), T), pad, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), T), dtype=np.int64)
    attention_mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, (ids, types) in enumerate(rows):
        input_ids[i, :len(ids)], token_type_ids[i, :len(ids)], attention_mask[i, :len(ids)] = ids, types, 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "description": description}


def seeded_task_heads(config: RemBertConfig, specs: Mapping[str, HeadSpec], seed: int = 0
                      ) -> dict[str, tuple[np.ndarray, ...]]:
    """(weight [out, in], bias [out]) float32 for each task head, normal(0, initializer_range) weights and
    small nonzero biases (a zero bias would hide a dropped bias)."""
    rng = np.random.default_rng(seed)
    heads = {}
    for name, spec in specs.items():
        if spec.layer is not None:
            weight = rng.normal(0.0, config.initializer_range, size=(spec.out_features, config.hidden_size))
            bias = rng.normal(0.0, 0.1, size=spec.out_features)
            heads[name] = (weight.astype(np.float32), bias.astype(np.float32))
    return heads


# -- the check ---------------------------------------------------------------------------------------------


class CheckpointWeights:
    """The checkpoint as a `numpy_reference.WeightSource`: variables read on demand, float64, by original name."""

    def __init__(self, reader: CheckpointReader) -> None:
        self.reader = reader

    def names(self) -> list[str]:
        return list(self.reader.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.entries[name].shape

    def read(self, name: str) -> np.ndarray:
        from converters.writers import to_float32

        entry = self.reader.entries[name]
        return to_float32(self.reader.read(name), entry.dtype).astype(np.float64)

    def row_slices(self, name: str, max_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        from converters.writers import to_float32

        entry = self.reader.entries[name]
        start = 0
        # The reader's slices are in the stored dtype; ask for as many rows as fit `max_bytes` in float64.
        for chunk in self.reader.iter_rows(name, max_bytes=max(1, max_bytes * entry.itemsize // 8)):
            yield start, to_float32(chunk, entry.dtype).astype(np.float64)
            start += chunk.shape[0]


@dataclass
class _Setup:
    """What a verify of one folder measures against: read from the folder (config.json, tokenizer.json,
    conversion_report.json) and the checkpoint, before any weight of the folder is read."""

    config: Any
    original: dict
    activation: str
    dtype: str
    specs: dict[str, HeadSpec]
    inputs: dict[str, Any]
    head_weights: dict[str, tuple[np.ndarray, np.ndarray]]
    plan: Any  # the conversion plan the folder was written with (converters.mapping.ConversionPlan)
    config_rows: list[TensorRow]  # config.json against the checkpoint's own config

    def compute_reference(self, reader) -> dict[str, dict[str, Any]]:
        return _reference(CheckpointWeights(reader), self.original, self.inputs, self.activation,
                          self.plan.output_embedding, self.specs, self.head_weights)


def check_tolerance(tolerance: float | None) -> None:
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise UserError(f"--tolerance {tolerance} is not a positive number; pass one like 1e-4 (or leave it out "
                        "for the per-dtype default)")


def _check_folder(converted: Path, formats: tuple[str, ...] | None, functional: bool) -> list[str]:
    """The formats to verify; one line naming the problem for a folder that cannot be verified."""
    if not converted.is_dir():
        raise UserError(f"{converted} is not a directory; point at a folder written by convert-rembert")
    if not (converted / "config.json").is_file():
        raise UserError(f"{converted} has no config.json; point at a folder written by convert-rembert")
    found = present_formats(converted)
    if not found:
        raise UserError(f"{converted} holds no weights (pytorch_model.bin, model.safetensors or tf_model.h5); "
                        f"write them with `convert-rembert convert CKPT -o {converted}`")
    if formats:
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise UserError(f"unknown format(s) {', '.join(unknown)}; use some of: {', '.join(FORMATS)}")
        absent = [f for f in formats if f not in found]
        if absent:
            raise UserError(f"{converted} has no {', '.join(absent)} files; it holds {', '.join(found)}: check "
                            f"{'those' if len(found) > 1 else 'it'} with "
                            f"{' '.join('--format ' + f for f in found)}, or leave --format out")
        found = [f for f in FORMATS if f in formats]
    if "tf2" in found and functional:
        require_tensorflow(f"verifying {converted / 'tf_model.h5'}",
                           "check the other formats alone with --format pytorch --format safetensors")
    return found


def _prepare(reader, converted: Path, original_config: str | os.PathLike | None, heads: tuple[str, ...], seed: int,
             task_head_weights: Mapping[str, tuple[np.ndarray, np.ndarray]] | None) -> _Setup:
    from converters.convert import ConvertOptions, find_config, load_config
    from rembert_ref.config import ACTIVATION_FROM_HF, ACTIVATION_MEANING, RemBertConfig, is_original_config, read_json
    from validation import tensor_proof

    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        raise UserError(f"unknown head(s) {', '.join(unknown)}; use some of: {', '.join(HEADS)}")
    config = RemBertConfig.from_json_file(converted / "config.json")
    activation = ACTIVATION_FROM_HF.get(config.hidden_act)
    if activation is None:
        raise UserError(f"config.json has hidden_act {config.hidden_act!r}; only {' / '.join(ACTIVATION_MEANING)} "
                        "are verifiable")
    original_path = find_config(reader.prefix, original_config)
    original = read_json(original_path)
    dtype = config.torch_dtype if config.torch_dtype in TOLERANCES else "float32"
    mlm_head = not set(config.architectures or ()) & {"RemBertModel", *_finetuned_architectures()}
    finetuned = finetuned_head(config)
    if finetuned is not None:
        spec = HEAD_SPECS[finetuned]
        spec = dataclasses.replace(spec, out_features=config.num_labels if spec.layer == "classifier" else 2,
                                   from_checkpoint=True)
        if heads == HEADS:  # a fine-tuned file: its own head (and the base model where it keeps the pooler)
            heads = ("RemBertModel", finetuned) if spec.applies_to == POOLED else (finetuned,)
        specs = {name: (spec if name == finetuned else HEAD_SPECS[name]) for name in heads
                 if name not in ("RemBertForMaskedLM", "RemBertForCausalLM")}
    else:
        specs = {name: spec for name, spec in HEAD_SPECS.items() if name in heads
                 and (mlm_head or name not in ("RemBertForMaskedLM", "RemBertForCausalLM"))}
        if "bert/pooler/dense/kernel" not in reader.entries:  # no pooler (convert takes that): no pooled output
            pooled = [name for name, spec in specs.items() if spec.applies_to == POOLED]
            if pooled and heads != HEADS:
                raise UserError(f"{', '.join(pooled)} read(s) the pooled output but the checkpoint has no pooler; "
                                "leave them out of the heads")
            specs = {name: spec for name, spec in specs.items() if name not in pooled}
    inputs = make_inputs(config, converted, seed)
    report = tensor_proof.read_conversion_report(converted)
    plan = tensor_proof.plan_for(reader, converted, config, report)
    # As convert derived it, with the --activation the report records (a transformers config.json as --config
    # may name another gelu form, which convert takes only with --activation).
    recorded = report.get("activation", {}).get("hidden_act") if isinstance(report.get("activation"), dict) else None
    as_option = ACTIVATION_FROM_HF.get(recorded) if isinstance(recorded, str) else None
    if as_option is None and not is_original_config(original) and original.get("hidden_act") not in ACTIVATION_MEANING:
        raise UserError(f"{original_path} has hidden_act {original.get('hidden_act')!r}, which convert takes only "
                        f"with --activation, and {converted / 'conversion_report.json'} does not record which one it "
                        "was converted with (or is missing): convert it again (convert writes the report)")
    expected = load_config(reader.prefix, ConvertOptions(config=original_config, activation=as_option))
    config_rows = tensor_proof.config_rows(config, expected, plan, report, original_path.name)
    head_weights = dict(seeded_task_heads(config, specs, seed), **(task_head_weights or {}))
    if finetuned is not None and finetuned in specs:
        from rembert_ref.numpy_reference import original_head_weights

        _, weight, bias = original_head_weights(CheckpointWeights(reader))  # the checkpoint's own head
        head_weights[finetuned] = (weight, bias)
    return _Setup(config, original, activation, dtype, specs, inputs, head_weights, plan, config_rows)


def verify_to_files(
    ckpt: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    original_config: str | os.PathLike | None = None,
    formats: tuple[str, ...] | None = None,
    tolerance: float | None = None,
    report_dir: str | os.PathLike | None = None,
    junit_file: str | os.PathLike | None = None,
    force: bool = False,
    progress: StepProgress | None = None,
) -> tuple[ParityReport, list[Path]]:
    """`verify`: `verify_conversion`, then the report as parity_report.{json,md} in `report_dir` and as JUnit XML
    in `junit_file`. Both places are checked before anything is measured (never inside an input; an existing
    one only with `force`) and written atomically. Returns the report and the files written."""
    from converters.output import (check_output, check_output_file, checkpoint_inputs, inputs_of,
                                   require_existing_dir, staged_output, write_file_atomically)
    from converters.tf1_checkpoint import resolve_checkpoint

    require_existing_dir(converted, "converted folder")
    inputs = checkpoint_inputs(resolve_checkpoint(ckpt), ckpt) + inputs_of(
        [(original_config, "config file"), (converted, "folder being verified")])
    if report_dir is not None:  # before measuring: a refused --report costs nothing
        check_output(report_dir, inputs, force=force, option="--report")
    if junit_file is not None:
        check_output_file(junit_file, inputs, force=force, option="--junit")
    report = verify_conversion(ckpt, converted, original_config=original_config, tolerance=tolerance,
                               formats=formats, progress=progress)
    written: list[Path] = []
    if report_dir is not None:
        with staged_output(report_dir, inputs, force=force, option="--report") as staging:
            names = [path.name for path in report.write(staging)]
        written += [Path(report_dir) / name for name in names]
    if junit_file is not None:
        write_file_atomically(Path(junit_file), report.to_junit())
        written.append(Path(junit_file))
    return report, written


def verify_conversion(
    ckpt: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    original_config: str | os.PathLike | None = None,
    heads: tuple[str, ...] = HEADS,
    formats: tuple[str, ...] | None = None,
    seed: int = 0,
    tolerance: float | None = None,
    tensors: bool = True,
    functional: bool = True,
    task_head_weights: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    progress: StepProgress | None = None,
    release_cache: bool = False,
) -> ParityReport:
    """Prove `converted` against the checkpoint: every tensor of every format (tensor proof) and every head in
    every format against the float64 original graph (functional proof).

    For a folder just written (bundle): `release_cache` drops each format's files from the page cache once
    proven (tensor_proof.iter_formats)."""
    from converters.tf1_checkpoint import CheckpointReader, resolve_checkpoint
    from validation import tensor_proof

    check_tolerance(tolerance)
    converted = Path(converted)
    found = _check_folder(converted, formats, functional)
    with CheckpointReader(resolve_checkpoint(ckpt)) as reader:
        setup = _prepare(reader, converted, original_config, heads, seed, task_head_weights)
        with imports_ahead(found if functional else []):
            return _verify(setup, reader, converted, found, seed, tolerance, tensors, functional, progress,
                           partial(tensor_proof.iter_formats, release=release_cache))


def _verify(setup: _Setup, reader, converted: Path, found: list[str], seed: int, tolerance: float | None,
            tensors: bool, functional: bool, progress: StepProgress | None,
            iter_formats: Callable[[Path, list[str]], Iterator[tuple[str, Any]]]) -> ParityReport:
    from validation import tensor_proof

    config, specs, inputs, head_weights = setup.config, setup.specs, setup.inputs, setup.head_weights
    atol, rtol = (tolerance, tolerance) if tolerance is not None else TOLERANCES[setup.dtype]
    report = ParityReport(setup.dtype, config.hidden_act, {"atol": atol, "rtol": rtol}, tolerance is not None,
                          {"seed": seed, "batch": int(inputs["input_ids"].shape[0]),
                           "seq": int(inputs["input_ids"].shape[1]), "description": inputs["description"],
                           "input_ids": inputs["input_ids"].tolist(),
                           "token_type_ids": inputs["token_type_ids"].tolist(),
                           "attention_mask": inputs["attention_mask"].tolist()}, found)
    steps = progress or StepProgress()
    clock = time.perf_counter()

    plan, root = setup.plan, tensor_proof.keras_root(config)

    def timed(key: str, title: str, work: Callable[[Update], Any]) -> Any:
        """`work` as a progress step; its seconds go into the report under `key`."""
        started = time.perf_counter()
        with steps.step(title) as update:
            result = work(update)
        report.seconds[key] = time.perf_counter() - started
        return result

    digests: dict[str, dict[str, str]] = {}
    # The float64 reference first, alone: numpy's BLAS runs it on both cores, and its threads spin between
    # products, so beside another proof each slowed the other (at full size in bundle: the two side by side
    # 7.2-7.8 s, the reference alone 2.8-3 s). Then two plain threads per format, so both cores work: the tensor
    # proof in a helper thread beside the functional proof here (the same mapped files, so still one format in
    # memory). The heavy parts (reads, numpy, torch, TensorFlow) release the GIL; results are collected in
    # order, so the report is the same as one thread's.
    truth = None
    if functional and specs:
        truth = timed("reference", "float64 reference",
                      lambda update: setup.compute_reference(reader))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-tensors") as helper:
        for fmt, handle in iter_formats(converted, found):
            tensor_job = None
            if tensors:
                tensor_job = helper.submit(timed, f"tensors {fmt}", f"{fmt} tensors",
                                           partial(tensor_proof.prove_format, reader, plan, handle, fmt, setup.dtype,
                                                   root))
            try:
                if functional and specs:
                    checker = _Checker(report, config, inputs, truth, atol, rtol, specs, head_weights)
                    timed(f"functional {fmt}", f"{fmt} {len(specs)} heads",
                          partial(checker.run_format, fmt, handle, converted))
            finally:  # the format is closed after this: its tensor proof must be done with it first
                if tensor_job is not None:
                    rows, digests[fmt] = tensor_job.result()
                    report.tensor_rows += rows
    if tensors:
        report.tensor_rows += tensor_proof.agreement_rows(plan, digests)
        report.tensor_rows += setup.config_rows + tensor_proof.unproven_files(converted)
    report.seconds["total"] = time.perf_counter() - clock
    return report


# How long to wait for the imports' thread at the end: on an error or interrupt only long enough for an import
# under way to finish (a process exiting mid-import can crash); else for the longest import (TensorFlow, cold).
IMPORT_GRACE_S, IMPORT_WAIT_S = 5.0, 120.0


@contextlib.contextmanager
def imports_ahead(formats: list[str]) -> Iterator[None]:
    """`import_ahead` in a thread of its own while the block runs. Waited for at the end, but never for good:
    an interrupt that lands inside an import in the main thread can leave that module's import lock held
    (CPython discards the interrupt there), and the thread, importing the same module, would wait on it for ever.
    A daemon thread, so that a process abandoning it can still exit."""
    thread = threading.Thread(target=import_ahead, args=(formats,), name="import-ahead", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        thread.join(IMPORT_GRACE_S)
        raise
    thread.join(IMPORT_WAIT_S)


def import_ahead(formats: list[str]) -> None:
    """The imports verifying these formats needs that cost seconds of one core (torch, TensorFlow), for a thread
    of their own: verify starts them so that they overlap the float64 reference and the first tensor proof, and
    bundle while convert writes. An import of the same module elsewhere waits for this one to finish."""
    try:
        if "pytorch" in formats or "safetensors" in formats:
            import torch  # noqa: F401
        if "tf2" in formats:
            importlib.import_module("rembert_ref.tf_model")
    except Exception:  # noqa: BLE001 - the same import in the format's own step raises it, with its message
        pass


def _finetuned_architectures() -> set[str]:
    from converters.mapping import HEAD_KINDS

    return {kind.architecture for kind in HEAD_KINDS.values()}


def finetuned_head(config: RemBertConfig) -> str | None:
    """The task-head class a fine-tuned conversion wrote (config.json's architectures), or None."""
    return next((name for name in config.architectures or () if name in _finetuned_architectures()), None)


def _reference(weights, original: dict, inputs: dict, activation: str, output_embedding: str | None,
               specs: Mapping[str, HeadSpec], head_weights) -> dict[str, dict[str, Any]]:
    """Float64 outputs of the original graph per encoder: the bidirectional rows and, for the causal LM, the
    same rows with a causal mask, in ONE pass over the weights (the mask is per row)."""
    from rembert_ref.numpy_reference import causal_mask, head_logits, original_forward

    padding = inputs["attention_mask"]
    B, T = padding.shape
    causal = any(spec.encoder == CAUSAL for spec in specs.values())
    parts = {BIDIRECTIONAL: slice(0, B)}
    ids, types = [inputs["input_ids"]], [inputs["token_type_ids"]]
    masks = [np.broadcast_to(padding[:, None, :], (B, T, T))]
    if causal:  # the causal LM runs on one row (CAUSAL_ROWS); the reference adds it with a causal mask
        parts[CAUSAL] = slice(B, B + len(range(B)[CAUSAL_ROWS]))
        ids.append(inputs["input_ids"][CAUSAL_ROWS])
        types.append(inputs["token_type_ids"][CAUSAL_ROWS])
        masks.append(causal_mask(padding[CAUSAL_ROWS]))
    out = original_forward(weights, original, np.concatenate(ids), np.concatenate(types), np.concatenate(masks),
                           activation=activation, output_embedding_name=output_embedding)

    def rows(value: Any, part: slice) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            return [v[part] for v in value]
        return value[part]

    truth = {part: {k: rows(v, where) for k, v in out.items()} for part, where in parts.items()}
    for name, spec in specs.items():
        if spec.layer is None:
            continue
        weight, bias = head_weights[name]
        logits = head_logits(truth[spec.encoder], weight, bias, spec.applies_to)
        if name == "RemBertForMultipleChoice":
            truth[name] = {"logits": logits.reshape(1, B)}  # the three rows as three choices of one question
        elif spec.outputs == ("start_logits", "end_logits"):
            truth[name] = {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        else:
            truth[name] = {"logits": logits}
    return truth


class _SharedEncoder:
    """Runs the wrapped encoder once per distinct call and returns that result to every head that makes the
    same call (same inputs, same flags), so seven heads cost one encoder pass. A call is identified by the
    values of its arguments after binding them to the encoder's signature, never by object identity."""

    def __init__(self, encoder: Any):
        import inspect

        self.encoder = encoder
        self.signature = inspect.signature(encoder.forward if hasattr(encoder, "forward") else encoder.__call__)
        self.results: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        if values.get("use_cache") is None:  # None and False mean the same for an encoder without a cache
            values["use_cache"] = False
        key = repr(sorted((k, _fingerprint(v)) for k, v in values.items()))
        if key not in self.results:
            self.results[key] = self.encoder(*args, **kwargs)
        return self.results[key]


def _torch_shared_encoder(encoder: Any) -> Any:
    """`_SharedEncoder` as a torch module, so a head can hold it where its `rembert` module was."""
    return _torch_shared_encoder_class()(encoder)


@cache
def _torch_shared_encoder_class() -> type:
    # One class for the process, not one per call: a class made in a function holds that call's variables in a
    # reference cycle, which kept the encoder and its mapped file alive until the garbage collector ran.
    import torch

    class SharedEncoder(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.shared = _SharedEncoder(encoder)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.shared(*args, **kwargs)

    return SharedEncoder


def _fingerprint(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    array = value.detach().numpy() if hasattr(value, "detach") else np.asarray(value)
    return (array.dtype.str, array.shape, array.tobytes())


class _Checker:
    def __init__(self, report: ParityReport, config, inputs, truth, atol, rtol, specs, head_weights):
        self.report, self.config, self.truth = report, config, truth
        self.inputs = {k: v for k, v in inputs.items() if k != "description"}
        self.atol, self.rtol, self.specs, self.head_weights = atol, rtol, specs, head_weights

    def add(self, head: str, fmt: str, output: str, ours: Any, reference: Any) -> None:
        self.report.rows.append(compare(head, fmt, output, ORIGINAL, ours, reference, self.atol, self.rtol))

    def fail(self, head: str, fmt: str, output: str, reason: str) -> None:
        """A head that cannot even be built from the file (a missing or misnamed weight) fails its row."""
        self.report.rows.append(ParityRow(head, fmt, f"{output}: {reason}", ORIGINAL, (), float("inf"),
                                          float("inf"), float("inf"), 0.0, False))

    def run_format(self, fmt: str, handle, converted: Path, progress: Update) -> None:
        models = _TorchHeads(self, handle, fmt) if fmt != "tf2" else _TFHeads(self, converted, handle)
        try:
            for done, (name, spec) in enumerate(self.specs.items()):
                progress(done / len(self.specs))
                model = models.build(name, spec)
                if model is None:
                    continue
                outputs = models.run(model, self._inputs_for(name))
                self._compare(name, spec, fmt, outputs)
        finally:
            models.close()

    def _inputs_for(self, head: str) -> dict[str, np.ndarray]:
        if self.specs[head].encoder == CAUSAL:
            return {k: v[CAUSAL_ROWS] for k, v in self.inputs.items()}
        if head == "RemBertForMultipleChoice":  # (1 question, 3 choices, T): the same rows as the others
            return {k: v[None] for k, v in self.inputs.items()}
        return dict(self.inputs)

    def _compare(self, name: str, spec: HeadSpec, fmt: str, outputs: dict[str, Any]) -> None:
        truth = self.truth[spec.encoder]
        for i, state in enumerate(outputs.get("hidden_states") or () if _wants_hidden_states(name, spec) else ()):
            self.add(name, fmt, f"hidden_states.{i}", state, truth["hidden_states"][i])
        if name == "RemBertModel":
            for i, attention in enumerate(outputs["attentions"]):
                self.add(name, fmt, f"attentions.{i}", attention, truth["attentions"][i])
            self.add(name, fmt, "last_hidden_state", outputs["last_hidden_state"], truth["last_hidden_state"])
            if truth["pooler_output"] is not None:
                self.add(name, fmt, "pooler_output", outputs["pooler_output"], truth["pooler_output"])
        elif spec.layer is None:  # the masked / causal LM: logits over the vocabulary
            self.add(name, fmt, "logits", outputs["logits"], truth["mlm_logits"])
        else:
            for output in spec.outputs:
                self.add(name, fmt, output, outputs[output], self.truth[name][output])


def _head_config(config, spec: HeadSpec):
    head_config = dataclasses.replace(config)
    if spec.encoder == CAUSAL:
        head_config.is_decoder = True
    if spec.layer == "classifier" and spec.out_features > 1:
        head_config.num_labels = spec.out_features
    return head_config


def _wants_hidden_states(name: str, spec: HeadSpec | None = None) -> bool:
    # Hidden states are compared for the base model (bidirectional) and the causal LM, where they differ; for the
    # masked LM, a bundle's main head, which `--heads` may ask for alone (beside RemBertModel its rows repeat the
    # base model's: the encoder result is shared); and for a fine-tuned head, the only head of its folder. The
    # other heads run on the base model's encoder result, so their rows would only repeat its rows.
    return name in ("RemBertModel", "RemBertForCausalLM", "RemBertForMaskedLM") or bool(spec and spec.from_checkpoint)


@contextlib.contextmanager
def _on_meta(torch) -> Iterator[None]:
    """Modules built in this context are on the meta device and skip their random initialisation: a meta
    tensor has no values to initialise, but torch's meta `normal_` imports its compiler stack on first use
    (0.9 s of one core) and runs a Python decomposition on every call."""
    with torch.device("meta"), _skip_initialisers_class()():
        yield


@cache
def _skip_initialisers_class() -> type:
    import torch
    from torch.overrides import TorchFunctionMode

    initialisers = (torch.nn.init.normal_, torch.Tensor.normal_)

    class SkipInitialisers(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in initialisers:
                tensor = args[0] if args else kwargs["tensor"]
                if tensor.is_meta:
                    return tensor
            return func(*args, **kwargs)

    return SkipInitialisers


def _load(model, tensors: dict[str, Any]) -> str | None:
    """Assign the file's tensors to a model built on the meta device, with torch's strict name matching; or
    say what the file lacks or has in the wrong shape (then nothing is loaded)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        return f"the file lacks {', '.join(missing[:5])}"
    wrong = [k for k in own if tuple(tensors[k].shape) != tuple(own[k].shape)]
    if wrong:
        return f"wrong shape of {', '.join(wrong[:5])}"
    model.load_state_dict(tensors, strict=True, assign=True)
    return None


class _TorchHeads:
    """Every head class of the PyTorch reference, built on the format's memory-mapped tensors (no copy for
    float32), loaded by Hugging Face names with torch's own strict name matching."""

    def __init__(self, checker: _Checker, handle, fmt: str):
        import torch

        self.torch, self.checker, self.fmt = torch, checker, fmt
        state = dict(handle.state) if fmt == "pytorch" else {name: handle.tensor(name) for name in handle.where}
        self.state = {k: (v if v.dtype == torch.float32 else v.float()) for k, v in state.items()}
        self.encoders: dict[str, Any] = {}  # by kind: the shared encoder, or why the file cannot make it

    def build(self, name: str, spec: HeadSpec):
        from rembert_ref import torch_model

        torch = self.torch
        config = _head_config(self.checker.config, spec)
        encoder = self._encoder(spec.encoder, config)
        if isinstance(encoder, str):  # the file cannot make the encoder: each head's load row says why
            self.checker.fail(name, self.fmt, "load", encoder)
            return None
        if name == "RemBertModel":
            return encoder  # the base model is the encoder: the same class on the same tensors
        # The head's own encoder is replaced by the shared one below, so it is built with one layer (the fewest a
        # config allows): building 32 layers on the meta device for each of seven heads cost 0.9 s per format.
        with _on_meta(torch):  # no allocation, no random init: every tensor comes from the file
            model = torch_model.MODEL_CLASSES[name](dataclasses.replace(config, num_hidden_layers=1))
        tensors = self._tensors_for(model)
        if spec.layer is not None and not spec.from_checkpoint:  # a new head: the seeded weights
            weight, bias = self.checker.head_weights[name]
            tensors[f"{spec.layer}.weight"] = torch.from_numpy(weight)
            tensors[f"{spec.layer}.bias"] = torch.from_numpy(bias)
        problem = _load(model, tensors)
        if problem is not None:
            self.checker.fail(name, self.fmt, "load", problem)
            return None
        model.rembert = encoder  # the head's own forward runs; the encoder result is shared across heads
        return model.eval()

    def _encoder(self, kind: str, config) -> Any:
        """The shared encoder of this kind (bidirectional or causal) on the file's tensors, or why the file
        cannot make it."""
        if kind not in self.encoders:
            from rembert_ref import torch_model

            pooled = "rembert.pooler.dense.weight" in {torch_model.canonical_name(k) for k in self.state}
            with _on_meta(self.torch):  # token-classification and QA files have no pooler
                base = torch_model.RemBertModel(config, add_pooling_layer=pooled)
            problem = _load(base, self._tensors_for(base))
            self.encoders[kind] = problem if problem is not None else _torch_shared_encoder(base.eval())
        return self.encoders[kind]

    def _tensors_for(self, model) -> dict[str, Any]:
        """The file's tensors by this model's parameter names, matched as Hugging Face does: a file in the
        bare layout (`embeddings.*`) or the prefixed one (`rembert.embeddings.*`) fits any class."""
        from rembert_ref.torch_model import canonical_name

        by_canonical = {canonical_name(k): k for k in self.state}
        return {key: self.state[by_canonical[canonical_name(key)]] for key in model.state_dict()
                if canonical_name(key) in by_canonical}

    def run(self, model, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        torch = self.torch
        flags = {"output_hidden_states": True, "output_attentions": True}
        args = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        with torch.no_grad():
            result = model(**args, **flags)
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}

    def close(self) -> None:
        self.state.clear()
        self.encoders.clear()


class _TFHeads:
    """Every head class of the TF2 reference on one set of variables read once from tf_model.h5."""

    def __init__(self, checker: _Checker, converted: Path, handle):
        from rembert_ref import tf_model  # first: it imports TensorFlow with its start-up notices hidden

        self.tf, self.tf_model, self.checker, self.handle = tf_model.tf, tf_model, checker, handle
        self.context = tf_model.open_h5_weights(converted / "tf_model.h5")
        self.values = self.context.__enter__()
        self.variables: dict[str, Any] = {}
        self.encoders: dict[str, tuple[_SharedEncoder, list[str]]] = {}  # by kind

    def build(self, name: str, spec: HeadSpec):
        tf_model = self.tf_model
        config = _head_config(self.checker.config, spec)
        cls = tf_model.MODEL_CLASSES[f"TF{name}"]
        encoder, encoder_missing = self._encoder(spec.encoder, config)
        # The head's own encoder is replaced by the shared one below, so it is built with one layer, as in
        # torch: building 32 layers for each of seven heads cost about 0.5 s per verify. The names the file lacks
        # are the head's own and those of the shared encoder it runs on (less the pooler, if the class has none).
        one_layer = dataclasses.replace(config, num_hidden_layers=1)
        shared = _shared_weights(one_layer, cls.keras_name, self.values, self.variables, self.handle)
        model = cls(one_layer, weights=shared)
        new_layer = f"{spec.layer}/" if spec.layer is not None and not spec.from_checkpoint else None
        missing = {n for n in shared.created_fresh if new_layer is None or not n.startswith(new_layer)}
        missing |= {n for n in encoder_missing if cls.add_pooling_layer or not n.startswith("rembert/pooler/")}
        if self.checker.truth[spec.encoder]["pooler_output"] is None:  # nor has the checkpoint: nothing to compare
            missing = {n for n in missing if not n.startswith("rembert/pooler/")}
        if missing:
            self.checker.fail(name, "tf2", "load", f"the file lacks {', '.join(sorted(missing)[:5])}")
            return None
        if new_layer is not None:
            weight, bias = self.checker.head_weights[name]
            ours = model.weights_by_name()
            ours[f"{spec.layer}/kernel:0"].assign(weight.T)  # Keras kernels are [in, out]
            ours[f"{spec.layer}/bias:0"].assign(bias)
        model.rembert = encoder
        return model

    def _encoder(self, kind: str, config) -> tuple[_SharedEncoder, list[str]]:
        """The shared encoder of this kind (bidirectional or causal) and the names the file lacks for it."""
        if kind not in self.encoders:
            shared = _shared_weights(config, "tf_rem_bert_model", self.values, self.variables, self.handle)
            encoder = _SharedEncoder(self.tf_model.TFRemBertModel(config, weights=shared).rembert)
            self.encoders[kind] = (encoder, shared.created_fresh)
        return self.encoders[kind]

    def run(self, model, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        tf = self.tf
        result = model(**{k: tf.constant(v) for k, v in inputs.items()}, output_hidden_states=True,
                       output_attentions=True)
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}

    def close(self) -> None:
        self.encoders.clear()
        self.variables.clear()
        self.context.__exit__(None, None, None)


def _tf_tensor_from_h5(tf, dataset, handle) -> Any:
    """An h5 dataset as a float32 tf.Tensor holding the only copy of its values: the aligned array the tensor
    proof read (`handle.array`), handed over through DLPack without a copy. (`tf.Variable(array)` or
    `tf.constant(array)` copy it, transiently twice: 3x the 1.67 GB output embedding.)"""
    from validation.tensor_proof import aligned_empty

    name = dataset.name.lstrip("/")
    if name not in handle.datasets or dataset.file.filename != handle.file.filename:
        array = handle.read(dataset)  # through an external link: the values Keras would load (the proof fails it)
    else:
        array = handle.array(name)
    if array.dtype != np.float32:  # float16 files: a float32 copy, and the file's values are dropped
        widened = aligned_empty(array.shape, np.float32)
        widened[...] = array
        handle.loaded.pop(name, None)
        array = widened
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _shared_weights(config, root: str, values: Mapping[str, Any], variables: dict[str, Any], handle) -> Any:
    """A `tf_model.Weights` whose weights come from the h5 datasets (read once, shared by every head, as
    constant tensors: nothing trains them here); names the file lacks are created fresh (seeded) and listed in
    its `created_fresh`."""
    return _shared_weights_class()(config, root, values, variables, handle)


@cache
def _shared_weights_class() -> type:
    # One class for the process, made on first use because its base imports TensorFlow (see
    # _torch_shared_encoder_class for why not one per call).
    from rembert_ref.tf_model import Weights

    class SharedWeights(Weights):
        def __init__(self, config, root: str, values: Mapping[str, Any], variables: dict[str, Any], handle):
            super().__init__(config, root)
            self.values, self.variables, self.handle = values, variables, handle
            self.created_fresh: list[str] = []

        def normal(self, scope: str, shape: list[int]) -> Any:
            found = self._shared(scope, shape)
            return found if found is not None else super().normal(scope, shape)

        def constant(self, scope: str, shape: list[int], value: float) -> Any:
            found = self._shared(scope, shape)
            return found if found is not None else super().constant(scope, shape, value)

        def _shared(self, scope: str, shape: list[int]) -> Any:
            import tensorflow as tf

            key = f"{scope}:0"
            if key in self.variables:
                return self.variables[key]
            if key not in self.values or tuple(self.values[key].shape) != tuple(shape):
                self.created_fresh.append(key)
                return None
            self.variables[key] = _tf_tensor_from_h5(tf, self.values[key], self.handle)
            return self.variables[key]

    return SharedWeights


