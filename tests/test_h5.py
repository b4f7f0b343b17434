"""tf_model.h5: Hugging Face's Keras layout, the values of the TF1 checkpoint, dtypes, determinism, CLI, errors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from rembert_convert.cli import main
from converters.convert import ConvertOptions, convert_checkpoint
from rembert_ref.errors import UserError
from converters.h5_writer import save_attribute
from converters.tf1_checkpoint import CheckpointReader
from converters.mapping import MLM, OUTPUT_EMBEDDING, RULES, expand
from rembert_ref.config import RemBertConfig
from rembert_ref.weight_files import h5_attribute
from rembert_ref.tf_model import read_h5_weights


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected(config: RemBertConfig, mlm_head: bool) -> dict[str, str]:
    """Keras name below the root -> original variable, from the mapping table."""
    names = {}
    for rule in RULES:
        if rule.part == MLM and not mlm_head:
            continue
        for source, _, tf in expand(rule, config):
            names[tf] = "cls/predictions/output_embedding" if source == OUTPUT_EMBEDDING else source
    return names


@pytest.fixture(scope="module")
def h5_dir(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("h5") / "model"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True))
    return out


# Written from transformers' TF RemBERT (modeling_tf_rembert.py: the layer and weight names of
# TFRemBertForMaskedLM), independently of the mapping table: Keras name below the root -> original variable.
KERAS_NAMES_BY_HAND = {
    "rembert/embeddings/word_embeddings/weight:0": "bert/embeddings/word_embeddings",
    "rembert/embeddings/position_embeddings/embeddings:0": "bert/embeddings/position_embeddings",
    "rembert/embeddings/token_type_embeddings/embeddings:0": "bert/embeddings/token_type_embeddings",
    "rembert/embeddings/LayerNorm/gamma:0": "bert/embeddings/LayerNorm/gamma",
    "rembert/embeddings/LayerNorm/beta:0": "bert/embeddings/LayerNorm/beta",
    "rembert/encoder/embedding_hidden_mapping_in/kernel:0": "bert/encoder/embedding_hidden_mapping_in/kernel",
    "rembert/encoder/layer_._1/attention/self/query/kernel:0": "bert/encoder/layer_1/attention/self/query/kernel",
    "rembert/encoder/layer_._2/attention/self/value/bias:0": "bert/encoder/layer_2/attention/self/value/bias",
    "rembert/encoder/layer_._0/attention/output/LayerNorm/gamma:0":
        "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
    "rembert/encoder/layer_._1/intermediate/dense/kernel:0": "bert/encoder/layer_1/intermediate/dense/kernel",
    "rembert/encoder/layer_._2/output/dense/kernel:0": "bert/encoder/layer_2/output/dense/kernel",
    "rembert/encoder/layer_._2/output/LayerNorm/beta:0": "bert/encoder/layer_2/output/LayerNorm/beta",
    "rembert/pooler/dense/kernel:0": "bert/pooler/dense/kernel",
    "mlm___cls/predictions/dense/kernel:0": "cls/predictions/transform/dense/kernel",
    "mlm___cls/predictions/LayerNorm/gamma:0": "cls/predictions/transform/LayerNorm/gamma",
    "mlm___cls/predictions/decoder/weight:0": "cls/predictions/output_embedding",
    "mlm___cls/predictions/decoder/bias:0": "cls/predictions/output_bias",
}


def test_keras_names_written_by_hand_hold_their_original_variables(tiny_ckpt, h5_dir):
    """Keras kernels are [in, out] like TF1's, so every value is the original's as it is."""
    with h5py.File(h5_dir / "tf_model.h5", "r") as f:
        for name, source in KERAS_NAMES_BY_HAND.items():
            layer = name.split("/", 1)[0]
            stored = f[f"{layer}/tf_rem_bert_for_masked_lm/{name}"][()]
            np.testing.assert_array_equal(stored, tiny_ckpt.variables[source], err_msg=name)


def test_layout_is_hugging_face_keras(tiny_ckpt, h5_dir):
    config = RemBertConfig.from_original(tiny_ckpt.config)
    with h5py.File(h5_dir / "tf_model.h5", "r") as f:
        assert h5_attribute(f, "layer_names") == ["rembert", "mlm___cls"]
        assert set(f.keys()) == {"rembert", "mlm___cls"}
        stored = {layer: h5_attribute(f[layer], "weight_names") for layer in ("rembert", "mlm___cls")}
        for layer, names in stored.items():
            for name in names:
                assert name.startswith(f"tf_rem_bert_for_masked_lm/{layer}/"), name
                assert isinstance(f[layer][name], h5py.Dataset)  # nested groups, as Keras' save_weights makes
        below_root = {n.split("/", 1)[1] for names in stored.values() for n in names}
    assert below_root == set(_expected(config, mlm_head=True))
    # Spot checks of the documented names.
    assert "rembert/encoder/layer_._0/attention/self/query/kernel:0" in below_root
    assert "rembert/embeddings/word_embeddings/weight:0" in below_root
    assert "rembert/embeddings/position_embeddings/embeddings:0" in below_root
    assert "rembert/encoder/layer_._2/output/LayerNorm/gamma:0" in below_root
    assert "mlm___cls/predictions/decoder/weight:0" in below_root


def test_values_are_the_checkpoint_values_in_tf_layout(tiny_ckpt, h5_dir):
    config = RemBertConfig.from_original(tiny_ckpt.config)
    values = read_h5_weights(h5_dir / "tf_model.h5")
    expected = _expected(config, mlm_head=True)
    for tf_name, source in expected.items():
        original = tiny_ckpt.variables[source]
        assert values[tf_name].dtype == np.float32
        # Keras kernels are [in, out] like TF1: nothing is transposed, every value is bit-identical.
        np.testing.assert_array_equal(values[tf_name], original, err_msg=tf_name)
    c = tiny_ckpt.config
    assert values["mlm___cls/predictions/decoder/weight:0"].shape == (c["vocab_size"], c["output_embedding_size"])
    assert values["rembert/encoder/embedding_hidden_mapping_in/kernel:0"].shape == (
        c["input_embedding_size"], c["hidden_size"])


def test_streamed_file_is_what_h5py_writes_into_the_same_layout(tiny_ckpt, tmp_path, monkeypatch):
    """The writer streams h5py's layout file with the values spliced in; h5py itself writing the checkpoint's
    values into a copy of that layout gives the same bytes."""
    import converters.h5_writer as h5_writer

    kept = tmp_path / "layout.h5"
    real_lay_out = h5_writer.H5Writer._lay_out

    def lay_out(self):
        regions = real_lay_out(self)
        shutil.copyfile(self.layout_path, kept)
        return regions

    monkeypatch.setattr(h5_writer.H5Writer, "_lay_out", lay_out)
    out = tmp_path / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True, chunk_bytes=256))
    config = RemBertConfig.from_original(tiny_ckpt.config)
    with h5py.File(kept, "r+") as f:
        for tf_name, source in _expected(config, mlm_head=True).items():
            f[f"{tf_name.split('/', 1)[0]}/tf_rem_bert_for_masked_lm/{tf_name}"][...] = tiny_ckpt.variables[source]
    assert kept.read_bytes() == (out / "tf_model.h5").read_bytes()


def test_no_mlm_head_layout(tiny_ckpt, tmp_path):
    out = tmp_path / "bare"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True, mlm_head=False))
    config = RemBertConfig.from_original(tiny_ckpt.config)
    with h5py.File(out / "tf_model.h5", "r") as f:
        assert h5_attribute(f, "layer_names") == ["rembert"]
        names = h5_attribute(f["rembert"], "weight_names")
    assert all(n.startswith("tf_rem_bert_model/rembert/") for n in names)
    assert {n.split("/", 1)[1] for n in names} == set(_expected(config, mlm_head=False))


def test_float16_and_refused_bfloat16(tiny_ckpt, tmp_path):
    out = tmp_path / "fp16"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True, dtype="float16"))
    values = read_h5_weights(out / "tf_model.h5")
    kernel = "rembert/encoder/layer_._1/intermediate/dense/kernel:0"
    assert values[kernel].dtype == np.float16
    np.testing.assert_array_equal(values[kernel],
                                  tiny_ckpt.variables["bert/encoder/layer_1/intermediate/dense/kernel"].astype(np.float16))

    with pytest.raises(UserError, match="bfloat16.*float32 or float16"):
        convert_checkpoint(tiny_ckpt.prefix, tmp_path / "bf16", ["tf2"], ConvertOptions(quiet=True, dtype="bfloat16"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16"]  # nothing partial left behind


def test_same_bytes_every_run_and_any_slice_size(tiny_ckpt, h5_dir, tmp_path):
    again = tmp_path / "again"
    convert_checkpoint(tiny_ckpt.prefix, again, ["tf2"], ConvertOptions(quiet=True))
    # 64-byte slices: every tensor arrives in many row slices and must land in the same bytes.
    sliced = tmp_path / "sliced"
    convert_checkpoint(tiny_ckpt.prefix, sliced, ["tf2"], ConvertOptions(quiet=True, chunk_bytes=64))
    reference = _sha256(h5_dir / "tf_model.h5")
    assert _sha256(again / "tf_model.h5") == reference
    assert _sha256(sliced / "tf_model.h5") == reference


def test_one_pass_writes_h5_next_to_torch_files(tiny_ckpt, tmp_path):
    out = tmp_path / "all"
    result = convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "tf2"], ConvertOptions(quiet=True, checksums=True))
    assert {p.name for p in result.files} >= {"pytorch_model.bin", "tf_model.h5", "config.json"}
    report = result.report
    assert "tf_model.h5" in report["files"]
    assert report["files"]["tf_model.h5"]["sha256"] == _sha256(out / "tf_model.h5")


def test_large_attributes_are_split_like_keras(tmp_path):
    names = [f"tf_rem_bert_for_masked_lm/rembert/encoder/layer_._{i}/attention/self/query/kernel:0".encode()
             for i in range(2000)]  # ~150 KB: above HDF5's 64 KB object-header limit
    with h5py.File(tmp_path / "a.h5", "w") as f:
        save_attribute(f, "weight_names", names)
        assert "weight_names" not in f.attrs and "weight_names0" in f.attrs and "weight_names2" in f.attrs
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert h5_attribute(f, "weight_names") == [n.decode() for n in names]


def test_cli_tf2(tiny_ckpt, tmp_path):
    out = tmp_path / "cli"
    runner = CliRunner()
    result = runner.invoke(main, ["tf2", str(tiny_ckpt.prefix), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "tf_model.h5" in result.output
    assert (out / "tf_model.h5").is_file() and (out / "config.json").is_file()

    again = runner.invoke(main, ["tf2", str(tiny_ckpt.prefix), "-o", str(out)])
    assert again.exit_code == 2
    assert "not empty" in again.output and "--force" in again.output and "Traceback" not in again.output

    bf16 = runner.invoke(main, ["tf2", str(tiny_ckpt.prefix), "-o", str(tmp_path / "x"), "--dtype", "bfloat16"])
    assert bf16.exit_code == 2
    assert len(bf16.output.strip().splitlines()) == 1 and "bfloat16" in bf16.output
    assert not (tmp_path / "x").exists()

    missing = runner.invoke(main, ["tf2", str(tmp_path / "nope"), "-o", str(tmp_path / "y")])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")
    assert not (tmp_path / "y").exists()


def test_unreadable_h5_is_a_user_error(tmp_path):
    bad = tmp_path / "tf_model.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        read_h5_weights(bad)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(UserError, match="no layer_names"):
        read_h5_weights(tmp_path / "plain.h5")
    # A file whose index names what it does not hold (a truncated or hand-edited one): a UserError, not a KeyError.
    with h5py.File(tmp_path / "lost-layer.h5", "w") as f:
        f.attrs["layer_names"] = [b"rembert"]
    with pytest.raises(UserError, match="lists layer 'rembert' but has no such group"):
        read_h5_weights(tmp_path / "lost-layer.h5")
    with h5py.File(tmp_path / "lost-weight.h5", "w") as f:
        f.attrs["layer_names"] = [b"rembert"]
        f.create_group("rembert").attrs["weight_names"] = [b"tf_rem_bert_model/rembert/pooler/dense/bias:0"]
    with pytest.raises(UserError, match="lists weight .* but does not hold it"):
        read_h5_weights(tmp_path / "lost-weight.h5")


@pytest.mark.parametrize("lost", ["a slice", "a tensor"])
def test_values_that_never_arrive_fail_the_writer(tiny_ckpt, tmp_path, monkeypatch, lost):
    """The file is h5py's layout with the values streamed into its datasets: a dataset left short, or never written,
    would keep the layout's zeros, so the writer refuses to finish the file (and the conversion leaves nothing)."""
    import converters.h5_writer as h5_writer

    real_add = h5_writer.H5Writer.add
    slices = []

    def add(self, mapping, chunk):
        if mapping.source == "bert/embeddings/word_embeddings":  # [99, 18]: 33 slices of 256 bytes
            slices.append(chunk.shape)
            if lost == "a tensor" or len(slices) == 2:
                return
        real_add(self, mapping, chunk)

    monkeypatch.setattr(h5_writer.H5Writer, "add", add)
    name = "rembert/embeddings/word_embeddings/weight:0"
    message = {"a slice": f"^{name}: {3 * 18 * 4} bytes short of its dataset$",
               "a tensor": f"^no values arrived for {name}$"}[lost]
    with pytest.raises(RuntimeError, match=message):
        convert_checkpoint(tiny_ckpt.prefix, tmp_path / "out", ["tf2"], ConvertOptions(quiet=True, chunk_bytes=256))
    assert len(slices) > 2 and sorted(p.name for p in tmp_path.iterdir()) == []


def test_failure_midway_leaves_nothing(tiny_ckpt, tmp_path):
    # A corrupted pooler kernel, the last tensor in write order (sorted PyTorch names): the writer has already
    # streamed the rest of tf_model.h5 when its checksum fails.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt.directory, broken)
    with CheckpointReader(broken / "model.ckpt-3") as reader:
        entry = reader.entries["bert/pooler/dense/kernel"]
        data = reader.data_path(entry.shard)
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum"):
        convert_checkpoint(broken / "model.ckpt-3", tmp_path / "out", ["tf2"], ConvertOptions(quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no output, no staging directory
    if Path("/proc/self/fd").is_dir():  # nor a descriptor of the layout file kept open (deleted, but never freed)
        held = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
        assert not [target for target in held if ".tf_model.h5.layout" in target]
