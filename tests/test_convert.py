"""Conversion to pytorch_model.bin and model.safetensors: contents, layouts, determinism, atomic failure."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from converters.convert import ConvertOptions, convert_checkpoint
from rembert_ref.errors import UserError
from testkit.synthetic_checkpoint import write_synthetic_checkpoint
from tests.conftest import TINY_ORIGINAL_CONFIG

EXAMPLE_CKPT = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"


def _load_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.fixture(scope="module")
def converted(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "tiny"
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors"], ConvertOptions(quiet=True))
    return out


def test_every_original_weight_lands_under_its_hf_name(tiny_ckpt, converted):
    state = torch.load(converted / "pytorch_model.bin", weights_only=True)
    v = tiny_ckpt.variables
    # Written independently of the mapping table: the HF names of a few representative weights.
    expectations = {
        "rembert.embeddings.word_embeddings.weight": v["bert/embeddings/word_embeddings"],
        "rembert.embeddings.LayerNorm.weight": v["bert/embeddings/LayerNorm/gamma"],
        "rembert.encoder.embedding_hidden_mapping_in.weight": v["bert/encoder/embedding_hidden_mapping_in/kernel"].T,
        "rembert.encoder.layer.2.attention.self.value.weight": v["bert/encoder/layer_2/attention/self/value/kernel"].T,
        "rembert.encoder.layer.0.output.LayerNorm.bias": v["bert/encoder/layer_0/output/LayerNorm/beta"],
        "rembert.encoder.layer.1.intermediate.dense.weight": v["bert/encoder/layer_1/intermediate/dense/kernel"].T,
        "rembert.pooler.dense.weight": v["bert/pooler/dense/kernel"].T,
        "cls.predictions.dense.weight": v["cls/predictions/transform/dense/kernel"].T,
        "cls.predictions.LayerNorm.weight": v["cls/predictions/transform/LayerNorm/gamma"],
        "cls.predictions.decoder.weight": v["cls/predictions/output_embedding"],
        "cls.predictions.decoder.bias": v["cls/predictions/output_bias"],
    }
    for name, value in expectations.items():
        np.testing.assert_array_equal(state[name].numpy(), value, err_msg=name)
    model_values = {n for n in v if not n.startswith("cls/seq_relationship")}
    assert len(state) == len(model_values) == 63


def test_pytorch_and_safetensors_hold_identical_tensors(converted):
    state = torch.load(converted / "pytorch_model.bin", weights_only=True)
    st = _load_safetensors_dir(converted)
    assert sorted(state) == sorted(st)
    for name in state:
        assert state[name].dtype == st[name].dtype == torch.float32
        assert torch.equal(state[name], st[name]), name
    with safe_open(converted / "model.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    # torch.load(mmap=True) needs the 64-byte record alignment torch.save uses.
    mapped = torch.load(converted / "pytorch_model.bin", weights_only=True, mmap=True)
    assert torch.equal(mapped["cls.predictions.decoder.weight"], state["cls.predictions.decoder.weight"])


def test_bin_is_a_sound_zip_with_aligned_records(converted):
    """pytorch_model.bin is written front to back (each record's CRC in a data descriptor after its data): every
    CRC checks out, and every record's data starts on torch.save's 64-byte boundary."""
    import struct
    import zipfile

    path = converted / "pytorch_model.bin"
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # reads every record and checks its CRC-32
        records = archive.infolist()
    data = path.read_bytes()
    for info in records:
        name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_length + extra_length
        assert start % 64 == 0, info.filename
        crc, = struct.unpack_from("<I", data, start + info.file_size + 4)  # after the descriptor's signature
        assert crc == info.CRC, info.filename


def test_bin_pickle_is_the_one_torch_save_writes():
    """data.pkl is written without tensors: its bytes must be those torch.save writes for real ones."""
    from converters.writers import TORCH_STORAGES, torch_data_pickle

    shapes = {"a.weight": ((2, 3), "float32"), "b.bias": ((5,), "float16"), "scalar": ((), "float32"),
              "c.weight": ((7, 4, 1), "bfloat16")}
    expected = _torch_save_pickle(shapes)
    ours = torch_data_pickle([(name, TORCH_STORAGES[dtype], shape) for name, (shape, dtype) in shapes.items()])
    assert ours == expected


def _torch_save_pickle(shapes: dict) -> bytes:
    """The data.pkl torch.save writes for zero tensors of these {name: (shape, dtype)}."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save({name: torch.zeros(shape, dtype=getattr(torch, dtype)) for name, (shape, dtype) in shapes.items()},
               buffer)
    with zipfile.ZipFile(buffer) as archive:
        (record,) = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        return archive.read(record)


