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
from converters.mapping import ENCODER, HEAD, MLM, POOLER, RULES, TensorMapping
from converters.writers import CacheRelease, Writer

TF_WEIGHTS_NAME = "tf_model.h5"
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
    def __init__(self, directory: Path, mappings: Sequence[TensorMapping], dtype: str,
                 architecture: str = "RemBertForMaskedLM"):
        super().__init__(directory, mappings, dtype)
        if dtype not in H5_DTYPES:
            raise UserError(f"tf_model.h5 cannot hold {dtype} (HDF5 has no such type); "
                            f"use --dtype {' or '.join(H5_DTYPES)} for the tf2 format")
        import h5py

        self.root = KERAS_ROOTS[architecture]
        self.path = Path(directory) / TF_WEIGHTS_NAME
        ordered = sorted(self.mappings, key=keras_order)
        self.layers = list(dict.fromkeys(top_level_layer(m.tf_name) for m in ordered))
        # Every dataset starts on a 64-byte boundary in the file, so verify can map it and hand the mapping to
        # TensorFlow without a copy (TensorFlow requires 64-byte aligned buffers); Keras reads it as usual.
        self.file = h5py.File(self.path, "w", track_order=False, alignment_threshold=1, alignment_interval=64)
        self.cache = CacheRelease(self.path)
        save_attribute(self.file, "layer_names", [name.encode("utf-8") for name in self.layers])
        self.file.attrs["backend"] = b"tensorflow"
        for layer in self.layers:
            group = self.file.create_group(layer)
            save_attribute(group, "weight_names", [self.stored_name(m).encode("utf-8") for m in ordered
                                                   if top_level_layer(m.tf_name) == layer])
        self.dataset = None
        self.current: str | None = None
        self.row = self.expected_rows = 0

    def stored_name(self, mapping: TensorMapping) -> str:
        return f"{self.root}/{mapping.tf_name}"

    def add(self, mapping: TensorMapping, chunk: np.ndarray) -> None:
        if self.current != mapping.tf_name:
            self._finish_current()
            group = self.file[top_level_layer(mapping.tf_name)]
            # Keras kernels are [in, out] like TF1 dense kernels; BERT's output_weights arrive transposed.
            self.dataset = group.create_dataset(self.stored_name(mapping), shape=mapping.tf_shape,
                                                dtype=H5_DTYPES[self.dtype], track_times=False)
            self.current, self.row, self.expected_rows = mapping.tf_name, 0, mapping.tf_shape[0]
        rows = chunk.shape[0] if chunk.ndim else 1
        self.dataset[self.row:self.row + rows] = chunk
        self.row += rows
        self.cache.advance(self.releasable(self.path, os.fstat(self.cache.fd).st_size))

    def _finish_current(self) -> None:
        if self.current is not None and self.row != self.expected_rows:
            raise RuntimeError(f"{self.current}: wrote {self.row} of {self.expected_rows} rows")

    def close(self) -> list[Path]:
        self._finish_current()
        self.file.close()
        self.cache.close(None if self.hashed_bytes is None else self.hashed_bytes(self.path))
        return [self.path]

    def abort(self) -> None:
        try:
            self.file.close()
        except Exception:  # the staging directory is deleted anyway; the original error matters
            pass
        finally:
            self.cache.abort()
