"""Write a full-size synthetic RemBERT checkpoint in Google's original TF1 format, in bounded memory.

The real RemBERT shapes (vocab 250300, input embedding 256, output embedding 1664, hidden 1152, 32 layers,
18 heads, intermediate 4608): 994.6 M values, 3.98 GB of float32 data, about 12 GB with the Adam slots.
TensorFlow's SaveV2 would need every tensor of a shard in memory at once, so this script writes the tensor
bundle itself (`.index` table + one `.data-00000-of-00001` file), generating each tensor in row slices of at
most `--chunk-mb` and checksumming it as it goes; peak memory is a few slices, whatever the model size.

The values are those of `testkit.synthetic_checkpoint` for the same seed (each variable draws from its own seeded
generator, and drawing it in row slices gives the same stream), and the layout is what TF1's Saver writes:
data in sorted-name order, so the model tensors are interleaved with their `adam_m` / `adam_v` slots. The
tests (`tests/test_tf1_reader.py`) read a tiny checkpoint from `write_bundle_checkpoint` with TensorFlow.

    .venv/bin/python benchmarks/make_full_checkpoint.py ../bench-data/full          # 3.98 GB
    .venv/bin/python benchmarks/make_full_checkpoint.py ../bench-data/full-slots --slots  # ~12 GB
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from testkit.index_table import encode_proto, index_bytes, shape_proto  # noqa: E402
from testkit.synthetic_checkpoint import SLOTS, VariableSpec, _generator, variable_groups  # noqa: E402
from converters.tf1_checkpoint import mask_crc  # noqa: E402
from converters.writers import cast  # noqa: E402

# Google's released RemBERT bert_config.json.
REMBERT_CONFIG = {
    "attention_probs_dropout_prob": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 1152,
    "initializer_range": 0.02,
    "input_embedding_size": 256,
    "intermediate_size": 4608,
    "max_position_embeddings": 512,
    "num_attention_heads": 18,
    "num_hidden_layers": 32,
    "output_embedding_size": 1664,
    "type_vocab_size": 2,
    "vocab_size": 250300,
}
TF_DTYPE_CODES = {"float32": 1, "int64": 9, "bfloat16": 14, "float16": 19}
STEP = 0  # writes model.ckpt-0
INDEX_BLOCK_BYTES = 16 << 10  # TensorFlow's table blocks are small too; several blocks exercise the index


# -- the index: protobuf messages in testkit's table writer ---------------------------------------------------


def _proto(*fields: tuple[int, int, int | bytes]) -> bytes:
    """Fields of one message, zeros left out as proto3 leaves them out."""
    return encode_proto([field for field in fields if field[2]])


def bundle_header(num_shards: int = 1) -> bytes:
    """BundleHeaderProto: num_shards, endianness LITTLE (0, omitted), version {producer: 1}."""
    return _proto((1, 0, num_shards), (3, 2, _proto((1, 0, 1))))


def bundle_entry(dtype: str, shape: tuple[int, ...], shard: int, offset: int, size: int,
                 crc32c: int) -> bytes:
    """BundleEntryProto: dtype, shape (TensorShapeProto of dims), shard_id, offset, size, masked crc32c."""
    return encode_proto([(1, 0, TF_DTYPE_CODES[dtype]), (2, 2, shape_proto(list(shape)))]) + _proto(
        (3, 0, shard), (4, 0, offset), (5, 0, size)) + encode_proto([(6, 5, crc32c)])


def index_table(entries: dict[bytes, bytes]) -> bytes:
    """The `.index` file: sorted entries in data blocks, an index block, an empty metaindex, the footer."""
    return index_bytes(sorted(entries.items()), INDEX_BLOCK_BYTES)


# -- values, in row slices -----------------------------------------------------------------------------------


def _slices(spec: VariableSpec, role: str, seed: int, rows_per_chunk: int) -> Iterator[np.ndarray]:
    """Draw a variable's normal values slice by slice: the same stream as one `standard_normal(shape)`."""
    generator = _generator(seed, role)
    rows = spec.shape[0] if spec.shape else 1
    for start in range(0, rows, rows_per_chunk):
        count = min(rows_per_chunk, rows - start)
        yield generator.standard_normal((count, *spec.shape[1:]), dtype=np.float32)


