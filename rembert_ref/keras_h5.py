"""How Keras (and Hugging Face's TF loader after it) reads the name lists of an HDF5 weight file.

Kept apart from `tf_model.py` so that the tensor proof, which must see exactly the names the loader sees, can use
it without importing TensorFlow.
"""

from __future__ import annotations

from typing import Any


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
