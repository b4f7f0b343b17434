"""Fine-tuned RemBERT fixtures, written by TensorFlow itself: TF1 checkpoints with a task head, and TF1
Estimator-style SavedModels like BLEURT's.

Three head styles, each named as the original code names it:

- `bleurt`: BLEURT (google-research/bleurt) regresses on the pooled output with `tf.layers.dense(pooled, 1)`
  at the top level of the graph: `dense/kernel` [hidden, 1], `dense/bias` [1]. No MLM head. BLEURT ships as
  a SavedModel (`saved_model.pb`, `variables/variables.*`) with `bert_config.json`, `sent_piece.model` and
  `bleurt_config.json` beside it; the distilled BLEURT-20-D12/D6/D3 change the layer count and the sizes.
- `run_classifier`: BERT's run_classifier.py, `output_weights` [num_labels, hidden] and `output_bias`
  [num_labels], applied to the pooled output with `matmul(..., transpose_b=True)`.
- `squad`: BERT's run_squad.py, `cls/squad/output_weights` [2, hidden] and `cls/squad/output_bias` [2],
  applied to every token of the sequence output (start and end logits).

The encoder values come from `testkit.synthetic_checkpoint` (seeded per variable); head values are seeded the
same way. The SavedModel's graph holds every variable (restored by TensorFlow's own loader) and a serving
signature that applies the head to a pooled / sequence output fed in: the encoder itself is not rebuilt in
TensorFlow ops (the numpy float64 reference implements it, and the converter reads only the variables).

    python -m testkit.finetuned OUT --style bleurt --saved-model        # a preset tiny config
    python -m testkit.finetuned OUT --style run_classifier --config bert_config.json --num-labels 3
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from rembert_ref.errors import UserError
from testkit.synthetic_checkpoint import _generator, synthetic_variables, write_synthetic_checkpoint

STYLES = ("bleurt", "run_classifier", "squad")
HEAD_NAMES = {  # (kernel, bias, kernel is [hidden, n], reads the pooled output)
    "bleurt": ("dense/kernel", "dense/bias", True, True),
    "run_classifier": ("output_weights", "output_bias", False, True),
    "squad": ("cls/squad/output_weights", "cls/squad/output_bias", False, False),
}
# Tiny configs per style, sizes distinct within and across them. BLEURT's is distilled-shaped: its own layer
# count and embedding size, no output_embedding_size (no MLM head), the input size spelled embedding_size.
PRESET_CONFIGS: dict[str, dict[str, Any]] = {
    "bleurt": {"vocab_size": 97, "hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 3,
               "intermediate_size": 44, "hidden_act": "gelu", "max_position_embeddings": 24, "type_vocab_size": 2,
               "embedding_size": 20, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
               "initializer_range": 0.02},
    "run_classifier": {"vocab_size": 89, "hidden_size": 30, "num_hidden_layers": 2, "num_attention_heads": 5,
                       "intermediate_size": 41, "hidden_act": "gelu", "max_position_embeddings": 28,
                       "type_vocab_size": 2, "input_embedding_size": 14, "output_embedding_size": 26},
    "squad": {"vocab_size": 83, "hidden_size": 28, "num_hidden_layers": 3, "num_attention_heads": 4,
              "intermediate_size": 33, "hidden_act": "gelu", "max_position_embeddings": 36, "type_vocab_size": 2,
              "input_embedding_size": 16, "output_embedding_size": 23},
}
# BLEURT's own settings file; the converter only looks for its presence (BLEURT scores the pooled output).
BLEURT_CONFIG = {"name": "tiny-bleurt", "max_seq_length": 64, "vocab_file": None, "do_lower_case": None,
                 "sp_model": "sent_piece", "dynamic_seq_length": True}


def head_variables(style: str, hidden_size: int, num_labels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The task head of `style`, float32, by its original names (kernel ~ N(0, 1/hidden), bias ~ N(0, 0.1^2))."""
    if style not in STYLES:
        raise UserError(f"unknown head style {style!r}; use one of: {', '.join(STYLES)}")
    outputs = {"bleurt": 1, "squad": 2}.get(style, num_labels)
    kernel, bias, in_out, _ = HEAD_NAMES[style]
    shape = (hidden_size, outputs) if in_out else (outputs, hidden_size)
    kernel_value = _generator(seed, f"{style}/{kernel}").standard_normal(shape, dtype=np.float32)
    kernel_value *= np.float32(hidden_size**-0.5)
    bias_value = _generator(seed, f"{style}/{bias}").standard_normal((outputs,), dtype=np.float32)
    bias_value *= np.float32(0.1)
    return {kernel: kernel_value, bias: bias_value}


def _generation_config(original_config: Mapping[str, Any]) -> dict[str, Any]:
    # A fine-tuned config may lack output_embedding_size (no MLM head); the generator's size check wants it.
    values = dict(original_config)
    values.setdefault("output_embedding_size", values.get("input_embedding_size", values.get("embedding_size")))
    return values


