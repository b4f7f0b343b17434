"""The native tensor-bundle reader against checkpoints written by TensorFlow itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.errors import UserError
from converters.tf1_checkpoint import CheckpointReader, resolve_checkpoint
from converters.writers import cast, to_float32


def _save_with_tensorflow(prefix: Path, values: dict[str, object], dtypes: dict[str, str] | None = None) -> None:
    import tensorflow as tf

    dtypes = dtypes or {}
    names = sorted(values)
    tensors = [tf.constant(values[n], dtype=getattr(tf, dtypes.get(n, "float32"))) for n in names]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


@pytest.fixture(scope="module")
def mixed_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    values = {
        "a/kernel": rng.standard_normal((11, 5)),
        "b/bias": rng.standard_normal(3),
        "c/half": rng.standard_normal((6, 2)),
        "d/bf16": rng.standard_normal((4, 9)),
        "global_step": np.int64(1234),
        "e/empty": np.zeros((0, 4)),
    }
    dtypes = {"c/half": "float16", "d/bf16": "bfloat16", "global_step": "int64"}
    prefix = tmp_path_factory.mktemp("mixed") / "model.ckpt-5"
    _save_with_tensorflow(prefix, values, dtypes)
    return prefix, values


def test_reads_every_dtype_exactly(mixed_ckpt):
    prefix, values = mixed_ckpt
    with CheckpointReader(prefix) as reader:
        assert reader.variables() == {
            "a/kernel": ((11, 5), "float32"), "b/bias": ((3,), "float32"), "c/half": ((6, 2), "float16"),
            "d/bf16": ((4, 9), "bfloat16"), "global_step": ((), "int64"), "e/empty": ((0, 4), "float32"),
        }
        np.testing.assert_array_equal(reader.read("a/kernel"), values["a/kernel"].astype(np.float32))
        np.testing.assert_array_equal(reader.read("c/half"), values["c/half"].astype(np.float16))
        assert reader.read("global_step") == 1234
        assert reader.read("e/empty").shape == (0, 4)
        # bfloat16 comes as raw bits; TensorFlow's own cast is the independent reference.
        import tensorflow as tf

        expected = tf.cast(tf.cast(values["d/bf16"], tf.bfloat16), tf.float32).numpy()
        np.testing.assert_array_equal(to_float32(reader.read("d/bf16"), "bfloat16"), expected)


def test_row_slices_cover_the_tensor_in_order(mixed_ckpt):
    prefix, values = mixed_ckpt
    with CheckpointReader(prefix) as reader:
        chunks = list(reader.iter_rows("a/kernel", max_bytes=3 * 5 * 4))
    assert [c.shape for c in chunks] == [(3, 5), (3, 5), (3, 5), (2, 5)]
    np.testing.assert_array_equal(np.concatenate(chunks), values["a/kernel"].astype(np.float32))


def test_bfloat16_cast_matches_torch_rounding():
    import torch

    values = np.random.default_rng(3).standard_normal(10_000).astype(np.float32) * 100
    values[:3] = [np.nan, np.inf, -0.0]
    ours = cast(values, "float32", "bfloat16")
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours[1:], theirs[1:])
    assert np.isnan(to_float32(ours[:1], "bfloat16")).all()


def test_multi_shard_checkpoint(tmp_path):
    from converters.synthetic import synthetic_variables, write_synthetic_checkpoint
    from tests.conftest import TINY_ORIGINAL_CONFIG

    prefix = write_synthetic_checkpoint(tmp_path, TINY_ORIGINAL_CONFIG, seed=4, num_shards=3, optimizer_slots=False)
    expected = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=4)
    with CheckpointReader(tmp_path) as reader:
        assert reader.prefix == prefix
        assert reader.num_shards == 3
        assert len({e.shard for e in reader.entries.values()}) == 3
        for name, value in expected.items():
            np.testing.assert_array_equal(reader.read(name), value)


def test_resolves_prefix_index_and_directory(tiny_ckpt):
    assert resolve_checkpoint(tiny_ckpt.prefix) == tiny_ckpt.prefix
    assert resolve_checkpoint(f"{tiny_ckpt.prefix}.index") == tiny_ckpt.prefix
    assert resolve_checkpoint(tiny_ckpt.directory) == tiny_ckpt.prefix


def test_checkpoint_file_with_foreign_absolute_path(tiny_ckpt, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_ckpt.directory, copy)
    (copy / "checkpoint").write_text('model_checkpoint_path: "/training/host/run7/model.ckpt-3"\n')
    assert resolve_checkpoint(copy) == copy / "model.ckpt-3"


def _copy(tiny_ckpt, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_ckpt.directory, copy)
    return copy / tiny_ckpt.prefix.name


def test_crc_mismatch_is_reported(tiny_ckpt, tmp_path):
    prefix = _copy(tiny_ckpt, tmp_path)
    reader = CheckpointReader(prefix)
    entry = reader.entries["bert/encoder/layer_1/intermediate/dense/kernel"]
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 17] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"checksum mismatch in bert/encoder/layer_1/intermediate/dense/kernel"):
        reader.read(entry.name)
    # Other tensors still read: only the damaged one fails.
    reader.read("bert/embeddings/word_embeddings")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupt_index_is_a_user_error(tiny_ckpt, tmp_path, damage):
    prefix = _copy(tiny_ckpt, tmp_path)
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(b"not an index at all" * 10)
    else:
        raw[40] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checkpoint index .* (corrupt|truncated)"):
        CheckpointReader(prefix)


def test_missing_data_shard(tiny_ckpt, tmp_path):
    prefix = _copy(tiny_ckpt, tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(UserError, match=r"data shard model.ckpt-3.data-00000-of-00001 is missing"):
        CheckpointReader(prefix)


def test_truncated_data_shard(tiny_ckpt, tmp_path):
    prefix = _copy(tiny_ckpt, tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:100])
    reader = CheckpointReader(prefix)
    last = max(reader.entries.values(), key=lambda e: e.offset)
    with pytest.raises(UserError, match="truncated"):
        reader.read(last.name)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no TF1 checkpoint"):
        CheckpointReader(tmp_path / "nothing")
    with pytest.raises(UserError, match="no `checkpoint` file and 0 .index files"):
        CheckpointReader(tmp_path)
