"""Synthetic checkpoints in Google's ORIGINAL RemBERT TF1 format, written by TensorFlow's own saver ops.

The variable names and layouts follow the released checkpoints (`bert/...`, TF1 kernels [in, out], the
`embedding_hidden_mapping_in` projection, the decoupled output embedding of the MLM head, Adam slots,
`global_step`). No model is built: each shard is one `tf.raw_ops.SaveV2` call into a temporary prefix, and
`tf.raw_ops.MergeV2Checkpoints` joins them into `model.ckpt-<step>` with `num_shards` data files.

Values are deterministic for (config, seed): every variable draws from its own generator seeded by
(seed, a hash of the variable's role), so turning a head on or off, renaming the output embedding or
changing the shard count leaves all other values unchanged. The scales keep activations of order one, so a
wrong activation, a transposed kernel or a swapped axis shows up in the outputs:
kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 1), biases ~ N(0, 0.1^2), LayerNorm gamma ~ 1 + N(0, 0.1^2)
and beta ~ N(0, 0.1^2).

Peak memory is about one shard's tensors (model values plus their two Adam slots): pass more shards
(`num_shards`, `--shards`) to write a full-size synthetic checkpoint on a small machine.

    python -m testkit.synthetic_checkpoint out/tiny --config bert_config.json --seed 0 --shards 2
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rembert_ref.errors import UserError
from rembert_ref.config import ORIGINAL_REQUIRED_KEYS

DEFAULT_OUTPUT_EMBEDDING_NAME = "cls/predictions/output_embedding"
DTYPES = ("float32", "float16", "bfloat16")
SLOTS = ("adam_m", "adam_v")


@dataclass(frozen=True)
class VariableSpec:
    name: str  # the original TF1 name
    shape: tuple[int, ...]
    mean: float
    std: float
    role: str  # seeds the generator: the default name, so renaming the output embedding keeps its values


def _sizes(original_config: Mapping[str, Any]) -> dict[str, int]:
    values = dict(original_config)
    if "input_embedding_size" not in values and "embedding_size" in values:
        values["input_embedding_size"] = values["embedding_size"]
    missing = [k for k in (*ORIGINAL_REQUIRED_KEYS, "input_embedding_size") if k not in values]
    if missing:
        raise UserError(f"original config lacks {', '.join(missing)}; add them to the config")
    sizes = {k: int(values[k]) for k in (*ORIGINAL_REQUIRED_KEYS, "input_embedding_size")}
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise UserError(
            f"hidden_size {sizes['hidden_size']} is not a multiple of num_attention_heads "
            f"{sizes['num_attention_heads']}; fix the config"
        )
    return sizes


def _dense(scope: str, fan_in: int, fan_out: int) -> list[VariableSpec]:
    return [
        VariableSpec(f"{scope}/kernel", (fan_in, fan_out), 0.0, fan_in**-0.5, f"{scope}/kernel"),
        VariableSpec(f"{scope}/bias", (fan_out,), 0.0, 0.1, f"{scope}/bias"),
    ]


def _layer_norm(scope: str, width: int) -> list[VariableSpec]:
    return [
        VariableSpec(f"{scope}/gamma", (width,), 1.0, 0.1, f"{scope}/gamma"),
        VariableSpec(f"{scope}/beta", (width,), 0.0, 0.1, f"{scope}/beta"),
    ]


def _embedding(name: str, rows: int, width: int) -> VariableSpec:
    return VariableSpec(name, (rows, width), 0.0, 1.0, name)


def variable_groups(
    original_config: Mapping[str, Any],
    *,
    with_pooler: bool = True,
    with_mlm_head: bool = True,
    with_nsp: bool = False,
    output_embedding_name: str = DEFAULT_OUTPUT_EMBEDDING_NAME,
) -> list[tuple[str, list[VariableSpec]]]:
    """The model variables as (group, specs) in write order: embeddings, each layer, pooler, heads."""
    s = _sizes(original_config)
    hidden, emb, out_emb, vocab = s["hidden_size"], s["input_embedding_size"], s["output_embedding_size"], \
        s["vocab_size"]
    groups: list[tuple[str, list[VariableSpec]]] = [(
        "embeddings",
        [
            _embedding("bert/embeddings/word_embeddings", vocab, emb),
            _embedding("bert/embeddings/position_embeddings", s["max_position_embeddings"], emb),
            _embedding("bert/embeddings/token_type_embeddings", s["type_vocab_size"], emb),
            *_layer_norm("bert/embeddings/LayerNorm", emb),
            *_dense("bert/encoder/embedding_hidden_mapping_in", emb, hidden),
        ],
    )]
    for i in range(s["num_hidden_layers"]):
        layer = f"bert/encoder/layer_{i}"
        groups.append((f"layer_{i}", [
            *_dense(f"{layer}/attention/self/query", hidden, hidden),
            *_dense(f"{layer}/attention/self/key", hidden, hidden),
            *_dense(f"{layer}/attention/self/value", hidden, hidden),
            *_dense(f"{layer}/attention/output/dense", hidden, hidden),
            *_layer_norm(f"{layer}/attention/output/LayerNorm", hidden),
            *_dense(f"{layer}/intermediate/dense", hidden, s["intermediate_size"]),
            *_dense(f"{layer}/output/dense", s["intermediate_size"], hidden),
            *_layer_norm(f"{layer}/output/LayerNorm", hidden),
        ]))
    if with_pooler:
        groups.append(("pooler", _dense("bert/pooler/dense", hidden, hidden)))
    heads: list[VariableSpec] = []
    if with_mlm_head:
        if not output_embedding_name or output_embedding_name.endswith("/"):
            raise UserError(f"output embedding name {output_embedding_name!r} is not a variable name; "
                            f"leave the default {DEFAULT_OUTPUT_EMBEDDING_NAME!r}")
        heads += [
            *_dense("cls/predictions/transform/dense", hidden, out_emb),
            *_layer_norm("cls/predictions/transform/LayerNorm", out_emb),
            VariableSpec("cls/predictions/output_bias", (vocab,), 0.0, 0.1, "cls/predictions/output_bias"),
            # logits = x @ output_embedding.T: its fan-in is output_embedding_size.
            VariableSpec(output_embedding_name, (vocab, out_emb), 0.0, out_emb**-0.5,
                         DEFAULT_OUTPUT_EMBEDDING_NAME),
        ]
    if with_nsp:
        heads += [
            VariableSpec("cls/seq_relationship/output_weights", (2, hidden), 0.0, hidden**-0.5,
                         "cls/seq_relationship/output_weights"),
            VariableSpec("cls/seq_relationship/output_bias", (2,), 0.0, 0.1, "cls/seq_relationship/output_bias"),
        ]
    if heads:
        groups.append(("heads", heads))
    names = [spec.name for _, specs in groups for spec in specs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise UserError(f"output embedding name {output_embedding_name!r} clashes with {', '.join(clashes)}; "
                        "pick another name")
    return groups


def _generator(seed: int, role: str) -> np.random.Generator:
    if seed < 0:
        raise UserError(f"seed {seed} is negative; pass a seed >= 0")
    # A stable hash (not Python's salted hash()) so values are the same in every process.
    key = int.from_bytes(hashlib.sha256(role.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def _value(spec: VariableSpec, seed: int) -> np.ndarray:
    value = _generator(seed, spec.role).standard_normal(spec.shape, dtype=np.float32)
    value *= np.float32(spec.std)  # in place: no float32 temporaries the size of a full-size embedding
    value += np.float32(spec.mean)
    return value


def _slot(spec: VariableSpec, slot: str, seed: int) -> np.ndarray:
    value = _generator(seed, f"{spec.role}/{slot}").standard_normal(spec.shape, dtype=np.float32)
    # Adam's first moment is small and signed, its second moment small and positive.
    if slot == "adam_v":
        np.square(value, out=value)
    value *= np.float32(1e-3 if slot == "adam_m" else 1e-6)
    return value


def synthetic_variables(
    original_config: dict,
    *,
    seed: int = 0,
    with_pooler: bool = True,
    with_mlm_head: bool = True,
    with_nsp: bool = False,
    output_embedding_name: str = DEFAULT_OUTPUT_EMBEDDING_NAME,
) -> dict[str, np.ndarray]:
    """The float32 model variables by original name, exactly the values `write_synthetic_checkpoint` stores
    (before its dtype cast). No optimizer slots, no global_step."""
    groups = variable_groups(original_config, with_pooler=with_pooler, with_mlm_head=with_mlm_head,
                             with_nsp=with_nsp, output_embedding_name=output_embedding_name)
    return {spec.name: _value(spec, seed) for _, specs in groups for spec in specs}


def _split(sizes: list[int], num_shards: int) -> list[list[int]]:
    """Contiguous, non-empty runs of group indices with about equal bytes each."""
    shards: list[list[int]] = []
    start, remaining = 0, sum(sizes)
    for k in range(num_shards):
        shards_left = num_shards - k
        target = remaining / shards_left
        end, taken = start + 1, sizes[start]
        # Leave at least one group for each later shard.
        while end < len(sizes) - (shards_left - 1) and taken + sizes[end] / 2 <= target:
            taken += sizes[end]
            end += 1
        if k == num_shards - 1:
            end = len(sizes)
        shards.append(list(range(start, end)))
        remaining -= sum(sizes[start:end])
        start = end
    return shards


def _read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; pass an original bert_config.json with --config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid JSON ({exc}); fix or replace it") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    return values


def write_synthetic_checkpoint(
    directory: str | os.PathLike,
    original_config: dict,
    *,
    seed: int = 0,
    step: int = 3,
    optimizer_slots: bool = True,
    with_pooler: bool = True,
    with_mlm_head: bool = True,
    with_nsp: bool = False,
    output_embedding_name: str = DEFAULT_OUTPUT_EMBEDDING_NAME,
    dtype: str = "float32",
    num_shards: int = 1,
    extra_variables: dict[str, np.ndarray] | None = None,
    progress: bool = False,
) -> pathlib.Path:
    """Write `<directory>/model.ckpt-<step>.{index,data-*}`, `checkpoint` and `bert_config.json`;
    return the prefix `<directory>/model.ckpt-<step>`.

    `dtype` casts the stored model variables (Adam slots stay float32, as in mixed-precision training);
    `extra_variables` are stored as given, e.g. to test how a converter treats unknown names.
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    if step < 0:
        raise UserError(f"step {step} is negative; pass a step >= 0")
    groups = variable_groups(original_config, with_pooler=with_pooler, with_mlm_head=with_mlm_head,
                             with_nsp=with_nsp, output_embedding_name=output_embedding_name)
    extra_variables = dict(extra_variables or {})
    taken = {spec.name for _, specs in groups for spec in specs} | {"global_step"}
    if optimizer_slots:
        taken |= {f"{name}/{slot}" for name in list(taken - {"global_step"}) for slot in SLOTS}
    clashes = sorted(set(extra_variables) & taken)
    if clashes:
        raise UserError(f"extra variables {', '.join(clashes)} clash with generated ones; rename them")
    groups.append(("global_step", []))  # global_step and the extras travel in the last group
    if not 1 <= num_shards <= len(groups):
        raise UserError(f"num_shards {num_shards} must be between 1 and {len(groups)} (the number of variable "
                        "groups) for this config")

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / f"model.ckpt-{step}"
    existing = sorted(p.name for p in directory.glob(f"{prefix.name}.*"))
    if existing:
        raise UserError(f"{directory} already holds {', '.join(existing)}; pick an empty directory or another step")

    import tensorflow as tf  # lazily: synthetic_variables is useful without paying for TensorFlow's import
    from tqdm import tqdm

    tf_dtype = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}[dtype]
    group_bytes = [sum(int(np.prod(spec.shape)) for spec in specs) for _, specs in groups]
    shards = _split([max(b, 1) for b in group_bytes], num_shards)

    def tensors_of(group: int) -> Iterator[tuple[str, Any]]:
        for spec in groups[group][1]:
            # One numpy value at a time; TensorFlow copies it, so it is freed before the next one.
            yield spec.name, tf.cast(tf.constant(_value(spec, seed)), tf_dtype)
            if optimizer_slots:
                for slot in SLOTS:
                    yield f"{spec.name}/{slot}", tf.constant(_slot(spec, slot, seed))
        if groups[group][0] == "global_step":
            yield "global_step", tf.constant(step, dtype=tf.int64)
            for name in sorted(extra_variables):
                yield name, tf.constant(np.asarray(extra_variables[name]))

    scratch = pathlib.Path(tempfile.mkdtemp(prefix=".synthetic-", dir=directory))
    try:
        parts = []
        bar = tqdm(total=len(groups), desc="synthetic checkpoint", unit="group", disable=not progress)
        for k, shard in enumerate(shards):
            names, tensors = [], []
            for group in shard:
                for name, tensor in tensors_of(group):
                    names.append(name)
                    tensors.append(tensor)
                bar.update(1)
            part = scratch / f"part-{k:05d}"
            tf.raw_ops.SaveV2(prefix=str(part), tensor_names=names, shape_and_slices=[""] * len(names),
                              tensors=tensors)
            del tensors
            parts.append(str(part))
        bar.close()
        tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=str(prefix),
                                      delete_old_dirs=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    (directory / "checkpoint").write_text(
        f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n', encoding="utf-8"
    )
    (directory / "bert_config.json").write_text(json.dumps(dict(original_config), indent=2, sort_keys=True) + "\n",
                                                encoding="utf-8")
    return prefix