def _tensors(specs: list[VariableSpec], slots: bool, seed: int, dtype: str, chunk_bytes: int
             ) -> Iterator[tuple[str, str, tuple[int, ...], Iterator[np.ndarray]]]:
    """(name, dtype, shape, slices) for every variable, in the sorted-name order of TF1's Saver."""
    def model(spec: VariableSpec, rows: int) -> Iterator[np.ndarray]:
        for value in _slices(spec, spec.role, seed, rows):
            value *= np.float32(spec.std)  # in place, like testkit.synthetic_checkpoint._value
            value += np.float32(spec.mean)
            yield cast(value, "float32", dtype)

    def slot(spec: VariableSpec, name: str, rows: int) -> Iterator[np.ndarray]:
        for value in _slices(spec, f"{spec.role}/{name}", seed, rows):
            if name == "adam_v":
                np.square(value, out=value)
            value *= np.float32(1e-3 if name == "adam_m" else 1e-6)
            yield value

    tensors = {}
    for spec in specs:
        row_bytes = 4 * int(np.prod(spec.shape[1:], dtype=np.int64))
        rows = max(1, chunk_bytes // max(row_bytes, 1))
        tensors[spec.name] = (dtype, spec.shape, lambda s=spec, r=rows: model(s, r))
        if slots:
            for name in SLOTS:
                tensors[f"{spec.name}/{name}"] = ("float32", spec.shape,
                                                  lambda s=spec, n=name, r=rows: slot(s, n, r))
    tensors["global_step"] = ("int64", (), lambda: iter([np.asarray(STEP, dtype="<i8")]))
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        tensor_dtype, shape, make = tensors[name]
        yield name, tensor_dtype, shape, make()



def write_bundle_checkpoint(directory: str | os.PathLike, original_config: dict, *, seed: int = 0,
                            slots: bool = False, dtype: str = "float32", chunk_bytes: int = 16 << 20,
                            progress: bool = False) -> Path:
    """Write `<directory>/model.ckpt-0.{index,data-00000-of-00001}`, `checkpoint` and `bert_config.json`
    (model with pooler and MLM head, optional Adam slots, global_step); return the prefix."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / f"model.ckpt-{STEP}"
    specs = [spec for _, group in variable_groups(original_config) for spec in group]
    entries = {b"": bundle_header()}
    offset, started, last_report = 0, time.monotonic(), 0.0
    with open(f"{prefix}.data-00000-of-00001", "wb") as data:
        for name, tensor_dtype, shape, slices in _tensors(specs, slots, seed, dtype, chunk_bytes):
            crc, size = 0, 0
            for value in slices:
                raw = value.tobytes()  # little-endian on every machine this runs on
                crc = google_crc32c.extend(crc, raw)
                data.write(raw)
                size += len(raw)
            entries[name.encode("utf-8")] = bundle_entry(tensor_dtype, shape, 0, offset, size, mask_crc(crc))
            offset += size
            if progress and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                print(f"  {offset / 1e9:.2f} GB written ({last_report - started:.0f} s)", file=sys.stderr)
    Path(f"{prefix}.index").write_bytes(index_table(entries))
    (directory / "checkpoint").write_text(f'model_checkpoint_path: "{prefix.name}"\n'
                                          f'all_model_checkpoint_paths: "{prefix.name}"\n', encoding="utf-8")
    (directory / "bert_config.json").write_text(json.dumps(original_config, indent=2, sort_keys=True) + "\n",
                                                encoding="utf-8")
    return prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write (e.g. ../bench-data/full), outside the repo")
    parser.add_argument("--slots", action="store_true", help="add the Adam slots adam_m / adam_v (~12 GB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="dtype of the model variables (slots stay float32)")
    parser.add_argument("--config", help="an original bert_config.json (default: the released RemBERT one)")
    parser.add_argument("--chunk-mb", type=int, default=16, help="rows generated and written at a time")
    args = parser.parse_args()
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty; remove it or pick another directory")
    config = json.loads(Path(args.config).read_text()) if args.config else REMBERT_CONFIG
    started = time.monotonic()
    prefix = write_bundle_checkpoint(out, config, seed=args.seed, slots=args.slots, dtype=args.dtype,
                                     chunk_bytes=args.chunk_mb << 20, progress=True)
    size = os.path.getsize(f"{prefix}.data-00000-of-00001")
    print(f"{prefix}: {size / 1e9:.2f} GB of data in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
