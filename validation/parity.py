"""The parity report: every head x format x output of a converted folder, measured against a reference.

References, in order of trust:
- `original-fp64`: the numpy float64 forward pass of the original TF1 graph on the ORIGINAL variables read
  from the checkpoint (`rembert_ref/numpy_reference.py`, which does not use the mapping table). The base model
  (every hidden state, every attention map, pooler) and the masked-LM logits of every format are checked
  against it.
- `pytorch:<file>`: task heads (and the causal LM, whose causal mask the original graph does not have) have no
  original counterpart: their new head weights are initialised once, seeded, in the PyTorch model loaded from
  the first PyTorch file, and every other format gets the same head weights; all their outputs (hidden states,
  attentions, logits, loss) are compared with that PyTorch model.

Each row: head, format, output, shape, max abs diff, mean abs diff, relative error (max abs / max |reference|),
tolerance, pass. A row passes when max_abs <= atol + rtol * max|reference| with the tolerance of the weights'
dtype (fp32 first; cast dtypes have their own, looser ones). An override is recorded in the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rembert_ref.errors import UserError, require_tensorflow

# (atol, rtol) per weight dtype. fp32 against float64: rounding of ~1e-7 per op, grown through the layers;
# fp16 / bf16 weights carry 2^-11 / 2^-8 relative rounding into every product.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-5),
    "float16": (5e-3, 5e-3),
    "bfloat16": (4e-2, 4e-2),
}
HEADS = (
    "RemBertModel",
    "RemBertForMaskedLM",
    "RemBertForCausalLM",
    "RemBertForSequenceClassification",
    "RemBertForMultipleChoice",
    "RemBertForTokenClassification",
    "RemBertForQuestionAnswering",
)
FORMAT_FILES = {
    "pytorch": ("pytorch_model.bin",),
    "safetensors": ("model.safetensors", "model.safetensors.index.json"),
    "tf2": ("tf_model.h5",),
}
ORIGINAL = "original-fp64"
PARITY_JSON, PARITY_MARKDOWN = "parity_report.json", "parity_report.md"


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

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.passed for row in self.rows)

    @property
    def failures(self) -> list[ParityRow]:
        return [row for row in self.rows if not row.passed]

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["passed"] = self.passed
        values["summary"] = {"rows": len(self.rows), "failed": len(self.failures),
                             "worst_rel_err": max((r.rel_err for r in self.rows), default=0.0)}
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        lines = [
            f"# Parity report: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"Weights dtype {self.dtype}, activation {self.activation}, tolerance atol {self.tolerance['atol']:g} "
            f"+ rtol {self.tolerance['rtol']:g} x max|reference|"
            + (" (overridden by the user)" if self.tolerance_override else "") + ".",
            f"Inputs: {self.inputs['batch']} sequences of {self.inputs['seq']} tokens, seed {self.inputs['seed']}, "
            "with padding. Formats: " + ", ".join(self.formats) + ".",
            "",
            "| head | format | output | reference | shape | max abs | mean abs | rel err | tolerance | pass |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            lines.append(f"| {r.head} | {r.format} | {r.output} | {r.reference} | {list(r.shape)} | {r.max_abs:.2e} "
                         f"| {r.mean_abs:.2e} | {r.rel_err:.2e} | {r.tolerance:.2e} | {'yes' if r.passed else 'NO'} |")
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> list[Path]:
        paths = [directory / PARITY_JSON, directory / PARITY_MARKDOWN]
        paths[0].write_text(self.to_json(), encoding="utf-8")
        paths[1].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def compare(head: str, fmt: str, output: str, reference_name: str, ours: Any, reference: Any,
            atol: float, rtol: float) -> ParityRow:
    ours, reference = _to_numpy(ours), _to_numpy(reference)
    if ours.shape != reference.shape:
        return ParityRow(head, fmt, output, reference_name, tuple(ours.shape), float("inf"), float("inf"),
                         float("inf"), 0.0, False)
    diff = np.abs(ours - reference)
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    max_abs = float(np.max(diff)) if diff.size else 0.0
    tolerance = atol + rtol * scale
    return ParityRow(head, fmt, output, reference_name, tuple(reference.shape), max_abs,
                     float(np.mean(diff)) if diff.size else 0.0, max_abs / scale if scale else max_abs, tolerance,
                     bool(np.isfinite(max_abs) and max_abs <= tolerance))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().numpy()
    elif hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value, dtype=np.float64)


# -- the check ---------------------------------------------------------------------------------------------


def present_formats(directory: Path) -> list[str]:
    return [fmt for fmt, names in FORMAT_FILES.items() if any((directory / n).is_file() for n in names)]


def make_inputs(config, seed: int, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Random ids (special ids included by chance), both token types, a padded sequence."""
    rng = np.random.default_rng(seed)
    seq = min(seq, config.max_position_embeddings)
    attention_mask = np.ones((batch, seq), dtype=np.int64)
    if batch > 1:
        attention_mask[-1, seq // 2:] = 0
    return {
        "input_ids": rng.integers(0, config.vocab_size, size=(batch, seq)),
        "token_type_ids": rng.integers(0, config.type_vocab_size, size=(batch, seq)),
        "attention_mask": attention_mask,
    }


def verify_conversion(
    ckpt: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    original_config: str | os.PathLike | None = None,
    heads: tuple[str, ...] = HEADS,
    seed: int = 0,
    batch: int = 2,
    seq: int = 8,
    tolerance: float | None = None,
) -> ParityReport:
    """Measure every output of every head in every format found in `converted` against its reference."""
    from converters.convert import find_config
    from converters.tf1_checkpoint import resolve_checkpoint
    from rembert_ref.config import RemBertConfig, _read_json

    converted = Path(converted)
    if not (converted / "config.json").is_file():
        raise UserError(f"{converted} has no config.json; point at a folder written by convert-rembert")
    formats = present_formats(converted)
    if not formats:
        raise UserError(f"{converted} holds no weights (pytorch_model.bin, model.safetensors or tf_model.h5)")
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        raise UserError(f"unknown head(s) {', '.join(unknown)}; use some of: {', '.join(HEADS)}")
    if "tf2" in formats:
        require_tensorflow(f"verifying {converted / 'tf_model.h5'}", "verify a folder without it")
    config = RemBertConfig.from_json_file(converted / "config.json")
    activation = {"gelu_new": "tanh", "gelu": "exact"}.get(config.hidden_act)
    if activation is None:
        raise UserError(f"config.json has hidden_act {config.hidden_act!r}; only gelu_new / gelu are verifiable")
    prefix = resolve_checkpoint(ckpt)
    original = _read_json(find_config(prefix, original_config))
    dtype = config.torch_dtype if config.torch_dtype in TOLERANCES else "float32"
    atol, rtol = (tolerance, tolerance) if tolerance is not None else TOLERANCES[dtype]
    inputs = make_inputs(config, seed, batch, seq)
    report = ParityReport(dtype, config.hidden_act, {"atol": atol, "rtol": rtol}, tolerance is not None,
                          {"seed": seed, "batch": int(inputs["input_ids"].shape[0]),
                           "seq": int(inputs["input_ids"].shape[1])}, formats)

    variables = _original_variables(prefix)
    from rembert_ref.numpy_reference import original_forward

    truth = original_forward(variables, original, **inputs, activation=activation)
    finetuned = finetuned_head(config)
    if finetuned is not None:
        truth["task_head"] = original_task_head_outputs(variables, finetuned, truth)
        if heads == HEADS:  # a fine-tuned file: its own head against the original, not a seeded one
            # Token-classification and QA files have no pooler, as transformers builds those classes;
            # their head model's hidden states are compared instead.
            heads = ("RemBertModel", finetuned) if finetuned == "RemBertForSequenceClassification" else (finetuned,)
    del variables
    with tempfile.TemporaryDirectory(prefix="rembert-parity-") as scratch:
        views = {fmt: _format_view(converted, fmt, Path(scratch)) for fmt in formats}
        checker = _Checker(report, config, inputs, truth, atol, rtol, views, Path(scratch))
        for head in heads:
            checker.check(head)
    return report


def finetuned_head(config) -> str | None:
    """The task-head class a fine-tuned conversion wrote (config.json's architectures), or None."""
    from converters.mapping import HEAD_KINDS

    classes = {kind.architecture for kind in HEAD_KINDS.values()}
    return next((name for name in config.architectures or () if name in classes), None)


def original_task_head_outputs(variables, architecture: str, truth: dict[str, Any]) -> dict[str, np.ndarray]:
    """The fine-tuned head's outputs from the original graph's encoder outputs (numpy, float64)."""
    from converters.mapping import HEAD_KINDS
    from rembert_ref.numpy_reference import original_head_logits

    kind = next(k for k, v in HEAD_KINDS.items() if v.architecture == architecture)
    return original_head_logits(variables, kind, truth)


def _original_variables(prefix: Path) -> dict[str, np.ndarray]:
    """Every non-optimizer variable by its original name (the ignore rules only skip optimizer state)."""
    from converters.mapping import ignore_reason
    from converters.tf1_checkpoint import CheckpointReader
    from converters.writers import to_float32

    values = {}
    with CheckpointReader(prefix) as reader:
        for name, entry in reader.entries.items():
            reason = ignore_reason(name)
            if entry.dtype in ("float32", "float16", "bfloat16") and (reason is None or "nsp" in reason):
                values[name] = to_float32(reader.read(name), entry.dtype)
    return values


def _format_view(converted: Path, fmt: str, scratch: Path) -> Path:
    """A folder with config.json and only this format's files, so loaders cannot pick another one."""
    view = scratch / f"view-{fmt}"
    view.mkdir()
    os.symlink((converted / "config.json").resolve(), view / "config.json")
    for path in converted.iterdir():
        if path.name in FORMAT_FILES[fmt] or (fmt == "safetensors" and path.name.startswith("model-")
                                             and path.suffix == ".safetensors"):
            os.symlink(path.resolve(), view / path.name)
    return view


class _Checker:
    def __init__(self, report: ParityReport, config, inputs, truth, atol, rtol, views, scratch: Path):
        self.report, self.config, self.inputs, self.truth = report, config, inputs, truth
        self.atol, self.rtol, self.views, self.scratch = atol, rtol, views, scratch

    def add(self, head: str, fmt: str, output: str, reference_name: str, ours: Any, reference: Any) -> None:
        self.report.rows.append(compare(head, fmt, output, reference_name, ours, reference, self.atol, self.rtol))

    def check(self, head: str) -> None:
        if head == finetuned_head(self.config):
            for fmt in self.views:
                self._against_original_head(head, fmt)
        elif head in ("RemBertModel", "RemBertForMaskedLM"):
            for fmt in self.views:
                self._against_original(head, fmt)
        else:
            self._against_pytorch(head)

    # Base and MLM: every output against the original graph.
    def _against_original(self, head: str, fmt: str) -> None:
        outputs = self._run(head, fmt, self._load(head, fmt), self.inputs)
        truth = self.truth
        for i, state in enumerate(outputs["hidden_states"]):
            self.add(head, fmt, f"hidden_states.{i}", ORIGINAL, state, truth["hidden_states"][i])
        if head == "RemBertModel":
            for i, attention in enumerate(outputs["attentions"]):
                self.add(head, fmt, f"attentions.{i}", ORIGINAL, attention, truth["attentions"][i])
            self.add(head, fmt, "last_hidden_state", ORIGINAL, outputs["last_hidden_state"],
                     truth["last_hidden_state"])
            if truth["pooler_output"] is not None:
                self.add(head, fmt, "pooler_output", ORIGINAL, outputs["pooler_output"], truth["pooler_output"])
        else:
            self.add(head, fmt, "logits", ORIGINAL, outputs["logits"], truth["mlm_logits"])

    # A fine-tuned task head, loaded from the file (never initialised), against the original head math.
    def _against_original_head(self, head: str, fmt: str) -> None:
        model = self._load(head, fmt)
        if model.loading_info["newly_initialized"]:
            raise UserError(f"{FORMAT_FILES[fmt][0]} lacks the fine-tuned head's "
                            f"{', '.join(model.loading_info['newly_initialized'])}; convert the checkpoint again")
        outputs = self._run(head, fmt, model, self.inputs)
        for i, state in enumerate(outputs["hidden_states"]):
            self.add(head, fmt, f"hidden_states.{i}", ORIGINAL, state, self.truth["hidden_states"][i])
        for name, expected in self.truth["task_head"].items():
            self.add(head, fmt, name, ORIGINAL, outputs[name], expected)

    # Task heads and the causal LM: PyTorch (first PyTorch file) is the reference; head weights are shared.
    def _against_pytorch(self, head: str) -> None:
        torch_formats = [f for f in self.views if f in ("pytorch", "safetensors")]
        if not torch_formats:
            return  # only tf_model.h5: nothing independent to compare a new task head with
        config = self._head_config(head)
        reference_fmt = torch_formats[0]
        reference_model = self._load(head, reference_fmt, config)
        head_dir = self.scratch / f"head-{head}"
        reference_model.save_pretrained(head_dir)  # the seeded task head, for the other formats to share
        inputs = self._head_inputs(head, config)
        expected = self._run(head, reference_fmt, reference_model, inputs)
        reference_name = f"pytorch:{FORMAT_FILES[reference_fmt][0]}"
        for fmt in self.views:
            if fmt == reference_fmt:
                continue
            model = self._load(head, fmt, config, shared_head=head_dir)
            outputs = self._run(head, fmt, model, inputs)
            for name, value in expected.items():
                if isinstance(value, (list, tuple)):
                    for i, item in enumerate(value):
                        self.add(head, fmt, f"{name}.{i}", reference_name, outputs[name][i], item)
                elif value is not None:
                    self.add(head, fmt, name, reference_name, outputs[name], value)

    def _head_config(self, head: str):
        config = dataclasses.replace(self.config)
        if head == "RemBertForCausalLM":
            config.is_decoder = True
        if head in ("RemBertForSequenceClassification", "RemBertForTokenClassification"):
            config.num_labels = 3
        return config

    def _head_inputs(self, head: str, config) -> dict[str, np.ndarray]:
        inputs = dict(self.inputs)
        rng = np.random.default_rng(1)
        batch, seq = inputs["input_ids"].shape
        if head == "RemBertForMultipleChoice":
            inputs = {k: np.stack([v, v[::-1]], axis=1) for k, v in inputs.items()}  # (B, 2 choices, T)
            inputs["labels"] = rng.integers(0, 2, size=batch)
        elif head == "RemBertForSequenceClassification":
            inputs["labels"] = rng.integers(0, config.num_labels, size=batch)
        elif head == "RemBertForTokenClassification":
            inputs["labels"] = rng.integers(0, config.num_labels, size=(batch, seq))
        elif head == "RemBertForQuestionAnswering":
            inputs["start_positions"] = rng.integers(0, seq, size=batch)
            inputs["end_positions"] = rng.integers(0, seq, size=batch)
        elif head == "RemBertForCausalLM":
            inputs["labels"] = inputs["input_ids"]
        return inputs

    def _load(self, head: str, fmt: str, config=None, shared_head: Path | None = None):
        view = self.views[fmt]
        if fmt == "tf2":
            from rembert_ref import tf_model

            model = tf_model.MODEL_CLASSES[f"TF{head}"].from_pretrained(view, config=config)
            if shared_head is not None and model.loading_info["newly_initialized"]:
                from converters.mapping import read_torch_weights_as_tf

                values, _ = read_torch_weights_as_tf(shared_head, model.config)
                model.assign_weights({k: values[k] for k in model.loading_info["newly_initialized"]})
            return model
        import torch

        from rembert_ref import torch_model

        torch.manual_seed(0)
        model = torch_model.MODEL_CLASSES[head].from_pretrained(view, config=config)
        if shared_head is not None and model.loading_info["newly_initialized"]:
            state, _ = torch_model.read_state_dict(shared_head)
            own = dict(model.named_parameters())
            with torch.no_grad():
                for name in model.loading_info["newly_initialized"]:
                    own[name].copy_(state[name])
        return model.float().eval()

    def _run(self, head: str, fmt: str, model, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        flags = {"output_hidden_states": True, "output_attentions": True}
        if fmt == "tf2":
            import tensorflow as tf

            result = model(**{k: tf.constant(v) for k, v in inputs.items()}, **flags)
        else:
            import torch

            with torch.no_grad():
                result = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}, **flags)
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                if f.name not in ("past_key_values",) and getattr(result, f.name) is not None}