def main(argv: list[str] | None = None) -> None:
    """`python -m testkit.synthetic_checkpoint OUT_DIR --config cfg.json [--seed 0] [--no-slots] [--shards N] ...`"""
    import click

    from rembert_convert.cli import debug_option, handle_user_errors, quiet_option

    @click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                  help="An original bert_config.json (vocab_size, hidden_size, ..., output_embedding_size).")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--step", default=3, show_default=True, type=int, help="Writes model.ckpt-<step>.")
    @click.option("--no-slots", is_flag=True, help="Leave out the Adam slots adam_m / adam_v.")
    @click.option("--shards", default=1, show_default=True, type=int, help="Number of data files.")
    @click.option("--dtype", default="float32", show_default=True, type=click.Choice(DTYPES))
    @click.option("--no-pooler", is_flag=True, help="Leave out bert/pooler.")
    @click.option("--no-mlm-head", is_flag=True, help="Leave out cls/predictions.")
    @click.option("--nsp", is_flag=True, help="Add the next-sentence head cls/seq_relationship.")
    @click.option("--output-embedding-name", default=DEFAULT_OUTPUT_EMBEDDING_NAME, show_default=True)
    @quiet_option
    @debug_option
    @handle_user_errors
    def command(out_dir: str, config_path: str, seed: int, step: int, no_slots: bool, shards: int, dtype: str,
                no_pooler: bool, no_mlm_head: bool, nsp: bool, output_embedding_name: str, quiet: bool,
                debug: bool) -> None:
        """Write a synthetic original-format RemBERT TF1 checkpoint into OUT_DIR.

        \b
        Example:
          python -m testkit.synthetic_checkpoint out/tiny --config bert_config.json --seed 0 --shards 2
        """
        prefix = write_synthetic_checkpoint(
            out_dir, _read_config(config_path), seed=seed, step=step, optimizer_slots=not no_slots,
            with_pooler=not no_pooler, with_mlm_head=not no_mlm_head, with_nsp=nsp,
            output_embedding_name=output_embedding_name, dtype=dtype, num_shards=shards,
            progress=not quiet and os.isatty(2),
        )
        if not quiet:
            click.echo(str(prefix))

    command.main(args=argv, prog_name="python -m testkit.synthetic_checkpoint")


if __name__ == "__main__":
    main()