# The C pickler's dict batches of 1000: one item alone (SETITEM), a full batch then an empty one, one left over.
@pytest.mark.parametrize("count", [1, 1000, 1001, 2000])
def test_bin_pickle_of_many_tensors_is_the_one_torch_save_writes(count):
    """The memo past 255 entries (4-byte indexes), dict batches, and dimensions needing 2- and 4-byte ints."""
    from converters.writers import TORCH_STORAGES, torch_data_pickle

    dtypes = ["float32", "float16", "bfloat16"]
    shapes = [((70_000,) if i == 3 else (300, 2) if i % 7 == 0 else (i % 5 + 1,) * (i % 4), dtypes[i % 3])
              for i in range(count)]
    entries = {f"encoder.layer.{i}.weight": shape_and_dtype for i, shape_and_dtype in enumerate(shapes)}
    expected = _torch_save_pickle(entries)
    assert torch_data_pickle([(name, TORCH_STORAGES[dtype], shape)
                              for name, (shape, dtype) in entries.items()]) == expected


@pytest.mark.parametrize("value", [0, 255, 256, 65_535, 65_536, 2**31 - 1, 2**31, 2**40, 2**63])
def test_bin_pickle_integers_are_pickles(value):
    """Element counts past 2**31 (never at RemBERT's sizes, so not through torch.save above) as pickle writes them."""
    import pickle

    from converters.writers import _DataPickle

    writer = _DataPickle()
    writer.integer(value)
    assert bytes(writer.out) + pickle.STOP == pickle.dumps(value, protocol=2)


