"""The tensor-level proof: every tensor of every converted file against its source variable, value by value.

For each format present (`pytorch_model.bin` through `torch.load(mmap=True, weights_only=True)`, every
safetensors shard through `safe_open`, `tf_model.h5` through h5py datasets) the mapping table's plan says which
checkpoint variable each tensor holds, in which layout and dtype. The checkpoint is streamed in row slices
(CRC-checked by the reader), cast exactly as the writers cast it (`converters.writers.cast`: float32 as is,
float16 / bfloat16 rounded to nearest even), and compared bit for bit with the same rows of the file.

One `TensorRow` per tensor and format, plus one per tensor saying whether the formats agree with each other.
Missing, extra or duplicated tensors, a wrong shape or a wrong dtype are failures. This proof catches any
changed value anywhere, but it trusts the mapping table; the functional proof (`validation/parity.py`), which
runs every head against the original graph on original names, is what catches an error in the table.

Formats are proved one at a time, each file mapped while it is read, so memory holds one format at most.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import shlex
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.mapping import ConversionPlan, TensorMapping, plan_conversion
from converters.tf1_checkpoint import DEFAULT_CHUNK_BYTES, CheckpointReader
from converters.writers import cast, drop_cached_file, to_float32, transpose
from rembert_ref.config import RemBertConfig
from rembert_ref.errors import UserError
from rembert_ref.weight_files import h5_attribute, read_weight_index
from converters.progress import Update

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
AGREEMENT = "all formats"
CONFIG, FOLDER = "config", "folder"  # the rows about config.json and about the folder's other files


@dataclass(frozen=True)
class TensorRow:
    format: str  # pytorch | safetensors | tf2 | "all formats" (do the formats agree) | "config" | "folder"
    tensor: str  # the name in the file (for tf2 the dataset path in tf_model.h5)
    source: str  # the checkpoint variable it must hold ("-" for an extra tensor)
    # values | missing | extra | duplicate | shape | dtype | agree (the tensors); index | metadata | link | storage |
    # unlisted (how a file holds them); config | unproven (config.json and the folder's other files)
    check: str
    shape: tuple[int, ...]
    dtype: str
    differing: int  # elements that differ from the expected bits
    max_abs: float  # largest |file - expected| over those elements
    first_index: tuple[int, ...] | None  # the first differing element
    passed: bool
    detail: str = ""

    @property
    def subject(self) -> str:
        """What the row checks, for a person: 'tensor pytorch', 'tensor all formats', 'config', 'folder'."""
        return self.format if self.format in (CONFIG, FOLDER) else f"tensor {self.format}"


# -- the files, as readers of row slices ----------------------------------------------------------------------


class _TorchFile:
    """pytorch_model.bin memory-mapped: tensors are views of the file's pages."""

    def __init__(self, path: Path):
        import torch

        self.path = path
        self.paths = [path]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # RuntimeError, UnpicklingError, ...: not a readable torch file
            raise UserError(f"cannot read {path} ({exc}); convert the checkpoint again") from exc
        if not isinstance(state, dict):
            raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; convert the checkpoint again")
        # A state dict maps names to tensors: anything else would stop the proof with an internal error.
        stray = next((key for key, value in state.items()
                      if not isinstance(key, str) or not isinstance(value, torch.Tensor)), None)
        if stray is not None:
            raise UserError(f"{path} holds {stray!r}: a {type(state[stray]).__name__}, not a named tensor; convert "
                            "the checkpoint again")
        self.state = state
        self.duplicates: list[str] = []  # a pickled dict cannot hold a key twice
        self.problems: list[tuple[str, str, str]] = []

    def tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in self.state.items()}

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return _numpy(self.state[name][start:stop] if self.state[name].dim() else self.state[name])

    def close(self) -> list[weakref.ref]:
        handed_out = [weakref.ref(t.untyped_storage()) for t in self.state.values()]
        self.state = {}
        return handed_out


