"""rembert_ref/weight_files.py on its own: Keras' split attributes, and what a sharded checkpoint's index may be."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from rembert_ref.errors import UserError
from rembert_ref.weight_files import h5_attribute, read_weight_index


def test_h5_attribute_reads_the_whole_attribute_or_its_parts_in_order(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"rembert", b"mlm___cls"])
        f.attrs["weight_names1"] = np.array([b"c"])  # Keras' split: name0, name1, ... read in that order
        f.attrs["weight_names0"] = np.array([b"a", b"b"])
        f.attrs["weight_names3"] = np.array([b"after a gap"])  # not read: the parts stop at the first one missing
        f.create_group("empty")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert h5_attribute(f, "layer_names") == ["rembert", "mlm___cls"]
        assert h5_attribute(f, "weight_names") == ["a", "b", "c"]
        assert h5_attribute(f["empty"], "weight_names") == []


def test_read_weight_index_returns_the_map_and_the_metadata(tmp_path):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {"total_size": 12, "dtype": "bfloat16"},
                                "weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}))
    assert read_weight_index(path) == ({"a.weight": "model-00001-of-00002.safetensors"},
                                       {"total_size": 12, "dtype": "bfloat16"})
    path.write_text(json.dumps({"weight_map": {}}))
    assert read_weight_index(path) == ({}, None)


@pytest.mark.parametrize("content", [
    None,  # no such file
    "{\"weight_map\": ",  # cut short: not JSON
    "{}",  # no weight_map
    "[\"weight_map\"]",  # not an object
    "{\"weight_map\": {\"a.weight\": null}}",  # a name without a file
])
def test_an_index_that_cannot_be_read_is_one_user_error_naming_it(tmp_path, content):
    path = tmp_path / "pytorch_model.bin.index.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=f"^{re.escape(str(path))} is not a valid index.*convert the checkpoint again$"):
        read_weight_index(path)
