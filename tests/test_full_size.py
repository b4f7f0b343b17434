"""Full-size checks: the real RemBERT shapes (994.6 M values, 3.98 GB), never run in CI.

Run them with `pytest -m large` after making the checkpoint with `benchmarks/make_full_checkpoint.py`
(REMBERT_FULL_CHECKPOINT names another place than ../bench-data/full). Speed is measured by
benchmarks/bench_convert.py, not here, and so is peak memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from converters.convert import ConvertOptions, convert_checkpoint
from converters.tf1_checkpoint import CheckpointReader

FULL_CHECKPOINT = Path(os.environ.get("REMBERT_FULL_CHECKPOINT",
                                      Path(__file__).resolve().parent.parent.parent / "bench-data" / "full"))

pytestmark = pytest.mark.large


@pytest.fixture(scope="module")
def full_checkpoint() -> Path:
    if not (FULL_CHECKPOINT / "bert_config.json").is_file():
        pytest.skip(f"no full-size checkpoint at {FULL_CHECKPOINT}; make it with benchmarks/make_full_checkpoint.py")
    return FULL_CHECKPOINT


def test_full_size_safetensors_holds_every_source_tensor_bit_for_bit(full_checkpoint, tmp_path):
    from safetensors import safe_open

    result = convert_checkpoint(full_checkpoint, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    with CheckpointReader(full_checkpoint) as reader, \
            safe_open(tmp_path / "out" / "model.safetensors", "np") as converted:
        assert set(converted.keys()) == {m.torch_name for m in result.plan.mappings}
        for mapping in result.plan.mappings:
            if mapping.transpose:
                np.testing.assert_array_equal(converted.get_tensor(mapping.torch_name),
                                              reader.read(mapping.source).T)
                continue
            stored = converted.get_slice(mapping.torch_name)
            row = 0
            for chunk in reader.iter_rows(mapping.source):
                np.testing.assert_array_equal(stored[row:row + len(chunk)], chunk)
                row += len(chunk)
            assert row == mapping.source_shape[0]
