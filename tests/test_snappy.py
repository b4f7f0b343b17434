"""Snappy-compressed index blocks: Google's real BLEURT test checkpoint index (tests/data, unmodified), an
independent snappy implementation (cramjam), and a TensorFlow-written checkpoint whose blocks are compressed.

TensorFlow's table format marks each block none (0) or snappy (1). Public TensorFlow 1.2 and later writes its
bundle indexes uncompressed (tensor_bundle.cc, TableBuilderOptions), but indexes written otherwise exist: the
BLEURT test SavedModel's data block is snappy, and TensorFlow itself reads such indexes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cramjam
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.tf1_checkpoint import CheckpointReader, mask_crc, snappy_decompress
from rembert_convert.cli import main
from rembert_ref.errors import UserError
from testkit.index_table import compress_data_blocks, data_block_compressions

BLEURT = Path(__file__).resolve().parent / "data" / "bleurt_test_checkpoint"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"
SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=300,
                    suppress_health_check=[HealthCheck.too_slow])


def _snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


@pytest.fixture
def bleurt(tmp_path: Path) -> Path:
    """The BLEURT index beside a data file of zeros as long as the index declares (the real one is 17.5 MB
    and not shipped); returns the prefix."""
    from converters.tf1_checkpoint import _read_index

    home = tmp_path / "bleurt"
    shutil.copytree(BLEURT, home)
    prefix = home / "variables"
    shutil.move(home / "variables.index", f"{prefix}.index")
    _, entries, _ = _read_index(Path(f"{prefix}.index"))
    with open(f"{prefix}.data-00000-of-00001", "wb") as data:
        data.truncate(max(e.offset + e.size for e in entries.values()))  # sparse: zeros cost no disk
    return prefix


def test_bleurt_index_really_is_snappy_compressed():
    assert data_block_compressions(BLEURT / "variables.index") == [1]


def test_bleurt_index_reads_as_tensorflow_reads_it(bleurt):
    import tensorflow as tf

    tf_reader = tf.compat.v1.train.NewCheckpointReader(str(bleurt))
    tf_shapes, tf_dtypes = tf_reader.get_variable_to_shape_map(), tf_reader.get_variable_to_dtype_map()
    with CheckpointReader(bleurt) as reader:
        ours = reader.variables()
        assert set(ours) == set(tf_shapes) and "dense/kernel" in ours
        for name, (shape, dtype) in ours.items():
            assert list(shape) == tf_shapes[name], name
            assert dtype == tf_dtypes[name].name, name
        # The data are zeros, so both readers refuse dense/kernel's bytes on its checksum; TensorFlow's message
        # names the checksum the index stores (unmasked), which must be the one we decoded.
        with pytest.raises(tf.errors.OpError, match="Checksum does not match") as tf_error:
            tf_reader.get_tensor("dense/kernel")
        stored = int(re.search(r"stored (\d+)", str(tf_error.value)).group(1))
        assert reader.entries["dense/kernel"].crc32c == mask_crc(stored)
        with pytest.raises(UserError, match="checksum mismatch in dense/kernel"):
            reader.read("dense/kernel")


def test_bleurt_head_rows_are_the_dense_task_head(bleurt, tmp_path):
    """BLEURT's head, `dense/kernel` [hidden, 1] and `dense/bias` (tf.layers.dense's default name), is found by
    the 'dense' rule. BERT-tiny is not RemBERT: the config gets RemBERT's embedding sizes, and the rows of the
    RemBERT-only embedding projection stay missing."""
    import json

    config = json.loads((BLEURT / "bert_config.json").read_text())
    config.update(input_embedding_size=config["hidden_size"], output_embedding_size=config["hidden_size"])
    config_path = tmp_path / "rembert_config.json"
    config_path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["inspect", str(bleurt), "--config", str(config_path)])
    rows = {line.split()[1]: line for line in result.output.splitlines() if line[:1] != " " and len(line.split()) > 2}
    assert re.match(r"mapped +dense/kernel +\[128,1\] .*classifier\.weight \(transposed\) \[task head, rule 'dense'\]",
                    rows["dense/kernel"])
    assert re.match(r"mapped +dense/bias +\[1\] .*classifier\.bias \[task head, rule 'dense'\]", rows["dense/bias"])
    assert rows["bert/encoder/embedding_hidden_mapping_in/kernel"].startswith("missing")


@SETTINGS
@given(st.one_of(
    st.binary(max_size=4096),
    # Repeats make copies, short periods overlapping ones; far repeats need 2-byte offsets.
    st.tuples(st.binary(min_size=1, max_size=40), st.integers(1, 3000)).map(lambda p: p[0] * p[1]),
    st.tuples(st.binary(min_size=5000, max_size=5000), st.binary(max_size=64)).map(lambda p: p[0] + p[1] + p[0]),
))
def test_independent_snappy_round_trips(data):
    assert snappy_decompress(_snappy(data)) == data


def test_four_byte_offset_copy():
    """Snappy's own compressor works in 64 KiB fragments and never emits 4-byte offsets; the format allows them."""
    stream = b"\x05" + b"\x04ab" + b"\x0b" + (2).to_bytes(4, "little")  # "ab", then copy 3 bytes from 2 back
    assert snappy_decompress(stream) == b"ababa"