class _SafetensorsFiles:
    """model.safetensors, or the shards an index names; each read through safe_open."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        index = directory / "model.safetensors.index.json"
        if (directory / "model.safetensors").is_file():
            shards, weight_map, index_metadata = ["model.safetensors"], None, None
        else:
            weight_map, index_metadata = read_weight_index(index)
            shards = sorted(set(weight_map.values()))
        self.paths = [directory / shard for shard in shards]
        self.handles: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.loaded: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        self.duplicates = []
        self.problems: list[tuple[str, str, str]] = []  # (tensor, check, what is wrong)
        extra_keys = set(index_metadata) - {"total_size"} if isinstance(index_metadata, dict) else set()
        for key in sorted(extra_keys):  # transformers 5.x takes the model's dtype from "dtype" here
            self.problems.append((index.name, "index", f"metadata key {key!r}, which transformers may read "
                                  "(convert writes only total_size)"))
        for shard in shards:
            path = directory / shard
            if not path.is_file():
                raise UserError(f"{index.name} names shard {shard}, which is not in {directory}; copy it there")
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # SafetensorError: a broken header
                raise UserError(f"cannot read {path} ({exc}); convert the checkpoint again") from exc
            self.handles[shard] = handle
            stated = (handle.metadata() or {}).get("format")
            # transformers refuses metadata without format "pt" ("Incompatible safetensors file"); convert always
            # writes it, so a header without metadata is not what convert wrote either.
            if stated != "pt":
                self.problems.append((shard, "metadata", f"the header's metadata says format {stated!r}, not 'pt' "
                                      "(as convert writes it)"))
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if name in self.where:
                    self.duplicates.append(f"{name} (in {self.where[name]} and {shard})")
                else:
                    self.where[name] = shard
        if weight_map is not None:
            for name, shard in sorted(weight_map.items()):
                if self.where.get(name, shard) != shard:
                    self.problems.append((name, "index",
                                          f"the index says {shard}, the tensor is in {self.where[name]}"))
                elif name not in self.where:
                    self.problems.append((name, "index", f"the index names it in {shard}, which lacks it"))
            for name in sorted(set(self.where) - set(weight_map)):
                self.problems.append((name, "index", f"in {self.where[name]} but not in the index"))

    def tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        out = {}
        for name, shard in self.where.items():
            piece = self.handles[shard].get_slice(name)
            out[name] = (tuple(piece.get_shape()), SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype()))
        return out

    def tensor(self, name: str):
        """The whole tensor as safe_open gives it: backed by the file's mapping, so the rows this proof reads
        and the model the functional proof builds share the same pages (one copy in memory, not two)."""
        with self.lock:  # the two proofs may ask for the same tensor at once: one mapping, not two
            if name not in self.loaded:
                self.loaded[name] = self.handles[self.where[name]].get_tensor(name)
            return self.loaded[name]

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        tensor = self.tensor(name)
        return _numpy(tensor[start:stop] if tensor.dim() else tensor)

    def close(self) -> list[weakref.ref]:
        handed_out = [weakref.ref(t.untyped_storage()) for t in self.loaded.values()]
        self.loaded.clear()
        self.handles.clear()
        return handed_out


class _H5File:
    """tf_model.h5: every dataset in the file, and the weights its layer_names / weight_names attributes list."""

    def __init__(self, path: Path):
        import h5py

        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise UserError(f"{path} is not a readable HDF5 file ({exc}); convert the checkpoint again") from exc
        self.path = path
        self.paths = [path]
        self.size = path.stat().st_size
        self.lock = threading.Lock()
        self.loaded: dict[str, np.ndarray] = {}
        self.problems: list[tuple[str, str, str]] = []  # (name, check, what is wrong)
        self.datasets: dict[str, Any] = {}
        self._walk(self.file, "", set())
        listed = [f"{layer}/{weight}" for layer in h5_attribute(self.file, "layer_names") if layer in self.file
                  for weight in h5_attribute(self.file[layer], "weight_names")]
        seen: set[str] = set()
        self.duplicates = sorted({name for name in listed if name in seen or seen.add(name)})
        self.unlisted = sorted(set(self.datasets) - set(listed))  # in the file, invisible to Keras' loader

    def _walk(self, group, prefix: str, seen: set) -> None:
        """Every dataset under every name a reader can open it by: a hard link gives a dataset a second name
        (visititems would show it once), a soft link a path to follow; an external link points into another
        file, which this proof does not read, a dangling link to nothing, and a virtual dataset or external
        storage keeps the values in other files. Those fail."""
        import h5py

        seen.add(group.id)
        for key in group:
            name = f"{prefix}{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                self.problems.append((name, "link", f"an external link into {link.filename}: not in this file"))
                continue
            item = group.get(key)
            if item is None:
                self.problems.append((name, "link", f"a link to {getattr(link, 'path', '?')}, which is not there"))
            elif isinstance(item, h5py.Dataset):
                self.datasets[name] = item
                layout = item.id.get_create_plist()
                if layout.get_layout() == h5py.h5d.VIRTUAL or layout.get_external_count():
                    self.problems.append((name, "storage", "its values are stored in other files (a virtual "
                                          "dataset or external storage), which this proof does not read"))
            elif isinstance(item, h5py.Group) and item.id not in seen:
                self._walk(item, f"{name}/", seen)

    def tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {name: (tuple(d.shape), _h5_dtype(d)) for name, d in self.datasets.items()}

    def array(self, name: str) -> np.ndarray:
        """The whole dataset as a 64-byte aligned array, kept: the functional proof hands the same arrays to
        TensorFlow (`validation.parity`), so the file is read once for both proofs. A contiguous, uncompressed
        dataset on a 64-byte boundary (what convert writes) is memory-mapped copy-on-write (nothing ever writes
        to it): no copy, no read call, the page cache's pages themselves; any other is read into memory."""
        with self.lock:  # the tensor proof and the functional proof may ask for the same dataset at once
            if name not in self.loaded:
                mapped = self._map(self.datasets[name])
                self.loaded[name] = mapped if mapped is not None else self.read(self.datasets[name])
            return self.loaded[name]

    def _map(self, dataset) -> np.ndarray | None:
        """The raw bytes are the values only for a standard little-endian IEEE float: HDF5 converts any other
        float type (another byte order, or a custom layout h5py still calls float32) when a reader reads it."""
        offset = dataset.id.get_offset()
        if (dataset.chunks is not None or dataset.compression is not None or offset is None or offset % 64
                or dataset.size == 0 or _h5_dtype(dataset, little_endian_only=True) is None):
            return None
        if offset + dataset.nbytes > self.size:
            raise UserError(f"{self.path}: dataset {dataset.name} ends past the end of the file (the file is "
                            "truncated); convert the checkpoint again")
        return np.memmap(self.path, dtype=dataset.dtype, mode="c", offset=offset, shape=dataset.shape)

    @staticmethod
    def read(dataset) -> np.ndarray:
        """Read through HDF5, which converts whatever the file stores into native floats, as Keras reads it."""
        array = aligned_empty(dataset.shape, dataset.dtype.newbyteorder("="))
        if array.size:
            dataset.read_direct(array)
        return array

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        array = self.array(name)
        return array[start:stop] if array.ndim else array

    def close(self) -> list[weakref.ref]:
        handed_out = [weakref.ref(a) for a in self.loaded.values()]
        self.loaded.clear()
        self.file.close()
        return handed_out


def aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `alignment`-byte boundary (TensorFlow's requirement for
    taking numpy memory over without a copy)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _h5_dtype(dataset, little_endian_only: bool = False) -> str | None:
    """'float32' / 'float16' for a dataset stored as a standard IEEE float (either byte order, unless
    `little_endian_only`); else a name that says what it is (None with `little_endian_only`)."""
    import h5py

    stored = dataset.id.get_type()
    standard = {"float32": (h5py.h5t.IEEE_F32LE, h5py.h5t.IEEE_F32BE),
                "float16": (h5py.h5t.IEEE_F16LE, h5py.h5t.IEEE_F16BE)}
    for name, (little, big) in standard.items():
        if stored.equal(little) or (stored.equal(big) and not little_endian_only):
            return name
    if little_endian_only:
        return None
    if dataset.dtype.kind == "f":
        return f"{dataset.dtype.str} (not a standard IEEE float type)"
    return str(dataset.dtype)


def _numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as numpy without a copy; bfloat16 as its uint16 bits (numpy has no bfloat16)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def open_format(directory: Path, fmt: str) -> _TorchFile | _SafetensorsFiles | _H5File:
    """One format's files, open for the proofs (and the functional proof's loader) to read."""
    if fmt == "pytorch":
        return _TorchFile(directory / "pytorch_model.bin")
    if fmt == "safetensors":
        return _SafetensorsFiles(directory)
    if fmt == "tf2":
        return _H5File(directory / "tf_model.h5")
    raise UserError(f"unknown format {fmt!r}; use pytorch, safetensors or tf2")