def test_config_and_report(converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "rembert"
    assert config["hidden_act"] == "gelu_new"
    assert config["architectures"] == ["RemBertForMaskedLM"]
    assert (config["input_embedding_size"], config["output_embedding_size"]) == (18, 43)
    report = json.loads((converted / "conversion_report.json").read_text())
    ignored = {row["source"] for row in report["ignored"]}
    assert "global_step" in ignored
    assert "bert/encoder/layer_0/attention/self/query/kernel/adam_m" in ignored
    assert report["activation"]["hidden_act"] == "gelu_new"
    assert set(report["files"]) == {"pytorch_model.bin", "model.safetensors"}


def test_two_runs_give_identical_bytes(tiny_ckpt, converted, tmp_path):
    again = tmp_path / "again"
    convert_checkpoint(tiny_ckpt.prefix, again, ["safetensors", "pytorch"], ConvertOptions(quiet=True))
    for name in ("pytorch_model.bin", "model.safetensors", "config.json", "conversion_report.json"):
        assert (again / name).read_bytes() == (converted / name).read_bytes(), name


def test_sharded_safetensors_index(tiny_ckpt, converted, tmp_path):
    out = tmp_path / "sharded"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, max_shard_size="10KB"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    total = 0
    for shard in shards:
        with safe_open(shard, "pt") as handle:
            keys = set(handle.keys())
            assert handle.metadata() == {"format": "pt"}
            assert keys == {k for k, v in index["weight_map"].items() if v == shard.name}
            total += sum(handle.get_tensor(k).numel() * 4 for k in keys)
            if len(keys) > 1:  # only a single tensor may exceed the shard size
                assert shard.stat().st_size < 10_000 + 2_000
    assert index["metadata"]["total_size"] == total
    single = _load_safetensors_dir(converted)
    for name, tensor in _load_safetensors_dir(out).items():
        assert torch.equal(tensor, single[name])


def _in_file_order(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors in the order their bytes lie in the file (the header's data_offsets)."""
    import struct

    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    header.pop("__metadata__", None)
    tensors = load_file(path)
    return {name: tensors[name] for name in sorted(header, key=lambda n: header[n]["data_offsets"][0])}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("limit", ["one byte", "the largest tensor", "all tensors"])
def test_shards_are_the_ones_huggingface_hub_makes(tiny_ckpt, converted, tmp_path, dtype, limit):
    """Shards fill in order up to max_shard_size (a tensor that fills a shard exactly still fits, a larger one gets
    a shard of its own), are named model-0000K-of-0000N from K = 1, and the index (total_size in the dtype written)
    is the one huggingface_hub's own splitter gives for the same tensors in the same order. Each file holds the
    bytes safetensors itself writes for its tensors (8-byte aligned data included)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save

    state = {name: tensor.to(getattr(torch, dtype)).clone()
             for name, tensor in _in_file_order(converted / "model.safetensors").items()}
    sizes = [tensor.numel() * tensor.element_size() for tensor in state.values()]
    max_size = {"one byte": 1, "the largest tensor": max(sizes), "all tensors": sum(sizes)}[limit]
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_size)
    out = tmp_path / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"],
                       ConvertOptions(quiet=True, dtype=dtype, max_shard_size=max_size))
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(split.filename_to_tensors)
    for name, keys in split.filename_to_tensors.items():
        tensors = load_file(out / name)
        assert sorted(tensors) == sorted(keys), name
        assert (out / name).read_bytes() == save(tensors, metadata={"format": "pt"}), name
    index = out / "model.safetensors.index.json"
    if split.is_sharded:
        assert json.loads(index.read_text()) == {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    else:
        assert not index.exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("10KiB", 10 * 2**10), ("3MiB", 3 * 2**20), ("2GiB", 2 * 2**30), ("1TiB", 2**40),
    ("10KB", 10_000), ("500mb", 500_000_000), ("1.5 GB", 1_500_000_000), ("7B", 7), ("10000000", 10_000_000),
])
def test_max_shard_size_units(text, expected):
    """SI units are powers of 1000, IEC units (KiB, MiB, ...) powers of 1024."""
    from converters.writers import parse_size

    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "0KB", "-5MB"])
def test_a_max_shard_size_that_is_not_positive_is_refused(text):
    from converters.writers import parse_size

    with pytest.raises(UserError, match=f"^size '{text}' must be positive$"):
        parse_size(text)


@pytest.mark.parametrize("shape", [(600, 300), (300, 600), (257, 3)])
def test_the_banded_transpose_is_the_transpose(shape):
    """Full-size kernels ([1152, 4608] and [4608, 1152]) span many bands of rows; the tiny ones fit in one."""
    from converters.writers import transpose

    matrix = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(transpose(matrix), matrix.T)
    out = np.full(shape[::-1], np.nan, np.float32)
    assert transpose(matrix, out, rows_per_block=7) is out
    np.testing.assert_array_equal(out, matrix.T)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast_dtypes_equal_torch_casts(tiny_ckpt, converted, tmp_path, dtype):
    out = tmp_path / dtype
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors"], ConvertOptions(quiet=True, dtype=dtype))
    reference = torch.load(converted / "pytorch_model.bin", weights_only=True)
    for state in (torch.load(out / "pytorch_model.bin", weights_only=True), _load_safetensors_dir(out)):
        for name, tensor in state.items():
            assert tensor.dtype == getattr(torch, dtype)
            assert torch.equal(tensor, reference[name].to(tensor.dtype)), name
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == dtype


def _float16_edge_cases() -> np.ndarray:
    """float32 bit patterns where a float16 cast can go wrong, plus random ones."""
    rng = np.random.default_rng(7)
    exponents = np.arange(256, dtype=np.uint32) << 23  # every exponent, incl. subnormal/overflow/inf/NaN
    mantissas = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FE000, 0x7FEFFF, 0x7FF000,
                          0x7FFFFF, 0x400000], dtype=np.uint32)  # float16 rounding ties and their neighbours
    bits = (exponents[:, None] | mantissas[None, :]).ravel()
    bits = np.concatenate([bits, bits | 0x80000000, rng.integers(0, 1 << 32, 200_000, dtype=np.uint32)])
    return bits.view(np.float32)


def test_float16_casts_equal_torch_bit_for_bit_nans_included():
    """Our float16 cast (integer arithmetic, in blocks, with fix-ups for subnormals, overflow and NaNs) gives
    torch's own bytes, NaN payloads included, across block boundaries and for non-contiguous slices."""
    from converters.writers import FLOAT16_BLOCK, cast, float16_numpy

    values = _float16_edge_cases()
    assert values.size > FLOAT16_BLOCK  # two blocks, the second one partial
    reference = torch.from_numpy(values).to(torch.float16).numpy().view(np.uint16)
    assert np.isnan(values).sum() > 100 and (reference != 0).sum() > 100_000  # the cases are not trivial
    out = np.empty(values.shape, dtype=np.float16)
    float16_numpy(values, out)
    np.testing.assert_array_equal(out.view(np.uint16), reference)
    np.testing.assert_array_equal(cast(values.reshape(-1, 8)[:, ::2], "float32", "float16").view(np.uint16),
                                  reference.reshape(-1, 8)[:, ::2])  # not contiguous
    strided_out = np.empty((values.size // 8, 8), dtype=np.float16)[:, 1::2]
    float16_numpy(values.reshape(-1, 8)[:, ::2], strided_out)
    np.testing.assert_array_equal(strided_out.view(np.uint16), reference.reshape(-1, 8)[:, ::2])


def test_float16_conversion_leaves_process_state_alone(tiny_ckpt, tmp_path):
    """A fresh process writes the same float16 bytes as this one (where torch is imported) without importing
    torch (its import would cost more CPU than the cast), and a conversion does not change torch's thread
    settings."""
    import subprocess
    import sys

    script = ("import sys; from converters.convert import ConvertOptions, convert_checkpoint; "
              "convert_checkpoint(sys.argv[1], sys.argv[2], ['safetensors'], "
              "ConvertOptions(quiet=True, dtype='float16')); "
              "print('torch' in sys.modules)")
    fresh = tmp_path / "fresh"
    done = subprocess.run([sys.executable, "-c", script, str(tiny_ckpt.prefix), str(fresh)], check=True,
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    assert done.stdout.strip() == "False"
    threads = (torch.get_num_threads(), torch.get_num_interop_threads())
    in_process = tmp_path / "in-process"
    convert_checkpoint(tiny_ckpt.prefix, in_process, ["safetensors"], ConvertOptions(quiet=True, dtype="float16"))
    assert (torch.get_num_threads(), torch.get_num_interop_threads()) == threads
    assert (fresh / "model.safetensors").read_bytes() == (in_process / "model.safetensors").read_bytes()


def test_no_mlm_head_writes_the_bare_model_layout(tiny_ckpt, tmp_path):
    out = tmp_path / "bare"
    result = convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, mlm_head=False))
    names = set(_load_safetensors_dir(out))
    assert "embeddings.word_embeddings.weight" in names and "pooler.dense.weight" in names
    assert not any(n.startswith(("rembert.", "cls.")) for n in names)
    dropped = {r.variable for r in result.plan.ignored if r.detail.startswith("mlm-head")}
    assert "cls/predictions/output_embedding" in dropped and len(dropped) == 6


def test_fp16_and_bf16_sources(tmp_path, tiny_ckpt):
    for dtype in ("float16", "bfloat16"):
        prefix = write_synthetic_checkpoint(tmp_path / dtype, TINY_ORIGINAL_CONFIG, seed=0, dtype=dtype,
                                            optimizer_slots=False)
        out = tmp_path / f"out-{dtype}"
        convert_checkpoint(prefix, out, ["safetensors"], ConvertOptions(quiet=True))
        state = _load_safetensors_dir(out)
        expected = torch.from_numpy(tiny_ckpt.variables["bert/embeddings/word_embeddings"])
        torch.testing.assert_close(state["rembert.embeddings.word_embeddings.weight"],
                                   expected.to(getattr(torch, dtype)).float(), rtol=0, atol=0)


def test_a_float64_checkpoint_converts_to_the_values_tensorflow_reads(tmp_path):
    """float64 is a float source: every weight converts, equal to TensorFlow's reading cast to float32."""
    import tensorflow as tf

    from testkit.synthetic_checkpoint import synthetic_variables

    values = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=9)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    names = sorted(values)
    tf.raw_ops.SaveV2(prefix=str(ckpt / "model.ckpt-1"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[n], tf.float64) for n in names])
    (ckpt / "bert_config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    saved = tf.train.load_checkpoint(str(ckpt / "model.ckpt-1"))
    assert saved.get_variable_to_dtype_map()["bert/embeddings/word_embeddings"] == tf.float64
    convert_checkpoint(ckpt, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    state = _load_safetensors_dir(tmp_path / "out")
    assert len(state) == 63
    for name, original, transposed in (
            ("rembert.embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings", False),
            ("rembert.encoder.layer.2.output.dense.weight", "bert/encoder/layer_2/output/dense/kernel", True),
            ("cls.predictions.decoder.weight", "cls/predictions/output_embedding", False)):
        expected = tf.cast(saved.get_tensor(original), tf.float32).numpy()
        assert state[name].dtype == torch.float32
        np.testing.assert_array_equal(state[name].numpy(), expected.T if transposed else expected, err_msg=name)


def test_a_checkpoint_trained_by_tf1_optimizers_converts_ignoring_their_state(tmp_path):
    """The variables TensorFlow's own TF1 optimizers add (Adam's slots and beta powers, a second Adam's
    `_1`-suffixed ones, the slots of Momentum, RMSProp, Adagrad, Adadelta, Ftrl, ProximalAdagrad and AdagradDA,
    global_step) are all ignored, nothing else is, and the weights are the trained values TensorFlow saved."""
    import tensorflow as tf

    from testkit.synthetic_checkpoint import synthetic_variables

    values = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=10)
    ckpt = tmp_path / "ckpt"
    with tf.Graph().as_default():
        variables = [tf.compat.v1.get_variable(name, initializer=tf.constant(value))
                     for name, value in sorted(values.items())]
        step = tf.compat.v1.train.get_or_create_global_step()
        loss = tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
        v1 = tf.compat.v1.train
        optimizers = [v1.AdamOptimizer(1e-2), v1.AdamOptimizer(1e-2), v1.MomentumOptimizer(1e-2, 0.9),
                      v1.RMSPropOptimizer(1e-2, momentum=0.9, centered=True), v1.AdagradOptimizer(1e-2),
                      v1.AdadeltaOptimizer(1e-2), v1.FtrlOptimizer(1e-2), v1.ProximalAdagradOptimizer(1e-2),
                      v1.AdagradDAOptimizer(1e-2, step)]
        train = tf.group(optimizers[0].minimize(loss, global_step=step),
                         *[optimizer.minimize(loss) for optimizer in optimizers[1:]])
        added = {v.op.name for v in tf.compat.v1.global_variables()} - set(values)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(train)
            prefix = saver.save(session, str(ckpt / "model.ckpt"), global_step=step)
    assert {"beta1_power_1", "beta2_power_1"} | {f"bert/pooler/dense/kernel/{slot}" for slot in (
        "Adam_3", "Momentum", "RMSProp_2", "Adagrad", "Adadelta_1", "Ftrl_1", "ProximalAdagrad", "AdagradDA_1",
    )} <= added  # what TensorFlow names them
    (ckpt / "bert_config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    result = convert_checkpoint(ckpt, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    assert {r.variable for r in result.plan.ignored} == added
    saved = tf.train.load_checkpoint(prefix)
    state = _load_safetensors_dir(tmp_path / "out")
    assert len(state) == len(values) == 63
    trained = saved.get_tensor("bert/encoder/layer_1/attention/self/key/kernel")
    assert not np.array_equal(trained, values["bert/encoder/layer_1/attention/self/key/kernel"])  # it trained
    np.testing.assert_array_equal(state["rembert.encoder.layer.1.attention.self.key.weight"].numpy(), trained.T)
    np.testing.assert_array_equal(state["cls.predictions.decoder.bias"].numpy(),
                                  saved.get_tensor("cls/predictions/output_bias"))


def test_output_embedding_name_variants(tmp_path):
    prefix = write_synthetic_checkpoint(tmp_path / "ck", TINY_ORIGINAL_CONFIG, seed=1, optimizer_slots=False,
                                        output_embedding_name="bert/embeddings/output_embeddings")
    result = convert_checkpoint(prefix, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    assert result.plan.output_embedding == "bert/embeddings/output_embeddings"


# -- bad input: one-line errors, no partial output ---------------------------------------------------------


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _checkpoint_with(tmp_path: Path, config: dict | None = None, **kwargs) -> Path:
    prefix = write_synthetic_checkpoint(tmp_path / "ck", TINY_ORIGINAL_CONFIG, seed=2, optimizer_slots=False,
                                        **kwargs)
    if config is not None:
        (tmp_path / "ck" / "bert_config.json").write_text(json.dumps(config))
    return prefix


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", r"bert/encoder/layer_0/adapter/kernel matches no mapping or ignore rule"),
        # An ignore rule matches the whole name: a name merely containing a slot's name (`/Adam`) is no slot.
        ("slot_like", r"bert/encoder/layer_0/adapter/Adam_gate matches no mapping or ignore rule"),
        ("layer_more", r"bert/encoder/layer_3/.* is missing from the checkpoint"),
        ("layer_less", r"bert/encoder/layer_2/.* belongs to layer 2 but the config has num_hidden_layers = 2"),
        ("hidden", r"has shape \[18, 32\] but the config implies \[18, 36\]"),
        ("missing", r"cls/predictions/output_bias is missing from the checkpoint"),
    ],
)
def test_mismatches_fail_naming_the_variable(tmp_path, case, message):
    config = dict(TINY_ORIGINAL_CONFIG)
    kwargs: dict = {}
    if case == "unknown":
        kwargs["extra_variables"] = {"bert/encoder/layer_0/adapter/kernel": np.zeros((32, 5), np.float32)}
    elif case == "slot_like":
        kwargs["extra_variables"] = {"bert/encoder/layer_0/adapter/Adam_gate": np.zeros((32,), np.float32)}
    elif case == "layer_more":
        config["num_hidden_layers"] = 4
    elif case == "layer_less":
        config["num_hidden_layers"] = 2
    elif case == "hidden":
        config["hidden_size"] = 36
    prefix = _checkpoint_with(tmp_path, config, **kwargs)
    if case == "missing":
        _drop_variable(prefix, "cls/predictions/output_bias")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message) as info:
        convert_checkpoint(prefix, out, ["pytorch", "safetensors"], ConvertOptions(quiet=True))
    assert "\n" not in str(info.value)
    _assert_nothing_written(out)


def _drop_variable(prefix: Path, name: str) -> None:
    """Rewrite the checkpoint without one variable, with TensorFlow."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n != name)
    tensors = [tf.constant(reader.get_tensor(n)) for n in names]
    for path in prefix.parent.glob(f"{prefix.name}.*"):
        path.unlink()
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


def test_pooler_absent_by_design(tmp_path):
    prefix = _checkpoint_with(tmp_path, with_pooler=False)
    result = convert_checkpoint(prefix, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True, dtype="float16"))
    assert sorted(r.detail.split(":")[0] for r in result.plan.absent_by_design) == [
        "rembert.pooler.dense.bias", "rembert.pooler.dense.weight"]
    # The report says what this run did (verify and the model card read it): its format, dtype and what is absent.
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert (report["formats"], report["dtype"]) == (["safetensors"], "float16")
    assert report["absent_by_design"] == [r.detail for r in result.plan.absent_by_design]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # an aborted writer stays quiet
def test_crc_failure_leaves_no_partial_output(tiny_ckpt, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(tiny_ckpt.directory, copy)
    from converters.tf1_checkpoint import CheckpointReader

    entry = CheckpointReader(copy).entries["cls/predictions/output_embedding"]
    data = copy / f"{tiny_ckpt.prefix.name}.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size - 1] ^= 0x40
    data.write_bytes(bytes(raw))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="checksum mismatch in cls/predictions/output_embedding"):
        convert_checkpoint(copy, out, ["pytorch", "safetensors", "tf2"], ConvertOptions(quiet=True))
    _assert_nothing_written(out)
    gc.collect()  # the aborted writers' objects, zipfile's included, are finalised here


def test_existing_output_needs_force(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty; pass --force"):
        convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True))
    assert (out / "keep.txt").read_text() == "mine"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, force=True))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_kernel_saved_in_row_slices_is_transposed_whole(tmp_path):
    """TF1's partitioners split a kernel [in, out] by rows; its PyTorch weight is the transpose of the whole."""
    import tensorflow as tf

    from testkit.synthetic_checkpoint import synthetic_variables
    from validation.parity import verify_conversion

    values = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=3)
    kernel = "bert/encoder/layer_0/intermediate/dense/kernel"  # [hidden 32, intermediate 37]
    rows, cols = values[kernel].shape
    names, specs, tensors = [], [], []
    for name, value in sorted(values.items()):
        parts = [("0,10:-", value[:10]), (f"10,{rows - 10}:-", value[10:])] if name == kernel else [("", value)]
        for spec, part in parts:
            names.append(name)
            specs.append(f"{rows} {cols} {spec}" if spec else "")
            tensors.append(tf.constant(part))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    tf.raw_ops.SaveV2(prefix=str(ckpt / "model.ckpt-1"), tensor_names=names, shape_and_slices=specs, tensors=tensors)
    (ckpt / "bert_config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    out = tmp_path / "out"
    convert_checkpoint(ckpt / "model.ckpt-1", out, ["safetensors", "tf2"], ConvertOptions(quiet=True))
    weight = load_file(out / "model.safetensors")["rembert.encoder.layer.0.intermediate.dense.weight"]
    np.testing.assert_array_equal(weight.numpy(), values[kernel].T)
    assert verify_conversion(ckpt / "model.ckpt-1", out, heads=("RemBertModel",)).passed


def test_an_output_embedding_name_taken_by_another_rule_is_refused(tiny_ckpt, tmp_path):
    """The word embedding as the output embedding would leave its own place empty (nothing listed missing)."""
    with pytest.raises(UserError, match="would be both embeddings.word_embeddings.weight and "
                                        "cls.predictions.decoder.weight"):
        convert_checkpoint(tiny_ckpt.prefix, tmp_path / "out", ["safetensors"],
                           ConvertOptions(quiet=True, output_embedding_name="bert/embeddings/word_embeddings"))
    assert not (tmp_path / "out").exists()


def test_inspect_refuses_what_convert_refuses(tmp_path):
    """A mapped variable that is not float, and --labels for a checkpoint without a task head."""
    import tensorflow as tf

    from converters.convert import inspect_checkpoint
    from testkit.synthetic_checkpoint import synthetic_variables

    values = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=3)
    values["bert/embeddings/token_type_embeddings"] = values["bert/embeddings/token_type_embeddings"].astype(np.int32)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    tf.raw_ops.SaveV2(prefix=str(ckpt / "model.ckpt-1"), tensor_names=sorted(values),
                      shape_and_slices=[""] * len(values), tensors=[tf.constant(values[n]) for n in sorted(values)])
    (ckpt / "bert_config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    inspected = inspect_checkpoint(ckpt / "model.ckpt-1")
    assert not inspected.ok
    (row,) = [r for r in inspected.rows if r.status == "error"]
    assert row.variable == "bert/embeddings/token_type_embeddings" and "dtype int32" in row.detail
    with pytest.raises(UserError, match="dtype int32"):
        convert_checkpoint(ckpt / "model.ckpt-1", tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))

    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    for run in (lambda o: inspect_checkpoint(EXAMPLE_CKPT, o),
                lambda o: convert_checkpoint(EXAMPLE_CKPT, tmp_path / "out2", ["safetensors"], o)):
        with pytest.raises(UserError, match="--labels given but the checkpoint has no task head"):
            run(ConvertOptions(quiet=True, labels=labels))


@pytest.mark.parametrize("hidden_act", ["relu", "gelu_pytorch_tanh"])
def test_a_transformers_config_with_another_activation_is_refused(converted, tiny_ckpt, tmp_path, hidden_act):
    # The original graph uses gelu; a relu model (or a gelu form verify cannot name) would fail verify later.
    config = json.loads((converted / "config.json").read_text())
    config["hidden_act"] = hidden_act
    (tmp_path / "hf_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=f"hidden_act '{hidden_act}'.*--activation tanh"):
        convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"],
                           ConvertOptions(config=tmp_path / "hf_config.json", quiet=True))
    assert not out.exists()
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"],
                       ConvertOptions(config=tmp_path / "hf_config.json", activation="exact", quiet=True))
    assert json.loads((out / "config.json").read_text())["hidden_act"] == "gelu"
    # verify takes that config too: the activation is the one the conversion report records
    from validation.parity import verify_conversion

    report = verify_conversion(tiny_ckpt.prefix, out, original_config=tmp_path / "hf_config.json",
                               heads=("RemBertModel",))
    assert report.passed, [r.detail for r in report.tensor_failures]
    # A report whose record is not a name: against the original config the activation row fails; with this
    # config.json (another gelu form) nothing says which form was chosen, and one line says so.
    recorded = json.loads((out / "conversion_report.json").read_text())
    recorded["activation"]["hidden_act"] = ["gelu"]
    (out / "conversion_report.json").write_text(json.dumps(recorded))
    report = verify_conversion(tiny_ckpt.prefix, out, heads=("RemBertModel",), functional=False)
    assert [r.tensor for r in report.tensor_failures] == ["config.json hidden_act"]
    for remove in (False, True):
        if remove:
            (out / "conversion_report.json").unlink()
        with pytest.raises(UserError, match="does not record which one it was converted with"):
            verify_conversion(tiny_ckpt.prefix, out, original_config=tmp_path / "hf_config.json")


