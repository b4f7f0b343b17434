"""verify's orchestration (validation/parity.py around the comparisons): which formats and heads a folder is
verified in, on which probe inputs, what each switch leaves out, and the one-line refusals of a folder or an
option that cannot be verified. The comparisons themselves and the report files are tested in
test_validation.py; here each expectation comes from the files, the tokenizer or numpy, not from verify.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.convert import ConvertOptions, convert_checkpoint
from rembert_ref.errors import UserError
from validation import parity
from validation.parity import HEADS, MULTILINGUAL_SAMPLE, SENTENCE_PAIR, SHORT_TEXT, verify_conversion

LANGUAGE_MODELS = {"RemBertForMaskedLM", "RemBertForCausalLM"}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"


@pytest.fixture(scope="module")
def all_formats(tiny_ckpt, tmp_path_factory) -> Path:
    """pytorch_model.bin, model.safetensors and tf_model.h5 of the tiny checkpoint (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("orchestration") / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors", "tf2"], ConvertOptions(quiet=True))
    return out


def _only(folder: Path, tmp_path: Path, *names: str) -> Path:
    """A folder holding config.json, conversion_report.json and the named files of `folder`."""
    copy = tmp_path / "only"
    copy.mkdir()
    for name in ("config.json", "conversion_report.json", *names):
        shutil.copy(folder / name, copy / name)
    return copy


def _mapped(folder: Path) -> int:
    return len(json.loads((folder / "conversion_report.json").read_text())["mapped"])


# -- which formats ------------------------------------------------------------------------------------------


def test_a_path_that_is_no_folder_or_a_folder_without_config_json_is_one_line(tiny_ckpt, all_formats, tmp_path):
    not_a_folder = tmp_path / "weights.bin"
    not_a_folder.write_bytes(b"weights")
    with pytest.raises(UserError, match="weights.bin is not a directory; point at a folder written by"):
        verify_conversion(tiny_ckpt.prefix, not_a_folder)
    no_config = _only(all_formats, tmp_path, "model.safetensors")
    (no_config / "config.json").unlink()
    with pytest.raises(UserError, match="only has no config.json; point at a folder written by"):
        verify_conversion(tiny_ckpt.prefix, no_config)


def test_an_unknown_format_is_named_not_reported_as_absent(tiny_ckpt, all_formats):
    with pytest.raises(UserError, match=r"^unknown format\(s\) onnx; use some of: pytorch, safetensors, tf2$"):
        verify_conversion(tiny_ckpt.prefix, all_formats, formats=("safetensors", "onnx"))


def test_every_absent_format_asked_for_is_named(tiny_ckpt, all_formats, tmp_path):
    folder = _only(all_formats, tmp_path, "model.safetensors")
    with pytest.raises(UserError, match="has no pytorch, tf2 files; it holds safetensors: check it with "
                                        "--format safetensors, or leave --format out"):
        verify_conversion(tiny_ckpt.prefix, folder, formats=("safetensors", "pytorch", "tf2"))


def test_formats_asked_for_run_once_each_in_the_usual_order(tiny_ckpt, all_formats):
    report = verify_conversion(tiny_ckpt.prefix, all_formats, formats=("tf2", "pytorch", "tf2"), functional=False)
    assert report.passed and report.formats == ["pytorch", "tf2"]
    values = [r.format for r in report.tensor_rows if r.check == "values"]
    # One row per mapped tensor and format, pytorch's first: no format proven twice, none left out.
    assert values == ["pytorch"] * _mapped(all_formats) + ["tf2"] * _mapped(all_formats)


def test_a_sharded_safetensors_folder_is_found_by_its_index(tiny_ckpt, tmp_path):
    out = tmp_path / "sharded"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, max_shard_size=100_000))
    assert not (out / "model.safetensors").exists() and (out / "model.safetensors.index.json").is_file()
    report = verify_conversion(tiny_ckpt.prefix, out, functional=False)
    assert report.passed and report.formats == ["safetensors"]