# -- what each file must hold -----------------------------------------------------------------------------------


def read_conversion_report(converted: Path) -> dict[str, Any]:
    """conversion_report.json of the folder, or {} where there is none (or it is not JSON)."""
    from converters.convert import REPORT_NAME

    try:
        report = json.loads((converted / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def plan_for(reader: CheckpointReader, converted: Path, config: RemBertConfig, report: dict[str, Any]
             ) -> ConversionPlan:
    """The conversion plan the folder was written with: what its conversion_report.json (`report`) says (MLM
    head, output embedding, task head), else what config.json's architecture implies."""
    import dataclasses

    from converters.mapping import HEAD_KINDS, find_task_head

    architectures = config.architectures or []
    mlm_head = report.get("mlm_head", "RemBertModel" not in architectures)
    output_embedding = (report.get("source") or {}).get("output_embedding")
    if output_embedding not in reader.entries:
        output_embedding = None
    kind = ((report.get("task_head") or {}).get("kind")
            or next((k for k, v in HEAD_KINDS.items() if v.architecture in architectures), None))
    try:
        task_head = find_task_head(reader.variables(), kind) if kind is not None else None
    except UserError:  # its messages speak of convert's --head, which verify has not got
        raise UserError(f"{converted} holds a {kind} task head that {reader.prefix} has no fitting variables for; "
                        "was it converted from this checkpoint?") from None
    config = dataclasses.replace(config)
    if task_head is not None:
        config.num_labels = task_head.num_labels
    next_step = (f"Was {converted} converted from {reader.prefix}? Its config.json must fit the checkpoint; "
                 f"`convert-rembert inspect {shlex.quote(str(reader.prefix))}` lists the checkpoint's variables")
    return plan_conversion(config, reader.variables(), mlm_head=mlm_head, output_embedding_name=output_embedding,
                           task_head=task_head, next_step=next_step)


def keras_root(config: RemBertConfig) -> str:
    from converters.h5_writer import KERAS_ROOTS, ROOT_WITH_MLM_HEAD

    return next((KERAS_ROOTS[a] for a in config.architectures or () if a in KERAS_ROOTS), ROOT_WITH_MLM_HEAD)


def expected_name(mapping: TensorMapping, fmt: str, root: str) -> str:
    if fmt != "tf2":
        return mapping.torch_name
    from converters.h5_writer import top_level_layer

    return f"{top_level_layer(mapping.tf_name)}/{root}/{mapping.tf_name}"


def _transposed(mapping: TensorMapping, fmt: str) -> bool:
    """Whether this format stores the source transposed (PyTorch Linear weights; BERT's [out, in] head
    weights in Keras' [in, out] kernel)."""
    return mapping.tf_transpose if fmt == "tf2" else mapping.transpose


def expected_shape(mapping: TensorMapping, fmt: str) -> tuple[int, ...]:
    return tuple(reversed(mapping.source_shape)) if _transposed(mapping, fmt) else mapping.source_shape


# -- the folder around the tensors -------------------------------------------------------------------------------

# config.json keys that shape the model transformers builds from the folder: they must be the checkpoint's own.
# The others convert writes (dropout, initializer range, token ids, label names) leave a loaded model's outputs
# as they are.
MODEL_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "input_embedding_size",
              "output_embedding_size", "intermediate_size", "max_position_embeddings", "type_vocab_size",
              "layer_norm_eps", "is_decoder", "add_cross_attention", "tie_word_embeddings")
# Keys convert never writes that change what transformers builds or returns, and the value that changes nothing.
FOREIGN_KEYS: dict[str, Any] = {"pruned_heads": {}, "return_dict": True, "torchscript": False,
                                "is_encoder_decoder": False, "output_attentions": False,
                                "output_hidden_states": False}
CONFIG_ROW = "config.json"
# What a loader of weights would pick up: any such file verify does not prove is a failure, not a silent skip.
WEIGHT_SUFFIXES = (".bin", ".safetensors", ".h5", ".msgpack", ".pt", ".pth", ".ckpt", ".npz", ".gguf", ".onnx")


def config_rows(config: RemBertConfig, expected: RemBertConfig, plan: ConversionPlan, report: dict[str, Any],
                source: str) -> list[TensorRow]:
    """config.json against the config convert derives from the checkpoint's own (`expected`): the model's sizes
    and structure, its class and labels count, the activation conversion_report.json records, and no key that
    would make transformers build or return something else. One row per key that differs, or one passing row."""
    found = {key: getattr(config, key) for key in MODEL_KEYS}
    wanted = {key: getattr(expected, key) for key in MODEL_KEYS}
    found["architectures"], wanted["architectures"] = list(config.architectures or ()), [plan.architecture]
    if plan.task_head is not None:
        found["num_labels"], wanted["num_labels"] = config.num_labels, plan.task_head.num_labels
    # The --activation the folder was made with, as its report records it; without a report, the original's.
    activation = report.get("activation")
    recorded = activation.get("hidden_act") if isinstance(activation, dict) else None
    found["hidden_act"], wanted["hidden_act"] = config.hidden_act, recorded or expected.hidden_act
    # transformers 5.x reads "dtype" before "torch_dtype": the weights' dtype is proven against torch_dtype.
    found["dtype"], wanted["dtype"] = config.extra.get("dtype", config.torch_dtype), config.torch_dtype
    for key, default in FOREIGN_KEYS.items():
        found[key], wanted[key] = config.extra.get(key, default), default
    rows = []
    for key in found:
        if found[key] == wanted[key]:
            continue
        if key in FOREIGN_KEYS:
            why = f"{found[key]!r}: convert never sets it, and only transformers' default {wanted[key]!r} is proven"
        else:
            why = f"{found[key]!r}, but the conversion of this checkpoint gives {wanted[key]!r}"
        rows.append(TensorRow(CONFIG, f"{CONFIG_ROW} {key}", source, "config", (), "-", 0, 0.0, None, False, why))
    return rows or [TensorRow(CONFIG, CONFIG_ROW, source, "config", (), "-", 0, 0.0, None, True,
                              f"the {len(found)} keys that shape the model agree with {source}")]


def unproven_files(directory: Path) -> list[TensorRow]:
    """Weight files in the folder that no format's proof reads (a sharded pytorch_model.bin, flax weights, a
    safetensors shard the index does not name...): a loader may take them, so each is a failing row."""
    read = {"pytorch_model.bin", "tf_model.h5", "model.safetensors"}
    index = directory / "model.safetensors.index.json"
    if not (directory / "model.safetensors").is_file() and index.is_file():
        read.add(index.name)
        with contextlib.suppress(UserError):  # the safetensors proof reports a broken index
            read.update(read_weight_index(index)[0].values())
    return [TensorRow(FOLDER, path.name, "-", "unproven", (), "-", 0, 0.0, None, False,
                      "a weight file verify does not read (it proves pytorch_model.bin, model.safetensors or the "
                      "shards its index names, and tf_model.h5): remove it, or it is published unproven")
            for path in sorted(directory.iterdir()) if path.is_file() and path.name not in read
            and (path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json"))]


# -- the proof --------------------------------------------------------------------------------------------------


def prove_format(reader: CheckpointReader, plan: ConversionPlan, handle, fmt: str, dtype: str, root: str,
                 progress: Update) -> tuple[list[TensorRow], dict[str, str]]:
    """Rows for one open format, and for every mapped tensor a digest of its values in the TF1 layout
    ("source" when the values are the expected ones), which `agreement_rows` compares across formats."""
    rows: list[TensorRow] = []
    digests: dict[str, str] = {}
    present = handle.tensors()
    expected = {expected_name(m, fmt, root): m for m in plan.mappings}
    for name in sorted(set(present) - set(expected)):
        shape, stored = present[name]
        rows.append(TensorRow(fmt, name, "-", "extra", shape, stored, 0, 0.0, None, False,
                              "not in the mapping table: no checkpoint variable belongs here"))
    for duplicate in handle.duplicates:
        rows.append(TensorRow(fmt, duplicate, "-", "duplicate", (), "-", 0, 0.0, None, False, "held twice"))
    for name, check, problem in handle.problems:
        rows.append(TensorRow(fmt, name, "-", check, (), "-", 0, 0.0, None, False, problem))
    for name in getattr(handle, "unlisted", []):
        if name in expected:
            rows.append(TensorRow(fmt, name, expected[name].source, "unlisted", present[name][0], present[name][1],
                                  0, 0.0, None, False, "not listed in weight_names: Keras' loader cannot see it"))
    mappings = sorted(plan.mappings, key=lambda m: (reader.entries[m.source].shard, reader.entries[m.source].offset))
    done_bytes, total_bytes = 0, sum(reader.entries[m.source].nbytes for m in mappings)
    for mapping in mappings:
        name = expected_name(mapping, fmt, root)
        shape = expected_shape(mapping, fmt)
        progress(done_bytes / max(total_bytes, 1))
        done_bytes += reader.entries[mapping.source].nbytes
        if name not in present:
            rows.append(TensorRow(fmt, name, mapping.source, "missing", shape, dtype, 0, 0.0, None, False,
                                  "the file lacks it"))
            digests[name] = "missing"
            continue
        have_shape, have_dtype = present[name]
        if have_shape != shape:
            rows.append(TensorRow(fmt, name, mapping.source, "shape", have_shape, have_dtype, 0, 0.0, None, False,
                                  f"shape {list(have_shape)}, expected {list(shape)}"))
            digests[name] = f"shape {have_shape}"
            continue
        if have_dtype != dtype:
            rows.append(TensorRow(fmt, name, mapping.source, "dtype", shape, have_dtype, 0, 0.0, None, False,
                                  f"dtype {have_dtype}, expected {dtype}"))
            digests[name] = f"dtype {have_dtype}"
            continue
        row, digest = _compare_values(reader, mapping, handle, fmt, name, shape, dtype)
        rows.append(row)
        digests[name] = digest
    return rows, {m.source: digests[expected_name(m, fmt, root)] for m in plan.mappings}


def _compare_values(reader: CheckpointReader, mapping: TensorMapping, handle, fmt: str, name: str,
                    shape: tuple[int, ...], dtype: str) -> tuple[TensorRow, str]:
    differing, max_abs, first = 0, 0.0, None
    transposed = _transposed(mapping, fmt)
    entry = reader.entries[mapping.source]
    limit = entry.nbytes if mapping.read_whole else DEFAULT_CHUNK_BYTES
    marks: list[str] = []  # per slice: "=" or a digest of what the file holds there (TF1 layout)
    start = 0
    for chunk in reader.iter_rows(mapping.source, max_bytes=max(limit, 1)):
        want = cast(chunk, mapping.source_dtype, dtype)
        rows = chunk.shape[0] if chunk.ndim else 1
        if transposed:  # the whole [out, in] kernel
            want = transpose(want)
            have = np.asarray(handle.rows(name, 0, shape[0]))
        else:
            have = np.asarray(handle.rows(name, start, start + rows) if shape else handle.rows(name, 0, 0))
        n, worst, where = _differences(have, want, dtype)
        if n:
            if first is None and where is not None:
                first = tuple(int(i) for i in where)
                if first and not transposed:
                    first = (first[0] + start, *first[1:])
            differing += n
            max_abs = max(max_abs, worst)
            held = have.T if transposed else have
            marks.append(hashlib.blake2b(np.ascontiguousarray(held).tobytes(), digest_size=16).hexdigest())
        else:
            marks.append("=")
        start += rows
    passed = differing == 0
    digest = "source" if passed else hashlib.blake2b("/".join(marks).encode(), digest_size=16).hexdigest()
    detail = "" if passed else f"{differing} value(s) differ from the source, first at {list(first or ())}"
    return (TensorRow(fmt, name, mapping.source, "values", shape, dtype, differing, max_abs, first, passed, detail),
            digest)


def _differences(have: np.ndarray, want: np.ndarray, dtype: str) -> tuple[int, float, tuple | None]:
    """Compare bits (so -0.0 vs 0.0 and NaN payloads count); for differing elements, the largest |diff|."""
    if have.shape != want.shape:
        return int(max(have.size, want.size)), float("inf"), None
    if _same_bytes(have, want):
        return 0, 0.0, None
    bits = {4: np.uint32, 2: np.uint16}[want.dtype.itemsize]
    unequal = have.view(bits) != want.view(bits)
    as_float = (lambda a: to_float32(a, "bfloat16")) if dtype == "bfloat16" else (lambda a: a.astype(np.float32))
    diff = np.abs(as_float(have[unequal]).astype(np.float64) - as_float(want[unequal]).astype(np.float64))
    worst = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf")
    if np.isnan(diff).any():
        worst = float("inf")
    return int(unequal.sum()), worst, tuple(np.argwhere(unequal)[0])


def _same_bytes(have: np.ndarray, want: np.ndarray) -> bool:
    """Bit equality, compared 8 bytes at a time where the layout allows (half the work of 4-byte words)."""
    have, want = np.ascontiguousarray(have), np.ascontiguousarray(want)
    if have.nbytes % 8 == 0 and have.ctypes.data % 8 == 0 and want.ctypes.data % 8 == 0:
        return bool(np.array_equal(have.reshape(-1).view(np.uint64), want.reshape(-1).view(np.uint64)))
    return bool(np.array_equal(have.reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8)))


def agreement_rows(plan: ConversionPlan, digests: dict[str, dict[str, str]]) -> list[TensorRow]:
    """One row per mapped tensor: do all formats hold the same values (whatever the source says)?"""
    if len(digests) < 2:
        return []
    rows = []
    for mapping in plan.mappings:
        held = {fmt: values[mapping.source] for fmt, values in digests.items()}
        agree = len(set(held.values())) == 1
        detail = "" if agree else "; ".join(
            f"{fmt}: {'as the source' if d == 'source' else d if d in ('missing',) or ' ' in d else 'differs'}"
            for fmt, d in held.items())
        rows.append(TensorRow(AGREEMENT, mapping.torch_name, mapping.source, "agree", mapping.target_shape, "-",
                              0, 0.0, None, agree, detail))
    return rows


def iter_formats(converted: Path, formats: list[str], *, release: bool = False) -> Iterator[tuple[str, Any]]:
    """Open each format in turn, closing the previous one first: one format's files mapped at a time.

    `release`: once a format is closed, drop its files from the page cache, so that the next format reuses those
    pages (bundle's freshly written files: see converters.writers.DirectFile for why new pages cost)."""
    for fmt in formats:
        handle = open_format(converted, fmt)
        try:
            yield fmt, handle
        finally:
            # The file stays mapped (and its pages count as ours) until the last tensor viewing it is freed. The
            # proofs drop theirs before this, but a model held in a reference cycle keeps its tensors until the
            # collector runs; its full pass costs 0.3-0.4 s with torch and TensorFlow loaded, so it runs only when
            # something the handle gave out is still alive and another format is to be mapped. (For torch the
            # handle watches storages: a model's parameters are new tensor objects on the same storage.)
            handed_out, paths = handle.close(), handle.paths
            del handle
            if fmt != formats[-1] and any(ref() is not None for ref in handed_out):
                gc.collect()
            if release:
                for path in paths:
                    drop_cached_file(path)