def finetuned_variables(original_config: Mapping[str, Any], style: str, *, num_labels: int = 3,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """Every float32 variable of a fine-tuned checkpoint (encoder, pooler, task head; no MLM head)."""
    values = synthetic_variables(_generation_config(original_config), seed=seed, with_mlm_head=False)
    values.update(head_variables(style, int(original_config["hidden_size"]), num_labels, seed))
    return values


def write_finetuned_checkpoint(directory: str | os.PathLike, original_config: Mapping[str, Any], style: str, *,
                               num_labels: int = 3, seed: int = 0, optimizer_slots: bool = True,
                               step: int = 7) -> pathlib.Path:
    """A TF1 checkpoint as BERT's fine-tuning scripts leave it: encoder + pooler + task head, Adam slots on the
    encoder, global_step, no MLM head. Returns the prefix."""
    head = head_variables(style, int(original_config["hidden_size"]), num_labels, seed)
    prefix = write_synthetic_checkpoint(directory, _generation_config(original_config), seed=seed, step=step,
                                        optimizer_slots=optimizer_slots, with_mlm_head=False, extra_variables=head)
    _write_json(pathlib.Path(directory) / "bert_config.json", original_config)
    return prefix


def write_tf1_saved_model(directory: str | os.PathLike, original_config: Mapping[str, Any], style: str, *,
                          num_labels: int = 3, seed: int = 0, spm_model: str | os.PathLike | None = None,
                          bleurt_config: bool | None = None) -> pathlib.Path:
    """A TF1 SavedModel written with `tf.compat.v1.saved_model.Builder` (as Estimator.export_saved_model
    does): saved_model.pb, variables/variables.{index,data-*}, with bert_config.json beside it, BLEURT's
    bleurt_config.json (default: for the bleurt style) and the SentencePiece model as `sent_piece.model`."""
    import tensorflow as tf

    directory = pathlib.Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory} is not empty; pick an empty directory for the SavedModel")
    values = finetuned_variables(original_config, style, num_labels=num_labels, seed=seed)
    kernel_name, bias_name, in_out, pooled = HEAD_NAMES[style]
    hidden = int(original_config["hidden_size"])

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".saved-model-", dir=directory.parent))
    try:
        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            variables = {}
            for name in sorted(values):
                # Zeros in the graph, the values loaded afterwards: saved_model.pb stays small (no constants).
                variables[name] = tf.compat.v1.get_variable(name, shape=values[name].shape, dtype=tf.float32,
                                                            initializer=tf.compat.v1.zeros_initializer())
            tf.compat.v1.train.get_or_create_global_step()
            session.run(tf.compat.v1.global_variables_initializer())
            for name, variable in variables.items():
                variable.load(values[name], session)
            # The head as the original code applies it, on an encoder output fed in.
            shape = [None, hidden] if pooled else [None, None, hidden]
            input_name = "pooled_output" if pooled else "sequence_output"
            features = tf.compat.v1.placeholder(tf.float32, shape, name=input_name)
            kernel, bias = variables[kernel_name], variables[bias_name]
            logits = tf.tensordot(features, kernel if in_out else tf.transpose(kernel), axes=1) + bias
            outputs = {"predictions": tf.squeeze(logits, -1)} if style == "bleurt" else {"logits": logits}
            signature = tf.compat.v1.saved_model.predict_signature_def(
                inputs={input_name: features}, outputs=outputs)
            builder = tf.compat.v1.saved_model.Builder(str(staging / "model"))
            builder.add_meta_graph_and_variables(session, [tf.compat.v1.saved_model.tag_constants.SERVING],
                                                 signature_def_map={"serving_default": signature})
            builder.save()
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted((staging / "model").iterdir()):
            shutil.move(str(path), directory / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_json(directory / "bert_config.json", original_config)
    if bleurt_config if bleurt_config is not None else style == "bleurt":
        _write_json(directory / "bleurt_config.json", BLEURT_CONFIG)
    if spm_model is not None:
        shutil.copyfile(spm_model, directory / "sent_piece.model")
    return directory


def write_tf2_saved_model(directory: str | os.PathLike, hidden_size: int = 8) -> pathlib.Path:
    """A TF2 object-graph SavedModel (`tf.saved_model.save` of a tf.Module): its variables are keyed by
    object path (`.../.ATTRIBUTES/VARIABLE_VALUE`), not by graph name; the converter must refuse it."""
    import tensorflow as tf

    module = tf.Module()
    module.kernel = tf.Variable(np.ones((hidden_size, 1), np.float32), name="dense/kernel")
    module.serve = tf.function(lambda x: tf.matmul(x, module.kernel),
                               input_signature=[tf.TensorSpec([None, hidden_size], tf.float32)])
    tf.saved_model.save(module, str(directory))
    return pathlib.Path(directory)


def _write_json(path: pathlib.Path, values: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(dict(values), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """`python -m testkit.finetuned OUT --style bleurt|run_classifier|squad [--config FILE] [--saved-model]`"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m testkit.finetuned", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=pathlib.Path)
    parser.add_argument("--config", type=pathlib.Path, help="an original bert_config.json (default: the style's "
                        "tiny preset, PRESET_CONFIGS)")
    parser.add_argument("--style", choices=STYLES, required=True)
    parser.add_argument("--num-labels", type=int, default=3, help="run_classifier's number of labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--saved-model", action="store_true", help="write a TF1 SavedModel, not a checkpoint")
    args = parser.parse_args(argv)
    config = (json.loads(args.config.read_text(encoding="utf-8")) if args.config is not None
              else PRESET_CONFIGS[args.style])
    if args.saved_model:
        path = write_tf1_saved_model(args.output, config, args.style, num_labels=args.num_labels, seed=args.seed)
    else:
        path = write_finetuned_checkpoint(args.output, config, args.style, num_labels=args.num_labels,
                                          seed=args.seed)
    print(path)


if __name__ == "__main__":
    main()