def test_tensors_alone_of_tf_model_h5_need_no_tensorflow(tiny_ckpt, all_formats, monkeypatch):
    """The lean install (no TensorFlow) can still prove tf_model.h5's tensors; only its heads need TensorFlow."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == "tensorflow" else real(name, *args, **kwargs))
    report = verify_conversion(tiny_ckpt.prefix, all_formats, formats=("tf2",), functional=False)
    assert report.passed and report.formats == ["tf2"]
    with pytest.raises(UserError, match="tf_model.h5 needs TensorFlow, which is not installed"):
        verify_conversion(tiny_ckpt.prefix, all_formats, formats=("tf2",))


# -- which heads --------------------------------------------------------------------------------------------


def test_a_bare_model_folder_verifies_every_head_but_the_language_models(tiny_ckpt, tmp_path):
    """convert's --no-mlm-head writes the base model's names bare (`embeddings.*`, as transformers saves
    RemBertModel) and config.json's RemBertModel: every head but the two language models loads from them."""
    from safetensors import safe_open

    out = tmp_path / "bare"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, mlm_head=False))
    with safe_open(out / "model.safetensors", "np") as file:
        names = set(file.keys())
    assert "embeddings.word_embeddings.weight" in names and not any(n.startswith(("rembert.", "cls.")) for n in names)
    report = verify_conversion(tiny_ckpt.prefix, out, tensors=False)
    assert report.passed
    assert {r.head for r in report.rows} == set(HEADS) - LANGUAGE_MODELS


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, Path]:
    """A run_classifier checkpoint (3 labels) and its conversion as sequence classification (safetensors)."""
    from testkit.finetuned import PRESET_CONFIGS, write_finetuned_checkpoint

    root = tmp_path_factory.mktemp("classifier")
    ckpt = write_finetuned_checkpoint(root / "ckpt", PRESET_CONFIGS["run_classifier"], "run_classifier",
                                      num_labels=3, seed=11)
    out = root / "out"
    convert_checkpoint(ckpt, out, ["safetensors"], ConvertOptions(quiet=True, head="sequence-classification"))
    return ckpt, out


def test_the_heads_asked_of_a_fine_tuned_folder_are_the_ones_run(classifier):
    """A fine-tuned folder runs its own head and the base model by default; asked for some heads, only those of
    them it holds (no language model: the files have no MLM head)."""
    ckpt, out = classifier
    assert json.loads((out / "config.json").read_text())["architectures"] == ["RemBertForSequenceClassification"]
    default = verify_conversion(ckpt, out, tensors=False)
    assert default.passed and {r.head for r in default.rows} == {"RemBertModel", "RemBertForSequenceClassification"}
    alone = verify_conversion(ckpt, out, heads=("RemBertForSequenceClassification",), tensors=False)
    assert alone.passed and {r.head for r in alone.rows} == {"RemBertForSequenceClassification"}
    with_lms = verify_conversion(ckpt, out, heads=("RemBertForMaskedLM", "RemBertForCausalLM",
                                                   "RemBertForSequenceClassification"), tensors=False)
    assert with_lms.passed and {r.head for r in with_lms.rows} == {"RemBertForSequenceClassification"}


def test_an_unknown_head_is_named(tiny_ckpt, all_formats):
    with pytest.raises(UserError, match=r"^unknown head\(s\) RemBertForPreTraining; use some of: RemBertModel, "):
        verify_conversion(tiny_ckpt.prefix, all_formats, heads=("RemBertModel", "RemBertForPreTraining"))


def test_an_activation_the_original_graph_has_not_is_one_line(tiny_ckpt, all_formats, tmp_path):
    folder = _only(all_formats, tmp_path, "model.safetensors")
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "hidden_act": "relu"}))
    with pytest.raises(UserError, match="config.json has hidden_act 'relu'; only .* are verifiable"):
        verify_conversion(tiny_ckpt.prefix, folder)


# -- the probe ------------------------------------------------------------------------------------------------


def test_a_folder_with_a_tokenizer_is_probed_with_its_own_tokens(tmp_path):
    """The rows are the folder's tokenizer on the built-in texts, in order, each padded to the longest."""
    from tokenizers import Tokenizer

    out = tmp_path / "with-tokenizer"
    convert_checkpoint(EXAMPLE, out, ["safetensors"],
                       ConvertOptions(quiet=True, tokenizer=EXAMPLE / "sentencepiece.model"))
    report = verify_conversion(EXAMPLE, out, heads=("RemBertModel",), tensors=False)
    assert report.passed and report.inputs["description"].startswith("the folder's tokenizer")
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    tokenizer.enable_truncation(parity.MAX_PROBE_TOKENS)
    encodings = [tokenizer.encode(MULTILINGUAL_SAMPLE), tokenizer.encode(*SENTENCE_PAIR), tokenizer.encode(SHORT_TEXT)]
    ids, types, mask = (np.array(report.inputs[k]) for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert ids.shape == (3, max(len(e.ids) for e in encodings)) and len(encodings[2].ids) < ids.shape[1]
    assert set(encodings[1].type_ids) == {0, 1}
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        assert ids[row, :n].tolist() == encoding.ids and types[row, :n].tolist() == encoding.type_ids
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)


