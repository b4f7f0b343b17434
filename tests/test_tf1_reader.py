"""The native tensor-bundle reader against checkpoints written by TensorFlow itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rembert_ref.errors import UserError
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
        "f/double": rng.standard_normal((3, 7)),
    }
    dtypes = {"c/half": "float16", "d/bf16": "bfloat16", "global_step": "int64", "f/double": "float64"}
    prefix = tmp_path_factory.mktemp("mixed") / "model.ckpt-5"
    _save_with_tensorflow(prefix, values, dtypes)
    return prefix, values


def test_reads_every_dtype_exactly(mixed_ckpt):
    prefix, values = mixed_ckpt
    with CheckpointReader(prefix) as reader:
        assert reader.variables() == {
            "a/kernel": ((11, 5), "float32"), "b/bias": ((3,), "float32"), "c/half": ((6, 2), "float16"),
            "d/bf16": ((4, 9), "bfloat16"), "global_step": ((), "int64"), "e/empty": ((0, 4), "float32"),
            "f/double": ((3, 7), "float64"),
        }
        np.testing.assert_array_equal(reader.read("a/kernel"), values["a/kernel"].astype(np.float32))
        np.testing.assert_array_equal(reader.read("c/half"), values["c/half"].astype(np.float16))
        assert reader.read("global_step") == 1234
        assert reader.read("e/empty").shape == (0, 4)
        np.testing.assert_array_equal(reader.read("f/double"), values["f/double"])  # float64 stored exactly
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


@pytest.mark.filterwarnings("error::RuntimeWarning")  # NaN payloads included: the cast is silent
@pytest.mark.parametrize("with_ml_dtypes", [True, False])
def test_bfloat16_cast_matches_torch_rounding(with_ml_dtypes, monkeypatch):
    """Both casts: ml_dtypes' (it comes with TensorFlow) and the numpy one a base install runs."""
    import sys

    import torch

    if not with_ml_dtypes:
        monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` raises ImportError
    ties = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0x7F7FFFFF, 0x00008000, 0x80018000],
                    np.uint32).view(np.float32)  # halfway cases (to even, both ways), overflow, subnormals
    special = np.array([np.nan, np.inf, -0.0], np.float32)
    values = np.concatenate([special, ties, np.random.default_rng(3).standard_normal(10_000).astype(np.float32) * 100])
    ours = cast(values, "float32", "bfloat16")
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours[1:], theirs[1:])  # the NaN's payload is ours to choose
    assert np.isnan(to_float32(ours[:1], "bfloat16")).all()
    # NaNs whose payload lies in the bits bfloat16 drops, of either sign: rounding their bits alone would give an
    # infinity or (carrying out of the top) zero; they stay NaN, as torch's own cast keeps them.
    nans = np.array([0x7F800001, 0x7F80FFFF, 0x7FFFFFFF, 0xFF800001, 0xFFFFFFFF], np.uint32).view(np.float32)
    assert torch.from_numpy(nans).to(torch.bfloat16).isnan().all()
    assert np.isnan(to_float32(cast(nans, "float32", "bfloat16"), "bfloat16")).all()


def test_multi_shard_checkpoint(tmp_path):
    from testkit.synthetic_checkpoint import synthetic_variables, write_synthetic_checkpoint
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


def test_a_reader_checks_each_stored_block_once_and_a_mismatch_every_time(tiny_ckpt, tmp_path, monkeypatch):
    import converters.tf1_checkpoint as tf1

    extended = []
    real_extend = tf1.google_crc32c.extend
    monkeypatch.setattr(tf1.google_crc32c, "extend", lambda crc, data: extended.append(len(data)) or
                        real_extend(crc, data))
    name = "bert/encoder/layer_1/intermediate/dense/kernel"
    reader = CheckpointReader(tiny_ckpt.prefix)
    first = reader.read(name)
    assert sum(extended) == reader.entries[name].nbytes
    extended.clear()
    np.testing.assert_array_equal(reader.read(name), first)  # read again: same values, its CRC not recomputed
    assert extended == []
    CheckpointReader(tiny_ckpt.prefix).read(name)  # another reader checks for itself
    assert sum(extended) == reader.entries[name].nbytes

    prefix = _copy(tiny_ckpt, tmp_path)  # a block that fails is checked (and fails) on every read
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[reader.entries[name].offset + 5] ^= 0x01
    data.write_bytes(bytes(raw))
    damaged = CheckpointReader(prefix)
    for _ in range(2):
        with pytest.raises(UserError, match=f"checksum mismatch in {name}"):
            damaged.read(name)


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


@pytest.mark.parametrize(("compression", "message"), [
    (1, r"checkpoint index model.ckpt-3.index is corrupt \(snappy"),  # plain bytes marked snappy
    (7, "checkpoint index model.ckpt-3.index has a block of unknown compression type 7"),
])
def test_wrongly_marked_index_block_is_refused(tiny_ckpt, tmp_path, compression, message):
    """A block whose compression byte does not match its bytes (with a valid checksum) is one clear error,
    not garbage. Real snappy blocks are tested in test_snappy.py."""
    import google_crc32c

    from converters.tf1_checkpoint import FOOTER_SIZE, _read_handle, mask_crc

    prefix = _copy(tiny_ckpt, tmp_path)
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    footer = bytes(raw[-FOOTER_SIZE:])
    _, pos = _read_handle(footer, 0)
    (offset, size), _ = _read_handle(footer, pos)  # the index block: the table's last block
    raw[offset + size] = compression
    raw[offset + size + 1:offset + size + 5] = mask_crc(google_crc32c.value(bytes(raw[offset:offset + size + 1]))
                                                        ).to_bytes(4, "little")
    index.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=message):
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
    # Noticed when the checkpoint is opened, from the sizes the index declares: before anything is read.
    with pytest.raises(UserError, match=r"model.ckpt-3.data-00000-of-00001 is truncated or its index is corrupt: "
                                        r".* needs bytes \d+\.\.\d+ of 100"):
        CheckpointReader(prefix)


def test_a_data_shard_one_byte_short_is_refused_on_opening(tiny_ckpt, tmp_path):
    """The last tensor's extent (offset + size, not just its offset) is checked against the file's size."""
    prefix = _copy(tiny_ckpt, tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(UserError, match=rf"model.ckpt-3.data-00000-of-00001 is truncated or its index is corrupt: "
                                        rf".* needs bytes \d+\.\.{size} of {size - 1};"):
        CheckpointReader(prefix)


def _rewrite_index(source: Path, target: Path, edit) -> None:
    """Copy a one-shard bundle, its index rewritten entry by entry (`edit(key, fields) -> fields`, the header's
    key is b"") by the test kit's own table writer, with valid block checksums."""
    from testkit.index_table import decode_proto, encode_proto, read_entries, write_index

    shutil.copy(f"{source}.data-00000-of-00001", f"{target}.data-00000-of-00001")
    entries = read_entries(Path(f"{source}.index"))
    write_index(Path(f"{target}.index"), [(key, encode_proto(edit(key, decode_proto(value)))) for key, value in
                                          entries])


def test_a_big_endian_bundle_is_refused_not_misread(tmp_path):
    """A bundle whose header says BIG endian holds big-endian bytes: TensorFlow reads it (byte-swapping), and
    this reader, which reads little-endian only, must refuse it rather than return byte-swapped values."""
    import tensorflow as tf

    from testkit.index_table import masked_crc

    rng = np.random.default_rng(21)
    values = {"a/kernel": rng.standard_normal((5, 3)).astype(np.float32),
              "b/half": rng.standard_normal(7).astype(np.float16)}
    _save_with_tensorflow(tmp_path / "le", values, {"b/half": "float16"})
    data = bytearray(Path(f"{tmp_path / 'le'}.data-00000-of-00001").read_bytes())
    itemsize = {1: 4, 19: 2}  # TensorFlow's DataType codes: DT_FLOAT, DT_HALF

    def to_big_endian(key, fields):
        if key == b"":  # BundleHeaderProto: endianness (field 2) BIG = 1
            return [f for f in fields if f[0] != 2] + [(2, 0, 1)]
        entry = {number: value for number, _, value in fields}
        offset, size = entry.get(4, 0), entry[5]
        swapped = np.frombuffer(bytes(data[offset:offset + size]), np.uint8).reshape(-1, itemsize[entry[1]])[:, ::-1]
        data[offset:offset + size] = swapped.tobytes()
        return [(n, w, masked_crc(swapped.tobytes()) if n == 6 else v) for n, w, v in fields]

    prefix = tmp_path / "be"
    _rewrite_index(tmp_path / "le", prefix, to_big_endian)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    tf_reader = tf.train.load_checkpoint(str(prefix))  # the bundle is a valid big-endian one: TensorFlow reads it
    for name, value in values.items():
        np.testing.assert_array_equal(tf_reader.get_tensor(name), value)
    with pytest.raises(UserError, match="was written on a big-endian machine"):
        CheckpointReader(prefix)


def test_a_flipped_bit_in_an_index_block_is_refused_as_tensorflow_refuses_it(tiny_ckpt, tmp_path):
    """One bit of an entry turns a float32 kernel into an int32 one (DT_FLOAT 1 -> DT_INT32 3, same size, so the
    entry still parses): the block checksum is what tells corruption from a real int32 tensor."""
    import tensorflow as tf

    from testkit.index_table import read_entries

    prefix = _copy(tiny_ckpt, tmp_path)
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    (value,) = [v for k, v in read_entries(index) if k == b"bert/encoder/layer_1/intermediate/dense/kernel"]
    assert raw.count(value) == 1 and value[:2] == b"\x08\x01"  # field 1 (dtype), varint DT_FLOAT
    raw[raw.find(value) + 1] ^= 0x02
    index.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="checksum mismatch"):  # TensorFlow's own reader refuses the index
        tf.train.load_checkpoint(str(prefix))
    with pytest.raises(UserError, match=r"checkpoint index model.ckpt-3.index is corrupt \(block checksum mismatch\)"):
        CheckpointReader(prefix)


def test_a_shard_number_past_the_last_is_a_corrupt_index(tmp_path):
    """Shard ids run 0..num_shards-1: an entry naming shard 1 of a one-shard bundle is a corrupt index, not a
    data file to go and copy (no file `-00001-of-00001` can exist)."""
    _save_with_tensorflow(tmp_path / "good", {"a/kernel": np.ones((2, 3)), "b/bias": np.ones(3)})

    def shard_one(key, fields):
        return [f for f in fields if f[0] != 3] + [(3, 0, 1)] if key == b"b/bias" else fields

    _rewrite_index(tmp_path / "good", tmp_path / "bad", shard_one)
    with pytest.raises(UserError, match=r"checkpoint index bad.index is corrupt: b/bias points at shard 1, "):
        CheckpointReader(tmp_path / "bad")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no TF1 checkpoint .* a directory with a `checkpoint` file, or a TF1 "
                                        "SavedModel directory$"):
        CheckpointReader(tmp_path / "nothing")
    with pytest.raises(UserError, match="no `checkpoint` file and 0 .index files"):
        CheckpointReader(tmp_path)


# -- partitioned (sliced) variables, as TensorFlow writes them -----------------------------------------------

# name -> (full shape, dtype, TensorFlow slice specs). Row starts >= 64 take multi-byte slice keys.
PARTITIONED = {
    "p/rows": ((150, 6), "float32", ["0,70:-", "70,70:-", "140,10:-"]),
    "p/grid": ((7, 9), "float32", ["0,3:0,4", "0,3:4,5", "3,4:-"]),
    "p/columns": ((5, 11), "float16", ["-:0,2", "-:2,9"]),
    "p/bf16": ((9, 3), "bfloat16", ["0,4:-", "4,5:-"]),
}


def _slice_of(value: np.ndarray, spec: str) -> np.ndarray:
    index = tuple(slice(None) if part == "-" else slice(int(part.split(",")[0]),
                                                         sum(int(x) for x in part.split(",")))
                  for part in spec.split(":"))
    return value[index]


def _save_slices(prefix: Path, values: dict[str, np.ndarray], names: list[str] | None = None) -> None:
    """One SaveV2 call holding every slice of `names` (default: all of PARTITIONED) and nothing else."""
    import tensorflow as tf

    tensor_names, specs, tensors = [], [], []
    for name in names or sorted(PARTITIONED):
        shape, dtype, slices = PARTITIONED[name]
        for spec in slices:
            tensor_names.append(name)
            specs.append(f"{' '.join(map(str, shape))} {spec}")
            tensors.append(tf.constant(_slice_of(values[name], spec), dtype=getattr(tf, dtype)))
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=tensor_names, shape_and_slices=specs, tensors=tensors)


def _partitioned_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {name: rng.standard_normal(shape) for name, (shape, _, _) in PARTITIONED.items()}


def _stored(value: np.ndarray, dtype: str) -> np.ndarray:
    """What the checkpoint holds, as our reader returns it (bfloat16 as bits), via TensorFlow's casts."""
    import tensorflow as tf

    stored = tf.cast(value, getattr(tf, dtype))
    return tf.bitcast(stored, tf.uint16).numpy() if dtype == "bfloat16" else stored.numpy()


@pytest.fixture(scope="module")
def partitioned_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    values = _partitioned_values()
    prefix = tmp_path_factory.mktemp("partitioned") / "model.ckpt-1"
    _save_slices(prefix, values)
    return prefix, values


def test_partitioned_variables_are_reassembled(partitioned_ckpt):
    prefix, values = partitioned_ckpt
    with CheckpointReader(prefix) as reader:
        assert reader.variables() == {name: (shape, dtype) for name, (shape, dtype, _) in PARTITIONED.items()}
        for name, (_, dtype, slices) in PARTITIONED.items():
            assert reader.entries[name].partitioned and len(reader.pieces[name]) == len(slices)
            np.testing.assert_array_equal(reader.read(name), _stored(values[name], dtype))


def test_a_partitioned_variable_is_read_whole_in_one_slice(partitioned_ckpt):
    """read() asks for the whole tensor at once: an index entry's `size` is 0 for a partitioned variable, and
    sizing the slice by it read such a variable one row (one pread) at a time."""
    prefix, _ = partitioned_ckpt
    with CheckpointReader(prefix) as reader:
        iter_rows = reader.iter_rows
        chunks = []
        reader.iter_rows = lambda name, **kwargs: (chunks.append(c) or c for c in iter_rows(name, **kwargs))
        for name in PARTITIONED:
            chunks.clear()
            reader.read(name)
            assert len(chunks) == 1, name


@pytest.mark.parametrize(("slices", "problem"), [
    ((((0, 2), (0, -1)), ((1, 2), (0, -1))), "overlap"),  # rows 0-1 and 1-2 of 4: the volumes still add up
    ((((0, 2), (0, -1)), ((2, 1), (0, -1))), "a gap"),  # row 3 in no slice
])
def test_slices_that_do_not_tile_the_variable_exactly_once_are_refused(slices, problem):
    from converters.tf1_checkpoint import TensorEntry, _pieces, slice_key

    variable = TensorEntry("w", "float32", (4, 3), 0, 0, 0, 0, slices)
    parts = {slice_key("w", extents): TensorEntry("w-part", "float32", (extents[0][1], 3), 0, 36 * i,
                                                  12 * extents[0][1], 0)
             for i, extents in enumerate(slices)}
    with pytest.raises(UserError, match="do not cover it exactly once"):
        _pieces(variable, parts)


@pytest.mark.parametrize("rows_per_chunk", [1, 4, 69, 1000])
def test_partitioned_rows_stream_in_order(partitioned_ckpt, rows_per_chunk):
    prefix, values = partitioned_ckpt
    with CheckpointReader(prefix) as reader:
        for name, (shape, dtype, _) in PARTITIONED.items():
            row_bytes = int(np.prod(shape[1:])) * (4 if dtype == "float32" else 2)
            chunks = list(reader.iter_rows(name, max_bytes=rows_per_chunk * row_bytes))
            assert all(len(c) <= rows_per_chunk for c in chunks)
            np.testing.assert_array_equal(np.concatenate(chunks), _stored(values[name], dtype))


@pytest.mark.parametrize("rows_per_chunk", [1, 4, 1000])
def test_rows_read_into_pool_buffers(partitioned_ckpt, mixed_ckpt, rows_per_chunk):
    """With a pool, every slice lands in one of its two buffers, given back after use, and holds what a
    slice read on its own holds: whole tensors, partitioned ones, the scalar and the empty tensor."""
    from converters.pipeline import BufferPool

    for prefix in (partitioned_ckpt[0], mixed_ckpt[0]):
        with CheckpointReader(prefix) as reader:
            for name, entry in reader.entries.items():
                row_bytes = entry.nbytes // entry.shape[0] if entry.shape and entry.shape[0] else entry.itemsize
                limit = rows_per_chunk * row_bytes
                pool = BufferPool(2, max(limit, row_bytes))
                owners = set()
                pooled = []
                for chunk in reader.iter_rows(name, max_bytes=limit, buffers=pool):
                    pooled.append(chunk.copy())
                    owners.add(id(chunk.base))
                    pool.give_back(chunk)
                plain = list(reader.iter_rows(name, max_bytes=limit))
                assert len(owners) <= 2 and len(pooled) == len(plain)
                for got, expected in zip(pooled, plain, strict=True):
                    np.testing.assert_array_equal(got, expected)


def test_partitions_across_shards(tmp_path):
    """Slices of one variable in different data files, merged by TensorFlow as a sharded Saver does."""
    import tensorflow as tf

    values = _partitioned_values()
    parts = [tmp_path / "part-0", tmp_path / "part-1"]
    _save_slices(parts[0], values, ["p/grid"])
    # The other shard holds the remaining slices of p/rows: split the spec list between the two shards.
    shape, dtype, slices = PARTITIONED["p/rows"]
    tf.raw_ops.SaveV2(prefix=str(parts[1]), tensor_names=["p/rows"] * 2,
                      shape_and_slices=[f"150 6 {s}" for s in slices[1:]],
                      tensors=[tf.constant(_slice_of(values["p/rows"], s), tf.float32) for s in slices[1:]])
    tf.raw_ops.SaveV2(prefix=str(parts[0]) + "b", tensor_names=["p/rows"],
                      shape_and_slices=[f"150 6 {slices[0]}"],
                      tensors=[tf.constant(_slice_of(values["p/rows"], slices[0]), tf.float32)])
    prefix = tmp_path / "model.ckpt-2"
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[str(parts[0]), str(parts[1]), str(parts[0]) + "b"],
                                  destination_prefix=str(prefix), delete_old_dirs=False)
    with CheckpointReader(prefix) as reader:
        assert reader.num_shards == 3
        assert len({e.shard for _, e in reader.pieces["p/rows"]}) == 2
        for name in ("p/rows", "p/grid"):
            np.testing.assert_array_equal(reader.read(name), values[name].astype(np.float32))


def test_partitioned_variable_saved_by_tf1_saver(tmp_path):
    """The way TF1 training code partitions an embedding: get_variable with a partitioner, saved by Saver."""
    import tensorflow as tf

    prefix = tmp_path / "model.ckpt-7"
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(3)
        variable = tf.compat.v1.get_variable("bert/embeddings/word_embeddings", shape=[99, 18],
                                             partitioner=tf.compat.v1.fixed_size_partitioner(4))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            expected = session.run(tf.concat(list(variable), axis=0))
            saver.save(session, str(prefix))
    # The files a Saver writes beside the index name the same checkpoint.
    assert Path(f"{prefix}.meta").is_file()
    assert resolve_checkpoint(f"{prefix}.meta") == prefix
    assert resolve_checkpoint(f"{prefix}.data-00000-of-00001") == prefix
    with CheckpointReader(prefix) as reader:
        assert reader.variables()["bert/embeddings/word_embeddings"] == ((99, 18), "float32")
        assert len(reader.pieces["bert/embeddings/word_embeddings"]) == 4
        np.testing.assert_array_equal(reader.read("bert/embeddings/word_embeddings"), expected)


def test_crc_mismatch_in_one_slice(partitioned_ckpt, tmp_path):
    source, _ = partitioned_ckpt
    shutil.copytree(source.parent, tmp_path / "copy")
    prefix = tmp_path / "copy" / source.name
    reader = CheckpointReader(prefix)
    (_, damaged), = [(r, e) for r, e in reader.pieces["p/rows"] if r[0].start == 70]
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[damaged.offset + 5] ^= 0x10
    data.write_bytes(bytes(raw))
    chunks = reader.iter_rows("p/rows", max_bytes=10 * 6 * 4)
    for _ in range(7):  # rows 0-69 come from an intact slice
        next(chunks)
    with pytest.raises(UserError, match=r"checksum mismatch in p/rows \(slice p/rows\[70,70:-\]\)"):
        list(chunks)
    reader.read("p/grid")


def test_converting_a_partitioned_checkpoint_gives_the_same_bytes(tmp_path, tiny_original_config):
    """A RemBERT checkpoint with partitioned embeddings and a column-partitioned kernel converts to the same
    safetensors bytes as the same values saved whole."""
    import json

    import tensorflow as tf

    from converters.convert import ConvertOptions, convert_checkpoint
    from testkit.synthetic_checkpoint import synthetic_variables

    values = synthetic_variables(tiny_original_config, seed=8)
    partitions = {"bert/embeddings/word_embeddings": ["0,40:-", "40,40:-", "80,19:-"],
                  "cls/predictions/output_embedding": ["0,50:-", "50,49:-"],
                  "bert/encoder/layer_1/attention/self/query/kernel": ["-:0,10", "-:10,22"]}
    outputs = {}
    for layout in ("whole", "partitioned"):
        directory = tmp_path / layout
        directory.mkdir()
        names, specs, tensors = [], [], []
        for name, value in sorted(values.items()):
            for spec in partitions.get(name, [""]) if layout == "partitioned" else [""]:
                names.append(name)
                specs.append(f"{' '.join(map(str, value.shape))} {spec}" if spec else "")
                tensors.append(tf.constant(_slice_of(value, spec) if spec else value))
        tf.raw_ops.SaveV2(prefix=str(directory / "model.ckpt-3"), tensor_names=names, shape_and_slices=specs,
                          tensors=tensors)
        (directory / "bert_config.json").write_text(json.dumps(tiny_original_config))
        convert_checkpoint(directory / "model.ckpt-3", tmp_path / f"out-{layout}", ["safetensors"],
                           ConvertOptions(quiet=True, chunk_bytes=300))
        outputs[layout] = (tmp_path / f"out-{layout}" / "model.safetensors").read_bytes()
    assert outputs["whole"] == outputs["partitioned"]


def test_full_size_generator_writes_what_tensorflow_reads(tmp_path, tiny_original_config):
    """benchmarks/make_full_checkpoint.py writes the bundle itself: TensorFlow and our reader must read back
    testkit.synthetic_checkpoint's values (drawn there in row slices, here in one piece)."""
    import tensorflow as tf

    from benchmarks.make_full_checkpoint import write_bundle_checkpoint
    from testkit.synthetic_checkpoint import synthetic_variables

    prefix = write_bundle_checkpoint(tmp_path, tiny_original_config, seed=6, slots=True, chunk_bytes=200)
    expected = synthetic_variables(tiny_original_config, seed=6)
    tf_reader = tf.train.load_checkpoint(str(prefix))
    assert len(tf_reader.get_variable_to_shape_map()) == 3 * len(expected) + 1  # slots and global_step
    with CheckpointReader(tmp_path) as reader:
        for name, value in expected.items():
            np.testing.assert_array_equal(tf_reader.get_tensor(name), value)
            np.testing.assert_array_equal(reader.read(name), value)
        assert reader.read("global_step") == tf_reader.get_tensor("global_step") == 0


def test_the_whole_tensor_comes_in_one_chunk_however_it_was_split(partitioned_ckpt):
    """Kernels to transpose are asked for whole: a variable saved in row slices (bands) must not come back
    band by band, or each band would be transposed on its own."""
    prefix, values = partitioned_ckpt
    with CheckpointReader(prefix) as reader:
        for name, (_, dtype, _) in PARTITIONED.items():
            chunks = list(reader.iter_rows(name, max_bytes=reader.entries[name].nbytes))
            assert len(chunks) == 1, name
            np.testing.assert_array_equal(chunks[0], _stored(values[name], dtype))
