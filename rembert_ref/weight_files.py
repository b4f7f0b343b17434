"""What a loader reads from a weight file's own index or name lists, shared by the models' loaders and the proof.

Kept apart from `tf_model.py` and `torch_model.py` so that the tensor proof, which must see exactly the names a
loader sees, can use it without importing TensorFlow or torch.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rembert_ref.errors import UserError

TF_WEIGHTS_NAME = "tf_model.h5"  # Hugging Face's name for a TF model's weights


def h5_attribute(group: Any, name: str) -> list[str]:
    """The list stored as attribute `name` of an h5py group or file, as Keras' `load_attributes_from_hdf5_group`
    reads it: Keras splits a list above HDF5's 64 KB header limit into `name0`, `name1`, ..., and reads those
    only when `name` itself is absent."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, k = [], 0
        while f"{name}{k}" in group.attrs:
            chunks.append(group.attrs[f"{name}{k}"])
            k += 1
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for chunk in chunks for n in chunk]


def read_weight_index(path: str | os.PathLike) -> tuple[dict[str, str], Any]:
    """A sharded checkpoint's `*.index.json`: its weight_map {tensor name: shard file name} and its metadata
    (None when absent). Anything else is one UserError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
        weight_map = index["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid index with a weight_map ({exc}); convert the checkpoint "
                        "again") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise UserError(f"{path} is not a valid index: its weight_map must map tensor names to shard file names; "
                        "convert the checkpoint again")
    return weight_map, index.get("metadata")