def test_without_a_tokenizer_the_seed_chooses_the_ids(tiny_ckpt, all_formats):
    """Seeded ids: two rows of half the probe length, drawn over the whole vocabulary, then a short row."""
    report = verify_conversion(tiny_ckpt.prefix, all_formats, seed=5, formats=("safetensors",), heads=("RemBertModel",),
                               tensors=False)
    assert report.passed and report.inputs["seed"] == 5
    assert report.inputs["description"].startswith("seeded ids (seed 5, no tokenizer)")
    rng = np.random.default_rng(5)
    vocab = json.loads((all_formats / "config.json").read_text())["vocab_size"]
    half = parity.MAX_PROBE_TOKENS // 2
    expected = [rng.integers(0, vocab, size=n).tolist() for n in (half, half, 2)]
    ids = report.inputs["input_ids"]
    assert [row[:len(want)] for row, want in zip(ids, expected, strict=True)] == expected


def test_padding_is_the_configs_pad_token():
    from rembert_ref.config import RemBertConfig

    config = RemBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=40, input_embedding_size=18,
                           output_embedding_size=43, pad_token_id=7)
    inputs = parity.make_inputs(config)
    padded = inputs["attention_mask"] == 0
    assert padded.any() and set(inputs["input_ids"][padded].tolist()) == {7}


# -- the switches -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tolerance", [0.0, -1e-4, float("inf"), float("nan")])
def test_a_tolerance_that_is_not_a_positive_number_is_refused_before_any_work(tiny_ckpt, all_formats, tolerance,
                                                                              monkeypatch):
    monkeypatch.setattr(parity, "_check_folder", lambda *args: pytest.fail("the folder was read"))
    with pytest.raises(UserError, match=f"--tolerance {tolerance} is not a positive number"):
        verify_conversion(tiny_ckpt.prefix, all_formats, tolerance=tolerance)


def test_each_proof_can_be_left_out_and_so_are_its_rows_and_times(tiny_ckpt, all_formats):
    formats = ("pytorch", "safetensors")
    functional = verify_conversion(tiny_ckpt.prefix, all_formats, formats=formats, heads=("RemBertModel",),
                                   tensors=False)
    assert functional.passed and functional.rows and functional.tensor_rows == []
    assert set(functional.seconds) == {"total", "reference", "functional pytorch", "functional safetensors"}
    tensors = verify_conversion(tiny_ckpt.prefix, all_formats, formats=formats, functional=False)
    assert tensors.passed and tensors.rows == [] and tensors.tensor_rows
    assert set(tensors.seconds) == {"total", "tensors pytorch", "tensors safetensors"}


def test_a_refused_report_folder_or_junit_file_costs_no_verify(tiny_ckpt, all_formats, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "verify_conversion", lambda *args, **kwargs: pytest.fail("verify ran"))
    taken = tmp_path / "report"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty; pass --force"):
        parity.verify_to_files(tiny_ckpt.prefix, all_formats, report_dir=taken)
    junit = tmp_path / "verify.xml"
    junit.write_text("<earlier/>")
    with pytest.raises(UserError, match="exists; pass --force"):
        parity.verify_to_files(tiny_ckpt.prefix, all_formats, junit_file=junit)
    assert (taken / "notes.txt").read_text() == "mine" and junit.read_text() == "<earlier/>"


# -- the format loaders ---------------------------------------------------------------------------------------

H5_GAMMA = "rembert/encoder/layer_._{}/attention/output/LayerNorm/gamma:0"  # below the root, as Keras names it


def _stored(file, name: str) -> str:
    """The path in tf_model.h5 of the weight Keras calls `name` (its layer group and weight_names entry)."""
    (stored,) = [f"{layer}/{weight.decode()}" for layer in file for weight in file[layer].attrs["weight_names"]
                 if weight.decode().split("/", 1)[1] == name]
    return stored