def test_no_format_is_named_as_such(tiny_ckpt, tmp_path):
    with pytest.raises(UserError, match="^no format given; use some of"):
        convert_checkpoint(tiny_ckpt.prefix, tmp_path / "out", [], ConvertOptions(quiet=True))
    with pytest.raises(UserError, match="^unknown format[(]s[)] onnx; use some of"):
        convert_checkpoint(tiny_ckpt.prefix, tmp_path / "out", ["onnx"], ConvertOptions(quiet=True))


def test_a_single_format_takes_the_special_ids_from_the_sentencepiece_model_beside_it(tmp_path):
    """pytorch / safetensors / tf2 convert no tokenizer, but config.json's pad/bos/eos must still be the ids of
    [PAD] / [CLS] / [SEP] in the model's vocabulary (RemBERT's defaults 312 / 313 are two words in the example's)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(EXAMPLE_CKPT / "sentencepiece.model"))
    expected = {"pad_token_id": sp.piece_to_id("[PAD]"), "bos_token_id": sp.piece_to_id("[CLS]"),
                "eos_token_id": sp.piece_to_id("[SEP]")}
    assert sp.id_to_piece(312) != "[CLS]" and expected["bos_token_id"] != 312
    convert_checkpoint(EXAMPLE_CKPT, tmp_path / "one", ["safetensors"], ConvertOptions(quiet=True))
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert {k: config[k] for k in expected} == expected
    assert not (tmp_path / "one" / "tokenizer.json").exists()


def test_the_original_config_beside_the_checkpoint_wins_over_a_config_json(tmp_path):
    """A folder holding both bert_config.json and a transformers config.json (an earlier output copied beside it)
    converts with the original: taking config.json would convert with whatever that file says."""
    from rembert_ref.config import RemBertConfig

    ckpt = tmp_path / "ck"
    shutil.copytree(EXAMPLE_CKPT, ckpt)
    other = RemBertConfig.from_original_json_file(ckpt / "bert_config.json").to_dict()
    other["hidden_act"] = "gelu"  # exact gelu: the original config converts to the tanh form
    (ckpt / "config.json").write_text(json.dumps(other))
    convert_checkpoint(ckpt, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    expected = RemBertConfig.from_original_json_file(ckpt / "bert_config.json").hidden_act
    assert written["hidden_act"] == expected != other["hidden_act"]


def _sentencepiece_with_cls_and_sep_swapped(path: Path) -> Path:
    """A 512-piece model (the example's size) whose [CLS] and [SEP] ids are each other's in the example's model."""
    from testkit.spm_models import train_sentencepiece

    return train_sentencepiece(path, vocab_size=512, user_defined_symbols=("[SEP]", "[CLS]", "[MASK]"))


def test_the_special_ids_come_from_the_tokenizer_converted_not_the_one_beside(tmp_path):
    """With --tokenizer, config.json's pad/bos/eos are that model's ids: the tokenizer files and the config
    must agree even where the checkpoint's folder holds another SentencePiece model."""
    import sentencepiece as spm

    model = _sentencepiece_with_cls_and_sep_swapped(tmp_path / "other.model")
    given = spm.SentencePieceProcessor(model_file=str(model))
    beside = spm.SentencePieceProcessor(model_file=str(EXAMPLE_CKPT / "sentencepiece.model"))
    assert given.piece_to_id("[CLS]") != beside.piece_to_id("[CLS]")  # otherwise the test proves nothing
    out = tmp_path / "out"
    convert_checkpoint(EXAMPLE_CKPT, out, ["safetensors"], ConvertOptions(quiet=True, tokenizer=model))
    config = json.loads((out / "config.json").read_text())
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (
        given.piece_to_id("[PAD]"), given.piece_to_id("[CLS]"), given.piece_to_id("[SEP]"))


def test_a_sentencepiece_model_beside_that_does_not_fit_is_no_reason_to_refuse_a_conversion_without_one(tmp_path):
    """pytorch / safetensors / tf2 convert no tokenizer: a model beside the checkpoint with another vocabulary
    size only cannot lend its special ids (the defaults inside the vocabulary stay); it must not fail the run."""
    from rembert_ref.config import RemBertConfig
    from testkit.spm_models import train_sentencepiece

    ckpt = tmp_path / "ck"
    shutil.copytree(EXAMPLE_CKPT, ckpt)
    train_sentencepiece(ckpt / "sentencepiece.model", vocab_size=300)  # the config says 512
    convert_checkpoint(ckpt, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    defaults = RemBertConfig.from_original_json_file(ckpt / "bert_config.json")
    assert config["vocab_size"] == defaults.vocab_size
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        assert config[name] == getattr(defaults, name) < defaults.vocab_size, name


def test_the_result_the_report_and_before_commit_name_every_file_written(tmp_path):
    """conversion_report.json lists (and with --checksums hashes) every file but itself and config.json, the
    tokenizer's included; the result names every file in the output, and `before_commit` sees every staged file
    with the sha256 of each weight file as written (bundle's SHA256SUMS trusts those)."""
    import hashlib

    seen = {}

    def before_commit(staged):
        seen["names"] = sorted(p.name for p in staged.files if p.is_file() and p.parent == staged.output_dir)
        seen["listed"] = sorted(p.name for p in staged.files)
        seen["staged"] = sorted(p.name for p in staged.output_dir.iterdir())
        seen["digests"] = dict(staged.digests)
        seen["hashed"] = {name: hashlib.sha256((staged.output_dir / name).read_bytes()).hexdigest()
                          for name in staged.digests}

    out = tmp_path / "out"
    options = ConvertOptions(quiet=True, checksums=True, tokenizer=EXAMPLE_CKPT / "sentencepiece.model")
    result = convert_checkpoint(EXAMPLE_CKPT, out, ["pytorch", "safetensors"], options,
                                before_commit=before_commit, hash_in_stream=True)
    written = sorted(p.name for p in out.iterdir())
    assert "tokenizer.json" in written and "sentencepiece.model" in written
    assert sorted(p.name for p in result.files) == written and all(p.parent == out for p in result.files)
    assert seen["names"] == seen["listed"] == seen["staged"] == written
    assert sorted(seen["digests"]) == ["model.safetensors", "pytorch_model.bin"]
    assert seen["digests"] == seen["hashed"]
    files = json.loads((out / "conversion_report.json").read_text())["files"]
    assert sorted(files) == sorted(set(written) - {"config.json", "conversion_report.json"})
    for name, info in files.items():
        data = (out / name).read_bytes()
        assert (info["bytes"], info["sha256"]) == (len(data), hashlib.sha256(data).hexdigest()), name


def test_a_config_that_is_a_folder_is_refused_by_name(tmp_path):
    """The library takes any path as config (the CLI's parser refuses folders): a folder is a one-line UserError
    naming it, before anything is written, not an IsADirectoryError from opening it."""
    out = tmp_path / "out"
    with pytest.raises(UserError, match=f"^config file {EXAMPLE_CKPT} is a folder, not a file; pass"):
        convert_checkpoint(EXAMPLE_CKPT, out, ["safetensors"], ConvertOptions(quiet=True, config=EXAMPLE_CKPT))
    _assert_nothing_written(out)


def test_a_special_id_outside_the_vocabulary_from_a_transformers_config_is_dropped(tmp_path):
    """Without a SentencePiece model to read them from, ids a --config config.json carries stay only inside the
    vocabulary: a negative one (as some exporters write for "none") is no token id either."""
    from rembert_ref.config import RemBertConfig

    ckpt = tmp_path / "ck"
    shutil.copytree(EXAMPLE_CKPT, ckpt)
    (ckpt / "sentencepiece.model").unlink()
    values = RemBertConfig.from_original_json_file(ckpt / "bert_config.json").to_dict()
    values.update(pad_token_id=-1, bos_token_id=values["vocab_size"], eos_token_id=values["vocab_size"] - 1)
    (tmp_path / "config.json").write_text(json.dumps(values))
    convert_checkpoint(ckpt, tmp_path / "out", ["safetensors"],
                       ConvertOptions(quiet=True, config=tmp_path / "config.json"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (
        None, None, values["vocab_size"] - 1)


@pytest.mark.parametrize(("option", "message"), [("dtype", "^unknown dtype 'int8'"),
                                                 ("activation", "^unknown activation 'relu'")])
def test_an_unknown_dtype_or_activation_is_refused_by_name_before_anything_is_written(tmp_path, option, message):
    """The library takes any string (the CLI offers only the choices): with a transformers config.json, whose
    activation is not read through the original config's checks, an unknown one must still be a UserError."""
    from rembert_ref.config import RemBertConfig

    config = tmp_path / "config.json"
    config.write_text(json.dumps(RemBertConfig.from_original_json_file(EXAMPLE_CKPT / "bert_config.json").to_dict()))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        convert_checkpoint(EXAMPLE_CKPT, out, ["safetensors"],
                           ConvertOptions(quiet=True, config=config, **{option: {"dtype": "int8"}.get(option, "relu")}))
    _assert_nothing_written(out)


def test_without_the_mlm_head_config_json_names_the_class_that_loads_the_file(tmp_path):
    """--no-mlm-head writes the bare model's keys: config.json's architectures must name the transformers class
    whose keys those are, or from_pretrained of that class drops and re-initialises weights."""
    import transformers

    out = tmp_path / "out"
    convert_checkpoint(EXAMPLE_CKPT, out, ["safetensors"], ConvertOptions(quiet=True, mlm_head=False))
    (architecture,) = json.loads((out / "config.json").read_text())["architectures"]
    _, info = getattr(transformers, architecture).from_pretrained(out, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