@SETTINGS
@given(st.binary(max_size=512))
def test_any_bytes_decompress_or_raise_value_error(data):
    try:
        out = snappy_decompress(data)
    except ValueError:
        return
    assert len(out) * 3 <= 64 * len(data)


@pytest.mark.parametrize("stream", [
    b"\xff\xff\xff\xff\x0f" + b"\x00a",  # declares 4 GiB: refused before allocating
    b"\x05" + b"\x01\x00",  # a copy before any byte is decoded
    b"\x05" + b"\x10ab",  # a literal of 5 bytes with 2 left
    b"\x08" + b"\x0cabcd",  # 4 bytes where 8 are declared
    b"\x02" + b"\x0cabcd",  # 4 bytes where 2 are declared
    b"\x40" + b"\x00a" + b"\xfe\x00\x00",  # a 2-byte offset of 0
])
def test_malformed_snappy_block_is_one_user_error(tmp_path, stream):
    shutil.copytree(EXAMPLE, tmp_path / "ckpt")
    compress_data_blocks(tmp_path / "ckpt" / "model.ckpt-3.index", lambda block: stream)
    with pytest.raises(UserError, match=r"^checkpoint index model.ckpt-3.index is corrupt \(snappy .*\); re-download"):
        CheckpointReader(tmp_path / "ckpt" / "model.ckpt-3")


def test_tensorflow_checkpoint_with_snappy_blocks_reads_end_to_end(tmp_path):
    """Many similarly named variables, as a real RemBERT has, written by TensorFlow. TensorFlow 1.2+ writes them
    uncompressed, so the blocks are compressed here (by cramjam) exactly as TensorFlow's table writer would, and
    only where it would (saving at least 1/8); TensorFlow must then read the result as we do."""
    import tensorflow as tf

    rng = np.random.default_rng(12)
    values = {f"bert/encoder/layer_{i}/attention/self/{part}/{kind}":
              rng.standard_normal((3, 2) if kind == "kernel" else 2)
              for i in range(60) for part in ("query", "key", "value") for kind in ("kernel", "bias")}
    prefix = tmp_path / "model.ckpt-9"
    names = sorted(values)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[n], dtype=tf.float32) for n in names])
    index = Path(f"{prefix}.index")
    if set(data_block_compressions(index)) == {0}:
        sizes = compress_data_blocks(index, _snappy)
        assert all(packed < plain - plain / 8 for plain, packed in sizes), sizes
    assert set(data_block_compressions(index)) == {1}
    tf_reader = tf.compat.v1.train.NewCheckpointReader(str(prefix))
    with CheckpointReader(prefix) as reader:
        assert set(reader.variables()) == set(tf_reader.get_variable_to_shape_map()) == set(values)
        for name in names:
            np.testing.assert_array_equal(reader.read(name), tf_reader.get_tensor(name))
            np.testing.assert_array_equal(reader.read(name), values[name].astype(np.float32))


@settings(derandomize=True, deadline=None, database=None, max_examples=150,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_snappy_block_with_valid_checksum_is_read_or_refused(tmp_path_factory, edits):
    """Bytes of a real snappy block changed (checksums kept valid): the reader opens it or says in one
    UserError that the index is corrupt; nothing else escapes."""
    def damage(block: bytes) -> bytes:
        packed = bytearray(_snappy(block))
        for position, value in edits:
            packed[position % len(packed)] = value
        return bytes(packed)

    ckpt = tmp_path_factory.mktemp("damaged") / "ckpt"
    shutil.copytree(EXAMPLE, ckpt)
    compress_data_blocks(ckpt / "model.ckpt-3.index", damage)
    try:
        reader = CheckpointReader(ckpt / "model.ckpt-3")
    except UserError as error:
        assert "\n" not in str(error)
        return
    with reader, CheckpointReader(EXAMPLE / "model.ckpt-3") as clean:  # opened: what it reads is the truth or refused
        for name in reader.variables():
            try:
                value = reader.read(name)
            except UserError as error:
                assert "\n" not in str(error)
                continue
            if name in clean.entries and reader.entries[name].dtype == clean.entries[name].dtype:
                np.testing.assert_array_equal(value, clean.read(name).reshape(value.shape), err_msg=name)
