"""`tf_model.h5` in the layout Hugging Face transformers' TF `from_pretrained` reads, written with h5py.

Keras 2's `save_weights` layout, which `transformers.modeling_tf_utils.load_tf_weights_from_h5` reads:

    /                      attrs: layer_names = [b"rembert", b"mlm___cls"], backend = b"tensorflow"
    /rembert               attrs: weight_names = [b"tf_rem_bert_for_masked_lm/rembert/embeddings/...:0", ...]
    /rembert/tf_rem_bert_for_masked_lm/rembert/embeddings/word_embeddings/weight:0     dataset [V, E]
    /mlm___cls/tf_rem_bert_for_masked_lm/mlm___cls/predictions/decoder/weight:0       dataset [V, O]

One group per top-level Keras layer; each stored weight name starts with the model's root scope, which the
loader drops, so the same file loads into every TFRemBert* class (`tf_rem_bert_model` is the root with
--no-mlm-head). Names below the root come from the mapping table (`rule.tf`). Kernels stay [in, out] as in
the TF1 checkpoint, so they stream in row slices untransposed; the one exception is a run_classifier head's
`output_weights` [num_labels, hidden] (`tf_transpose` in the table), which Keras' Dense needs as [hidden, num_labels].

Deterministic bytes: no timestamps (track_times=False), no creation-order tracking, names in table order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rembert_ref.errors import UserError
from rembert_ref.weight_files import TF_WEIGHTS_NAME
from converters.mapping import ENCODER, HEAD, MLM, POOLER, RULES, TensorMapping
from converters.writers import DirectFile, Writer

H5_DTYPES = {"float32": np.float32, "float16": np.float16}  # HDF5 has no bfloat16 type
HDF5_OBJECT_HEADER_LIMIT = 64512  # Keras splits larger attributes into name0, name1, ...
ROOT_WITH_MLM_HEAD, ROOT_BARE = "tf_rem_bert_for_masked_lm", "tf_rem_bert_model"
# Keras' automatic root scope of each transformers TF class (the loader drops it; kept for faithful names).
# A task head's layer is the class's own: `classifier` or `qa_outputs` at the top level, like `rembert`.
KERAS_ROOTS = {
    "RemBertModel": ROOT_BARE,
    "RemBertForMaskedLM": ROOT_WITH_MLM_HEAD,
    "RemBertForSequenceClassification": "tf_rem_bert_for_sequence_classification",
    "RemBertForTokenClassification": "tf_rem_bert_for_token_classification",
    "RemBertForQuestionAnswering": "tf_rem_bert_for_question_answering",
}
PARTS = (ENCODER, POOLER, MLM, HEAD)


def keras_order(mapping: TensorMapping) -> tuple:
    """Close to Keras' build order (embeddings, layer by layer, pooler, MLM head), in table order within a
    layer. The loader matches by name; a fixed order only keeps the bytes reproducible and the file readable."""
    layer = re.search(r"/layer_\._(\d+)/", mapping.tf_name)
    rule_index = next((i for i, rule in enumerate(RULES) if rule.source == mapping.rule), len(RULES))
    return (PARTS.index(mapping.part), int(layer.group(1)) if layer else -1, rule_index, mapping.tf_name)


def top_level_layer(tf_name: str) -> str:
    return tf_name.split("/", 1)[0]  # "rembert" or "mlm___cls"


def save_attribute(group, name: str, values: list[bytes]) -> None:
    """Keras' save_attributes_to_hdf5_group: one fixed-width bytes array, split if it would not fit."""
    data = np.asarray(values)
    chunks = 1
    while any(part.nbytes > HDF5_OBJECT_HEADER_LIMIT for part in np.array_split(data, chunks)):
        chunks += 1
    if chunks == 1:
        group.attrs[name] = data
    else:
        for k, part in enumerate(np.array_split(data, chunks)):
            group.attrs[f"{name}{k}"] = part