def test_an_h5_dataset_of_the_wrong_shape_fails_each_tf2_head_by_name(tiny_ckpt, all_formats, tmp_path):
    """A weight of another shape is a weight the file lacks, named in each head's load row; it must not reach
    TensorFlow (which would stop the whole verify) nor be created fresh in its place."""
    import h5py

    folder = _only(all_formats, tmp_path, "tf_model.h5")
    with h5py.File(folder / "tf_model.h5", "a") as file:
        stored = _stored(file, H5_GAMMA.format(0))
        width = file[stored].shape[0]
        del file[stored]
        file[stored] = np.ones(width - 1, np.float32)
    heads = ("RemBertModel", "RemBertForTokenClassification")
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=heads)
    assert ("tf2", stored, "shape") in {(r.format, r.tensor, r.check) for r in report.tensor_failures}
    assert {(r.head, r.output) for r in report.failures} == {(head, f"load: the file lacks {H5_GAMMA.format(0)}")
                                                             for head in heads}


def test_a_safetensors_tensor_of_the_wrong_shape_fails_each_head_by_name(tiny_ckpt, all_formats, tmp_path):
    """torch's load_state_dict would stop the whole verify on it; each head's load row names it instead."""
    from safetensors.numpy import load_file, save_file

    folder = _only(all_formats, tmp_path, "model.safetensors")
    tensors = load_file(folder / "model.safetensors")
    name = "rembert.encoder.layer.0.attention.output.LayerNorm.weight"
    tensors[name] = tensors[name][:-1].copy()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    heads = ("RemBertModel", "RemBertForTokenClassification")
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=heads)
    assert ("safetensors", name, "shape") in {(r.format, r.tensor, r.check) for r in report.tensor_failures}
    assert {(r.head, r.output) for r in report.failures} == {
        (head, f"load: wrong shape of {name.removeprefix('rembert.')}") for head in heads}

def test_through_an_external_link_the_tf2_heads_run_on_what_keras_loads(tiny_ckpt, all_formats, tmp_path):
    """The tensor proof fails the link; the heads still measure the values a loader gets through it, read from
    the other file, even where that file names them by a path this file also holds (here layer 0's)."""
    import h5py

    folder = _only(all_formats, tmp_path, "tf_model.h5")
    elsewhere = tmp_path / "elsewhere.h5"
    with h5py.File(folder / "tf_model.h5", "a") as file:
        first, second = _stored(file, H5_GAMMA.format(0)), _stored(file, H5_GAMMA.format(1))
        values = file[second][()]
        assert not np.array_equal(values, file[first][()])
        with h5py.File(elsewhere, "w") as other:
            other[first] = values  # layer 1's own values, under layer 0's path
        del file[second]
        file[second] = h5py.ExternalLink(str(elsewhere), first)
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=("RemBertModel",))
    assert ("tf2", second, "link") in {(r.format, r.tensor, r.check) for r in report.tensor_failures}
    assert report.rows and not report.failures


def test_the_heads_of_a_bfloat16_file_run_in_float32(tiny_ckpt, tmp_path, monkeypatch):
    """The tolerances allow for the weights' rounding to bfloat16, not for bfloat16 arithmetic: the torch heads
    run on the weights widened to float32 (as transformers loads a file by default)."""
    import torch

    out = tmp_path / "bf16"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, dtype="bfloat16"))
    seen = []
    run = parity._TorchHeads.run

    def recording(self, model, inputs):
        outputs = run(self, model, inputs)
        seen.append({value.dtype for value in (outputs["logits"] if "logits" in outputs else
                                               outputs["last_hidden_state"], *outputs["hidden_states"])})
        return outputs

    monkeypatch.setattr(parity._TorchHeads, "run", recording)
    report = verify_conversion(tiny_ckpt.prefix, out, heads=("RemBertModel", "RemBertForTokenClassification"),
                               tensors=False)
    assert report.passed and seen == [{torch.float32}] * 2


def test_the_imports_ahead_are_done_when_the_block_ends(monkeypatch):
    """verify waits for its import thread at the end (a process exiting mid-import can crash)."""
    import threading

    finished = threading.Event()
    release = threading.Event()

    def slow_import(formats):
        release.wait(30)
        finished.set()

    monkeypatch.setattr(parity, "import_ahead", slow_import)
    with parity.imports_ahead(["pytorch"]):
        assert not finished.is_set()
        release.set()
    assert finished.is_set()


def test_an_import_ahead_that_fails_in_any_way_is_left_to_the_formats_own_step(monkeypatch):
    """The thread's import error is not reported there (a traceback on stderr): the format's own step raises it
    with its message."""
    import importlib

    def broken(name):
        raise RuntimeError(f"{name} is broken")

    monkeypatch.setattr(importlib, "import_module", broken)
    parity.import_ahead(["tf2"])