class H5Writer(Writer):
    """tf_model.h5 in two steps. h5py lays the file out: groups, attributes and every dataset, contiguous and
    allocated at creation but never written (a sparse layout file in the staging folder). Then the final file is
    streamed front to back past the page cache (`DirectFile`, hashed on the way when `checksums` is set): the
    layout's own bytes up to each dataset, then that dataset's values as they arrive. That is byte for byte the
    file h5py would have written into the same layout (tests compare), without the 4 GB of page cache that
    writing through h5py fills (`DirectFile` says why that matters)."""

    def __init__(self, directory: Path, mappings: Sequence[TensorMapping], dtype: str,
                 architecture: str = "RemBertForMaskedLM", checksums: bool = False):
        super().__init__(directory, mappings, dtype)
        if dtype not in H5_DTYPES:
            raise UserError(f"tf_model.h5 cannot hold {dtype} (HDF5 has no such type); "
                            f"use --dtype {' or '.join(H5_DTYPES)} for the tf2 format")
        self.root = KERAS_ROOTS[architecture]
        self.path = Path(directory) / TF_WEIGHTS_NAME
        self.layout_path = Path(directory) / f".{TF_WEIGHTS_NAME}.layout"
        self.regions, self.layout_size = self._lay_out()
        self.layout_fd = os.open(self.layout_path, os.O_RDONLY)
        try:
            self.out = DirectFile(self.path, digest=checksums)
        except BaseException:
            self._remove_layout()
            raise
        self.current: str | None = None
        self.left = 0  # bytes of the current dataset still to come
        self.done: set[str] = set()

    def stored_name(self, mapping: TensorMapping) -> str:
        return f"{self.root}/{mapping.tf_name}"

    def _lay_out(self) -> tuple[dict[str, tuple[int, int]], int]:
        """Write the layout file; return each dataset's (offset, size) by its Keras name, and the file size."""
        import h5py

        ordered = sorted(self.mappings, key=keras_order)
        layers = list(dict.fromkeys(top_level_layer(m.tf_name) for m in ordered))
        regions: dict[str, tuple[int, int]] = {}
        # Every dataset starts on a 64-byte boundary in the file, so verify can map it and hand the mapping to
        # TensorFlow without a copy (TensorFlow requires 64-byte aligned buffers); Keras reads it as usual.
        with h5py.File(self.layout_path, "w", track_order=False, alignment_threshold=1,
                       alignment_interval=64, fs_strategy="none") as file:
            save_attribute(file, "layer_names", [name.encode("utf-8") for name in layers])
            file.attrs["backend"] = b"tensorflow"
            for layer in layers:
                group = file.create_group(layer)
                save_attribute(group, "weight_names", [self.stored_name(m).encode("utf-8") for m in ordered
                                                       if top_level_layer(m.tf_name) == layer])
            # Created in the order the values arrive, so that the file can be written front to back.
            for mapping in self.mappings:
                creation = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                creation.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # its place in the file, now
                # Keras kernels are [in, out] like TF1 dense kernels; BERT's output_weights arrive transposed.
                dataset = file[top_level_layer(mapping.tf_name)].create_dataset(
                    self.stored_name(mapping), shape=mapping.tf_shape, dtype=H5_DTYPES[self.dtype],
                    track_times=False, dcpl=creation, fill_time="never")
                regions[mapping.tf_name] = (dataset.id.get_offset() or 0, dataset.id.get_storage_size())
        size = os.stat(self.layout_path).st_size
        end = 0
        for name, (offset, nbytes) in regions.items():  # in creation order
            if nbytes and offset < end:
                raise RuntimeError(f"HDF5 placed {name} before the dataset created ahead of it")
            end = max(end, offset + nbytes)
        if end > size:
            raise RuntimeError(f"HDF5's layout file ends at {size}, inside a dataset (which ends at {end})")
        return regions, size

    def _copy_layout(self, stop: int) -> None:
        """The layout's own bytes (headers, attributes, group tables) from where the output is up to `stop`."""
        while self.out.tell() < stop:
            piece = os.pread(self.layout_fd, min(stop - self.out.tell(), DirectFile.BUFFER_BYTES), self.out.tell())
            if not piece:
                raise RuntimeError(f"{self.layout_path.name} ends at {self.out.tell()}, before {stop}")
            self.out.write(piece)

    def add(self, mapping: TensorMapping, chunk: np.ndarray) -> None:
        if self.current != mapping.tf_name:
            self._finish_current()
            offset, self.left = self.regions[mapping.tf_name]
            if offset < self.out.tell() and self.left:
                raise RuntimeError(f"{mapping.tf_name} arrived after the data that follows it in the file")
            self._copy_layout(offset)
            self.current = mapping.tf_name
        data = memoryview(np.ascontiguousarray(chunk, dtype=H5_DTYPES[self.dtype])).cast("B")
        if len(data) > self.left:
            raise RuntimeError(f"{mapping.tf_name}: {len(data) - self.left} bytes more than its dataset holds")
        self.out.write(data)
        self.left -= len(data)

    def _finish_current(self) -> None:
        if self.current is None:
            return
        if self.left:
            raise RuntimeError(f"{self.current}: {self.left} bytes short of its dataset")
        self.done.add(self.current)

    def close(self) -> list[Path]:
        self._finish_current()
        missing = [name for name, (_, nbytes) in self.regions.items() if nbytes and name not in self.done]
        if missing:
            raise RuntimeError(f"no values arrived for {', '.join(missing)}")
        self._copy_layout(self.layout_size)
        self._close_file(self.out)
        self._remove_layout()
        return [self.path]

    def abort(self) -> None:
        try:
            self.out.abort()
        finally:
            self._remove_layout()

    def _remove_layout(self) -> None:
        os.close(self.layout_fd)
        self.layout_path.unlink(missing_ok=True)
