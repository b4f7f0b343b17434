"""Fine-tuned checkpoints: BLEURT-style TF1 SavedModels, run_classifier and run_squad checkpoints, written by
TensorFlow itself with distinct tiny sizes; their task heads mapped by the table, checked against the
original head math in float64, and (interop) loaded by transformers' own classes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from converters.convert import ConvertOptions, convert_checkpoint, find_config, find_sentencepiece
from converters.tf1_checkpoint import resolve_checkpoint
from rembert_convert.cli import main
from rembert_ref.errors import UserError
from testkit.finetuned import (
    PRESET_CONFIGS,
    finetuned_variables,
    head_variables,
    write_finetuned_checkpoint,
    write_tf1_saved_model,
    write_tf2_saved_model,
)
from validation.parity import ORIGINAL, verify_conversion

BLEURT_CONFIG = PRESET_CONFIGS["bleurt"]  # distilled-shaped, no output_embedding_size, embedding_size alias
CLASSIFIER_CONFIG = PRESET_CONFIGS["run_classifier"]
SQUAD_CONFIG = PRESET_CONFIGS["squad"]
NUM_LABELS = 3
ALL = ["pytorch", "safetensors", "tf2"]


@pytest.fixture(scope="module")
def bleurt_dir(tmp_path_factory) -> Path:
    return write_tf1_saved_model(tmp_path_factory.mktemp("bleurt") / "BLEURT-tiny", BLEURT_CONFIG, "bleurt", seed=5)


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    return write_finetuned_checkpoint(tmp_path_factory.mktemp("run_classifier"), CLASSIFIER_CONFIG,
                                      "run_classifier", num_labels=NUM_LABELS, seed=6)


@pytest.fixture(scope="module")
def squad_ckpt(tmp_path_factory) -> Path:
    return write_finetuned_checkpoint(tmp_path_factory.mktemp("squad"), SQUAD_CONFIG, "squad", seed=7)


@pytest.fixture(scope="module")
def bleurt_out(bleurt_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bleurt-out") / "out"
    convert_checkpoint(bleurt_dir, out, ALL, ConvertOptions(quiet=True))
    return out


def _state_dict(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _h5(directory: Path) -> dict[str, np.ndarray]:
    from rembert_ref.tf_model import read_h5_weights

    return read_h5_weights(directory / "tf_model.h5")


def _head_rows(report, head: str) -> list:
    return [r for r in report.rows if r.head == head and not r.output.startswith("hidden_states")]


# -- the SavedModel itself ---------------------------------------------------------------------------------


def test_the_fixture_is_a_tf1_saved_model_that_tensorflow_loads(bleurt_dir):
    import tensorflow as tf

    values = finetuned_variables(BLEURT_CONFIG, "bleurt", seed=5)
    pooled = np.random.default_rng(0).standard_normal((2, BLEURT_CONFIG["hidden_size"])).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(bleurt_dir))
        signature = meta.signature_def["serving_default"]
        kernel = next(v for v in tf.compat.v1.global_variables() if v.op.name == "dense/kernel")
        restored = session.run(kernel)
        predictions = session.run(signature.outputs["predictions"].name,
                                  {signature.inputs["pooled_output"].name: pooled})
    np.testing.assert_array_equal(restored, values["dense/kernel"])
    expected = pooled.astype(np.float64) @ values["dense/kernel"].astype(np.float64) + values["dense/bias"]
    np.testing.assert_allclose(predictions, expected[:, 0], rtol=0, atol=1e-5)


def test_a_saved_model_directory_is_read_through_its_variables_prefix(bleurt_dir, tmp_path):
    prefix = resolve_checkpoint(bleurt_dir)
    assert prefix == bleurt_dir / "variables" / "variables"
    assert find_config(prefix, None) == bleurt_dir / "bert_config.json"
    assert find_sentencepiece(prefix) is None
    copy = tmp_path / "copy"
    shutil.copytree(bleurt_dir, copy)
    (copy / "sent_piece.model").write_bytes(b"x")
    assert find_sentencepiece(resolve_checkpoint(copy)) == copy / "sent_piece.model"
    shutil.rmtree(copy / "variables")
    with pytest.raises(UserError, match=r"has no variables/variables.index"):
        resolve_checkpoint(copy)


def test_a_tf2_object_graph_saved_model_is_refused(tmp_path):
    directory = write_tf2_saved_model(tmp_path / "tf2-model")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"TF2 object-graph SavedModel.*\.ATTRIBUTES/VARIABLE_VALUE.*TF1") as info:
        convert_checkpoint(directory, out, ["safetensors"], ConvertOptions(quiet=True, config=_config(tmp_path)))
    assert "\n" not in str(info.value)
    assert not out.exists()
    shutil.copy(_config(tmp_path), directory / "bert_config.json")
    inspected = CliRunner().invoke(main, ["inspect", str(directory)])
    assert inspected.exit_code == 2 and "TF2 object-graph SavedModel" in inspected.output
    assert "missing" not in inspected.output  # refused outright, not matched row by row


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(CLASSIFIER_CONFIG))
    return path


# -- BLEURT: regression on the pooled output ---------------------------------------------------------------


def test_bleurt_saved_model_converts_to_a_regression_head(bleurt_out):
    config = json.loads((bleurt_out / "config.json").read_text())
    assert config["architectures"] == ["RemBertForSequenceClassification"]
    assert config["problem_type"] == "regression"
    assert config["id2label"] == {"0": "LABEL_0"} and config["label2id"] == {"LABEL_0": 0}
    assert config["input_embedding_size"] == 20 and config["num_hidden_layers"] == 2

    head = head_variables("bleurt", BLEURT_CONFIG["hidden_size"], 1, seed=5)
    state = _state_dict(bleurt_out)
    assert not [k for k in state if k.startswith("cls.")]  # no MLM head needed
    np.testing.assert_array_equal(state["classifier.weight"].numpy(), head["dense/kernel"].T)  # [1, hidden]
    np.testing.assert_array_equal(state["classifier.bias"].numpy(), head["dense/bias"])
    assert "rembert.pooler.dense.weight" in state
    tf_weights = _h5(bleurt_out)
    np.testing.assert_array_equal(tf_weights["classifier/kernel:0"], head["dense/kernel"])  # Keras [hidden, 1]
    report = json.loads((bleurt_out / "conversion_report.json").read_text())
    assert report["task_head"]["rule"] == "dense" and report["task_head"]["decided_by"].startswith("bleurt_config")


def test_bleurt_verify_compares_every_format_with_the_original_head(bleurt_dir, bleurt_out):
    report = verify_conversion(bleurt_dir, bleurt_out)
    assert report.passed
    rows = _head_rows(report, "RemBertForSequenceClassification")
    assert sorted((r.format, r.output, r.reference) for r in rows) == \
        [(fmt, "logits", ORIGINAL) for fmt in ALL]
    assert all(r.shape == (report.inputs["batch"], 1) and r.max_abs < 1e-5 for r in rows)
    # The fine-tuned head is the folder's only head beside the base model, so its encoder's rows are its own.
    assert {r.head for r in report.rows} == {"RemBertModel", "RemBertForSequenceClassification"}
    layers = BLEURT_CONFIG["num_hidden_layers"]
    for fmt in ALL:
        states = {r.output for r in report.rows if (r.head, r.format) == ("RemBertForSequenceClassification", fmt)}
        assert states - {"logits"} == {f"hidden_states.{i}" for i in range(layers + 1)}


@pytest.mark.parametrize("fmt", ["safetensors", "tf2"])
def test_verify_catches_a_wrong_head(bleurt_dir, bleurt_out, tmp_path, fmt):
    """Each format's own head is measured: running the checkpoint's head in its place would pass this."""
    tampered = tmp_path / "tampered"
    shutil.copytree(bleurt_out, tampered)
    if fmt == "safetensors":
        state = _state_dict(tampered)
        state["classifier.bias"] = state["classifier.bias"] + 0.01
        save_file(state, tampered / "model.safetensors", metadata={"format": "pt"})
    else:
        import h5py

        with h5py.File(tampered / "tf_model.h5", "a") as file:
            names = []
            file.visititems(lambda name, item: names.append(name) if name.endswith("classifier/bias:0") else None)
            (name,) = names
            file[name][...] = file[name][...] + 0.01
    report = verify_conversion(bleurt_dir, tampered)
    failed = {(r.head, r.format, r.output) for r in report.failures}
    assert failed == {("RemBertForSequenceClassification", fmt, "logits")}


def test_without_bleurt_config_the_dense_head_is_ambiguous(bleurt_dir, tmp_path):
    copy = tmp_path / "no-bleurt-config"
    shutil.copytree(bleurt_dir, copy)
    (copy / "bleurt_config.json").unlink()
    with pytest.raises(UserError, match=r"dense/kernel \[36, 1\].*--head sequence-classification\|"
                                        r"token-classification\|question-answering"):
        convert_checkpoint(copy, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    convert_checkpoint(copy, tmp_path / "out", ["safetensors"],
                       ConvertOptions(quiet=True, head="sequence-classification"))
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert report["task_head"]["decided_by"] == "--head"


# -- run_classifier: output_weights [num_labels, hidden] ---------------------------------------------------


def test_run_classifier_needs_head_and_names_the_choices(classifier_ckpt, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(classifier_ckpt), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "output_weights [3, 30]" in result.output
    assert "--head sequence-classification|token-classification|question-answering" in result.output
    assert not (tmp_path / "out").exists()


def test_run_classifier_as_sequence_classification_with_labels(classifier_ckpt, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffnegative\r\nneutral\r\npositive\r\n".encode())  # as Windows Notepad saves it
    out = tmp_path / "out"
    convert_checkpoint(classifier_ckpt, out, ALL,
                       ConvertOptions(quiet=True, head="sequence-classification", labels=labels))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["RemBertForSequenceClassification"]
    assert config["problem_type"] == "single_label_classification"
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}

    head = head_variables("run_classifier", CLASSIFIER_CONFIG["hidden_size"], NUM_LABELS, seed=6)
    state = _state_dict(out)
    np.testing.assert_array_equal(state["classifier.weight"].numpy(), head["output_weights"])  # not transposed
    np.testing.assert_array_equal(_h5(out)["classifier/kernel:0"], head["output_weights"].T)
    report = verify_conversion(classifier_ckpt, out)
    assert report.passed
    rows = _head_rows(report, "RemBertForSequenceClassification")
    assert {(r.format, r.output, r.shape) for r in rows} == {(f, "logits", (report.inputs["batch"], NUM_LABELS))
                                                             for f in ALL}


def test_labels_reach_config_json_through_the_cli(classifier_ckpt, tmp_path):
    """--labels must reach the conversion: dropped, config.json would name the classes LABEL_0, LABEL_1, ..."""
    labels = tmp_path / "labels.txt"
    labels.write_text("contradiction\nentailment\nneutral\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["safetensors", str(classifier_ckpt), "-o", str(out), "-q",
                                       "--head", "sequence-classification", "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(labels.read_text().split())}


def test_without_a_report_verify_takes_the_task_head_from_config_json(classifier_ckpt, tmp_path):
    """conversion_report.json is optional: the architecture config.json names says which head the files hold."""
    out = tmp_path / "out"
    convert_checkpoint(classifier_ckpt, out, ["safetensors"], ConvertOptions(quiet=True, head="token-classification"))
    (out / "conversion_report.json").unlink()
    report = verify_conversion(classifier_ckpt, out, functional=False)
    assert report.passed, [(r.tensor, r.check, r.detail) for r in report.tensor_failures]
    assert {"classifier.weight", "classifier.bias"} <= {r.tensor for r in report.tensor_rows if r.check == "values"}


def test_a_config_json_with_another_number_of_labels_fails(classifier_ckpt, tmp_path):
    """transformers sizes the classifier from id2label: one label more and the checkpoint's head no longer fits."""
    out = tmp_path / "out"
    options = ConvertOptions(quiet=True, head="sequence-classification")
    convert_checkpoint(classifier_ckpt, out, ["safetensors"], options)
    values = json.loads((out / "config.json").read_text())
    values["id2label"] = {**values["id2label"], str(NUM_LABELS): "extra"}
    values["label2id"] = {**values["label2id"], "extra": NUM_LABELS}
    (out / "config.json").write_text(json.dumps(values))
    report = verify_conversion(classifier_ckpt, out, functional=False)
    assert [(r.tensor, r.check) for r in report.tensor_failures] == [("config.json num_labels", "config")]
    detail = report.tensor_failures[0].detail
    assert f"{NUM_LABELS + 1}, but the conversion of this checkpoint gives {NUM_LABELS}" in detail


def test_run_classifier_as_token_classification(classifier_ckpt, tmp_path):
    out = tmp_path / "out"
    result = convert_checkpoint(classifier_ckpt, out, ALL, ConvertOptions(quiet=True, head="token-classification"))
    ignored = {r.variable: r.detail for r in result.plan.ignored}
    assert "has none" in ignored["bert/pooler/dense/kernel"]
    assert not [k for k in _state_dict(out) if "pooler" in k]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["RemBertForTokenClassification"]
    report = verify_conversion(classifier_ckpt, out)
    assert report.passed
    rows = _head_rows(report, "RemBertForTokenClassification")
    batch, seq = report.inputs["batch"], report.inputs["seq"]
    assert {(r.format, r.output, r.shape) for r in rows} == {(f, "logits", (batch, seq, NUM_LABELS)) for f in ALL}


@pytest.mark.parametrize(
    ("labels", "message"),
    [("a\nb\n", r"2 label\(s\) given but the head has 3"), ("a\na\nb\n", r"label\(s\) a given twice"),
     ("a\n\nb\n", r"empty label")],
)
def test_bad_labels_files(classifier_ckpt, tmp_path, labels, message):
    path = tmp_path / "labels.txt"
    path.write_text(labels)
    with pytest.raises(UserError, match=message):
        convert_checkpoint(classifier_ckpt, tmp_path / "out", ["safetensors"],
                           ConvertOptions(quiet=True, head="sequence-classification", labels=path))
    assert not (tmp_path / "out").exists()


def test_spaces_around_a_label_are_not_part_of_it(classifier_ckpt, tmp_path):
    """An editor's indentation or trailing blanks would otherwise become label names no one can type back."""
    path = tmp_path / "labels.txt"
    names = ["negative", "neutral", "positive"]
    path.write_text(f"  {names[0]}\t\n{names[1]} \n \t{names[2]}\n")
    convert_checkpoint(classifier_ckpt, tmp_path / "out", ["safetensors"],
                       ConvertOptions(quiet=True, head="sequence-classification", labels=path))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(names)}


# -- run_squad: cls/squad/output_weights [2, hidden] -------------------------------------------------------


def test_squad_converts_to_question_answering_by_its_names(squad_ckpt, tmp_path):
    out = tmp_path / "out"
    result = convert_checkpoint(squad_ckpt, out, ALL, ConvertOptions(quiet=True))
    assert result.plan.task_head.decided_by == "the variable names"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["RemBertForQuestionAnswering"]
    head = head_variables("squad", SQUAD_CONFIG["hidden_size"], 2, seed=7)
    state = _state_dict(out)
    np.testing.assert_array_equal(state["qa_outputs.weight"].numpy(), head["cls/squad/output_weights"])
    assert not [k for k in state if "pooler" in k or k.startswith("cls.")]
    np.testing.assert_array_equal(_h5(out)["qa_outputs/kernel:0"], head["cls/squad/output_weights"].T)
    report = verify_conversion(squad_ckpt, out)
    assert report.passed
    rows = _head_rows(report, "RemBertForQuestionAnswering")
    assert {(r.format, r.output, r.shape) for r in rows} == \
        {(f, o, (report.inputs["batch"], report.inputs["seq"])) for f in ALL for o in ("start_logits", "end_logits")}


def test_squad_head_cannot_be_called_something_else(squad_ckpt, tmp_path):
    with pytest.raises(UserError, match=r"--head sequence-classification does not fit cls/squad/output_weights"):
        convert_checkpoint(squad_ckpt, tmp_path / "out", ["safetensors"],
                           ConvertOptions(quiet=True, head="sequence-classification"))


# -- the table's checks still hold with a head -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"adapter/kernel": np.zeros((30, 4), np.float32)}, r"adapter/kernel matches no mapping or ignore rule"),
     ({"output_bias": np.zeros(4, np.float32)}, r"output_bias has shape \[4\] but the config implies \[3\]")],
)
def test_unknown_variables_and_wrong_head_shapes_stay_errors(tmp_path, extra, message):
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    head = head_variables("run_classifier", CLASSIFIER_CONFIG["hidden_size"], NUM_LABELS, seed=6)
    prefix = write_synthetic_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, optimizer_slots=False,
                                        with_mlm_head=False, extra_variables={**head, **extra})
    with pytest.raises(UserError, match=message):
        convert_checkpoint(prefix, tmp_path / "out", ["safetensors"],
                           ConvertOptions(quiet=True, head="sequence-classification"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("present", "absent"), [("output_weights", "output_bias"), ("output_bias", "output_weights"),
                                                ("dense/kernel", "dense/bias")])
def test_half_a_head_is_refused_naming_the_half_that_is_missing(tmp_path, present, absent):
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    style = "bleurt" if present.startswith("dense/") else "run_classifier"
    head = head_variables(style, CLASSIFIER_CONFIG["hidden_size"], NUM_LABELS, seed=6)
    prefix = write_synthetic_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, optimizer_slots=False,
                                        with_mlm_head=False, extra_variables={present: head[present]})
    with pytest.raises(UserError, match=f"^task head {present} has no {absent} beside it; the checkpoint is "
                                        "incomplete$"):
        convert_checkpoint(prefix, tmp_path / "out", ["safetensors"],
                           ConvertOptions(quiet=True, head="sequence-classification"))


def test_output_weights_read_in_small_slices_are_still_turned_whole(classifier_ckpt, tmp_path):
    """run_classifier's [labels, hidden] output_weights turn for tf_model.h5 only: read in slices smaller than
    the tensor (chunk_bytes, 16 MiB by default: a head of >3640 labels at RemBERT's width), each format must
    still hold the whole tensor in its layout."""
    import tensorflow as tf

    saved = tf.train.load_checkpoint(str(resolve_checkpoint(classifier_ckpt))).get_tensor("output_weights")
    assert saved.nbytes > 64
    out = tmp_path / "out"
    convert_checkpoint(classifier_ckpt, out, ALL,
                       ConvertOptions(quiet=True, head="sequence-classification", chunk_bytes=64))
    np.testing.assert_array_equal(_state_dict(out)["classifier.weight"].numpy(), saved)
    np.testing.assert_array_equal(_h5(out)["classifier/kernel:0"], saved.T)
    bundled = torch.load(out / "pytorch_model.bin", weights_only=True)
    np.testing.assert_array_equal(bundled["classifier.weight"].numpy(), saved)


def test_the_report_says_which_tensors_each_format_holds_turned(classifier_ckpt, tmp_path):
    """conversion_report.json's `transposed` (PyTorch, safetensors) and `tf_transposed` (tf_model.h5) flags must
    describe the files: each mapped tensor, read back from each format, is its source variable turned exactly
    where its row says so. run_classifier's output_weights is the one tensor tf_model.h5 holds turned."""
    import tensorflow as tf

    out = tmp_path / "out"
    convert_checkpoint(classifier_ckpt, out, ALL, ConvertOptions(quiet=True, head="sequence-classification"))
    reader = tf.train.load_checkpoint(str(resolve_checkpoint(classifier_ckpt)))
    state, h5 = _state_dict(out), _h5(out)
    rows = json.loads((out / "conversion_report.json").read_text())["mapped"]
    for row in rows:
        source = reader.get_tensor(row["source"])
        np.testing.assert_array_equal(state[row["target"]].numpy(), source.T if row["transposed"] else source,
                                      err_msg=row["target"])
        np.testing.assert_array_equal(h5[row["tf_target"]], source.T if row.get("tf_transposed") else source,
                                      err_msg=row["tf_target"])
    assert [r["source"] for r in rows if r.get("tf_transposed")] == ["output_weights"]
    assert any(r["transposed"] for r in rows)


@pytest.mark.parametrize(("head", "message"), [
    # BLEURT with n_hidden_layers > 0: relu dense layers, then the output layer as dense_1.
    ({"dense/kernel": np.zeros((30, 8), np.float32), "dense/bias": np.zeros(8, np.float32),
      "dense_1/kernel": np.zeros((8, 1), np.float32), "dense_1/bias": np.zeros(1, np.float32)},
     r"dense/kernel with dense_1/kernel after it is a head of 2 dense layers .*cannot be converted"),
    ({"cls/squad/output_weights": np.zeros((3, 30), np.float32), "cls/squad/output_bias": np.zeros(3, np.float32)},
     r"cls/squad/output_weights has 3 outputs; BERT run_squad.py .* writes 2: the checkpoint is not what"),
])
def test_heads_transformers_cannot_hold_are_refused_saying_why(tmp_path, head, message):
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    prefix = write_synthetic_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, optimizer_slots=False,
                                        with_mlm_head=False, extra_variables=head)
    for command in ("inspect", "convert"):
        result = CliRunner().invoke(main, [command, str(prefix), *(["-o", str(tmp_path / "out")] if command ==
                                                                   "convert" else [])])
        assert result.exit_code == 2, result.output
        assert re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists()


def test_an_mlm_head_beside_a_task_head_is_ignored_by_name(tmp_path):
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    head = head_variables("run_classifier", CLASSIFIER_CONFIG["hidden_size"], NUM_LABELS, seed=6)
    prefix = write_synthetic_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, optimizer_slots=False,
                                        extra_variables=head)
    result = convert_checkpoint(prefix, tmp_path / "out", ["safetensors"],
                                ConvertOptions(quiet=True, head="sequence-classification"))
    ignored = {r.variable: r.detail for r in result.plan.ignored}
    assert "not part of RemBertForSequenceClassification" in ignored["cls/predictions/output_bias"]
    assert not [k for k in _state_dict(tmp_path / "out") if k.startswith("cls.")]


def test_a_pooled_head_without_a_pooler_is_missing_it(tmp_path):
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    head = head_variables("run_classifier", CLASSIFIER_CONFIG["hidden_size"], NUM_LABELS, seed=6)
    prefix = write_synthetic_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, optimizer_slots=False,
                                        with_mlm_head=False, with_pooler=False, extra_variables=head)
    with pytest.raises(UserError, match=r"bert/pooler/dense/kernel is missing.*reads the pooled output"):
        convert_checkpoint(prefix, tmp_path / "out", ["safetensors"],
                           ConvertOptions(quiet=True, head="sequence-classification"))


def test_an_mlm_head_with_no_output_embedding_size_fails_by_name(tmp_path):
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    prefix = write_synthetic_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, optimizer_slots=False)
    config = {k: v for k, v in CLASSIFIER_CONFIG.items() if k != "output_embedding_size"}
    (tmp_path / "ck" / "bert_config.json").write_text(json.dumps(config))
    # The message shows the first three of the five (issue 9); `inspect` lists every one.
    with pytest.raises(UserError, match=r"disagree on 5 variable\(s\): cls/predictions/output_embedding has shape "
                                        r"\[89, 26\].*and 2 more"):
        convert_checkpoint(prefix, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))


def test_head_without_task_head_is_refused(tmp_path, tiny_ckpt):
    with pytest.raises(UserError, match=r"--head token-classification given but the checkpoint has no task head"):
        convert_checkpoint(tiny_ckpt.prefix, tmp_path / "out", ["safetensors"],
                           ConvertOptions(quiet=True, head="token-classification"))


# -- CLI -------------------------------------------------------------------------------------------------------


def test_inspect_shows_the_head_and_its_rule(bleurt_dir, classifier_ckpt):
    result = CliRunner().invoke(main, ["inspect", str(bleurt_dir)])
    assert result.exit_code == 0, result.output
    assert "classifier.weight (transposed) [task head, rule 'dense']" in result.output
    assert "task head: RemBertForSequenceClassification (regression, on the pooled output)" in result.output
    assert "decided by bleurt_config.json" in result.output
    ambiguous = CliRunner().invoke(main, ["inspect", str(classifier_ckpt)])
    assert ambiguous.exit_code == 2
    assert "error    output_weights" in ambiguous.output and "say which with --head" in ambiguous.output
    chosen = CliRunner().invoke(main, ["inspect", str(classifier_ckpt), "--head", "question-answering"])
    assert chosen.exit_code == 2 and ("needs 2 outputs (start, end) but output_weights has 3; pass --head "
                                      "sequence-classification or --head token-classification") in chosen.output


def test_cli_convert_and_verify_a_bleurt_saved_model(bleurt_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(bleurt_dir), "-o", str(out), "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    assert "task head: RemBertForSequenceClassification" in result.output
    verified = CliRunner().invoke(main, ["verify", str(bleurt_dir), str(out)])
    assert verified.exit_code == 0, verified.output
    assert "RemBertForSequenceClassification" in verified.output


# -- interop: transformers' own classes ------------------------------------------------------------------------


def _original_head(ckpt: Path, kind: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from rembert_ref.numpy_reference import original_forward, original_head_logits
    from converters.tf1_checkpoint import CheckpointReader

    with CheckpointReader(ckpt) as reader:
        variables = {name: reader.read(name) for name, e in reader.entries.items()
                     if e.dtype == "float32" and "/adam_" not in name}
        original = json.loads(find_config(reader.prefix, None).read_text())
    outputs = original_forward(variables, original, **inputs, activation="tanh")
    return original_head_logits(variables, kind, outputs)


@pytest.mark.interop
@pytest.mark.parametrize("case", ["bleurt", "run_classifier", "squad"])
def test_transformers_loads_the_fine_tuned_head(case, bleurt_dir, classifier_ckpt, squad_ckpt, tmp_path):
    transformers = pytest.importorskip("transformers")
    ckpt, kind, config = {
        "bleurt": (bleurt_dir, "sequence-classification", BLEURT_CONFIG),
        "run_classifier": (classifier_ckpt, "sequence-classification", CLASSIFIER_CONFIG),
        "squad": (squad_ckpt, "question-answering", SQUAD_CONFIG),
    }[case]
    out = tmp_path / "out"
    convert_checkpoint(ckpt, out, ["pytorch", "safetensors"], ConvertOptions(quiet=True, head=kind))
    architecture = json.loads((out / "config.json").read_text())["architectures"][0]
    rng = np.random.default_rng(11)
    inputs = {"input_ids": rng.integers(0, config["vocab_size"], (2, 9)),
              "token_type_ids": np.array([[0] * 5 + [1] * 4, [0] * 3 + [1] * 6]),
              "attention_mask": np.array([[1] * 9, [1] * 6 + [0] * 3])}
    expected = _original_head(ckpt, kind, inputs)
    for weights in ("pytorch_model.bin", "model.safetensors"):
        view = tmp_path / f"view-{weights}"
        view.mkdir()
        for name in ("config.json", weights):
            shutil.copy(out / name, view / name)
        model, info = getattr(transformers, architecture).from_pretrained(view, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        with torch.no_grad():
            result = model.eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        for name, value in expected.items():
            np.testing.assert_allclose(getattr(result, name).double().numpy(), value, rtol=0, atol=1e-5,
                                       err_msg=f"{case} {weights} {name}")


# -- the shipped example -------------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-bleurt"


def test_the_shipped_bleurt_example_is_what_its_script_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLE.parent / "make_examples.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fresh = write_tf1_saved_model(tmp_path / "fresh", script.BLEURT_CONFIG, "bleurt", seed=script.BLEURT_SEED,
                                  spm_model=EXAMPLE / "sent_piece.model")
    for name in ("variables/variables.index", "variables/variables.data-00000-of-00001", "bert_config.json",
                 "bleurt_config.json"):
        assert (fresh / name).read_bytes() == (EXAMPLE / name).read_bytes(), name


@pytest.mark.interop
def test_scoring_reference_candidate_pairs_with_transformers(tmp_path):
    """The README's BLEURT recipe: [CLS] reference [SEP] candidate [SEP], token types 0/1, scores = logits[:, 0]
    of RemBertForSequenceClassification, equal to the original graph's BLEURT head in float64."""
    transformers = pytest.importorskip("transformers")
    import sentencepiece as spm

    out = tmp_path / "tiny-bleurt"
    result = CliRunner().invoke(main, ["convert", str(EXAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "tokenizer.json").is_file()  # sent_piece.model was found beside the SavedModel
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.RemBertForSequenceClassification.from_pretrained(out).eval()
    # The second pair is longer than BLEURT's max_seq_length (64 in bleurt_config.json), and its reference is the
    # longer side, so BLEURT's _truncate_seq_pair and transformers' longest_first cut the same tokens.
    references = ["The cat sat on the mat.", "It is raining today in Zürich. " * 8]
    candidates = ["A cat was sitting on the mat.", "Today it rains."]
    assert tokenizer.model_max_length == 64
    batch = tokenizer(references, candidates, padding=True, truncation=True, max_length=tokenizer.model_max_length,
                      return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits[:, 0]

    sp = spm.SentencePieceProcessor(model_file=str(EXAMPLE / "sent_piece.model"))
    cls, sep, pad = (sp.piece_to_id(p) for p in ("[CLS]", "[SEP]", "[PAD]"))
    width = batch["input_ids"].shape[1]
    ids, types, mask = [], [], []
    for reference, candidate in zip(references, candidates, strict=True):
        a, b = sp.encode(reference), sp.encode(candidate)
        while len(a) + len(b) > 64 - 3:  # BLEURT's encoding.py: pop from the longer side, the candidate on ties
            (a if len(a) > len(b) else b).pop()
        row = [cls, *a, sep, *b, sep]
        ids.append(row + [pad] * (width - len(row)))
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (width - len(row)))
        mask.append([1] * len(row) + [0] * (width - len(row)))
    assert batch["input_ids"].tolist() == ids
    assert batch["token_type_ids"].tolist() == types
    expected = _original_head(EXAMPLE, "sequence-classification",
                              {"input_ids": np.array(ids), "token_type_ids": np.array(types),
                               "attention_mask": np.array(mask)})["logits"][:, 0]
    np.testing.assert_allclose(scores.double().numpy(), expected, rtol=0, atol=1e-5)


def test_a_dense_head_on_every_token_as_question_answering(tmp_path):
    """tf.layers.dense with 2 outputs on the sequence output is run_squad's span head in [in, out] layout:
    --head question-answering maps it (transposed) to qa_outputs, and verify checks the span logits."""
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    rng = np.random.default_rng(8)
    head = {"dense/kernel": (rng.standard_normal((30, 2)) * 30**-0.5).astype(np.float32),
            "dense/bias": (rng.standard_normal(2) * 0.1).astype(np.float32)}
    prefix = write_synthetic_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, optimizer_slots=False,
                                        with_mlm_head=False, extra_variables=head)
    out = tmp_path / "out"
    convert_checkpoint(prefix, out, ALL, ConvertOptions(quiet=True, head="question-answering"))
    np.testing.assert_array_equal(_state_dict(out)["qa_outputs.weight"].numpy(), head["dense/kernel"].T)
    np.testing.assert_array_equal(_h5(out)["qa_outputs/kernel:0"], head["dense/kernel"])
    report = verify_conversion(prefix, out)
    assert report.passed
    assert {(r.format, r.output) for r in _head_rows(report, "RemBertForQuestionAnswering")} == \
        {(f, o) for f in ALL for o in ("start_logits", "end_logits")}


@pytest.mark.interop
def test_a_bleurt_bundle_card_names_the_head_and_its_snippet_runs(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("transformers")
    from validation.bundle import card_snippets

    out = tmp_path / "tiny-bleurt"
    result = CliRunner().invoke(main, ["bundle", str(EXAMPLE), "-o", str(out), "--format", "safetensors", "-q"])
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert "task head `RemBertForSequenceClassification` (regression)" in card and "`tiny-bleurt`" in card
    code = card_snippets(card)["pytorch"]
    assert "AutoModelForSequenceClassification" in code
    assert 'tokenizer("The cat sat on the mat.", "A cat was sitting on the mat.", return_tensors="pt")  # ' \
           '(reference, candidate): BLEURT scores the pair' in code
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "torch.Size([1, 1])"


def test_a_classifier_card_that_is_not_bleurt_says_sentence_pair_and_needs_no_use_tf_note(tmp_path):
    from validation.bundle import card_snippets

    ckpt = tmp_path / "classifier"
    shutil.copytree(EXAMPLE, ckpt)
    (ckpt / "bleurt_config.json").unlink()  # then only --head says what the dense head reads
    result = CliRunner().invoke(main, ["bundle", str(ckpt), "-o", str(tmp_path / "out"), "--format", "safetensors",
                                       "--head", "sequence-classification", "-q"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "out" / "README.md").read_text()
    code = card_snippets(card)["pytorch"]
    assert "# a sentence pair" in code and "BLEURT" not in code
    assert "USE_TF" not in card  # its snippet has no pipeline(), the one call that needs it


def test_a_tf2_object_graph_is_refused_whatever_its_attributes_are_called():
    from converters.mapping import refuse_object_graph_checkpoint

    object_graph = {"_CHECKPOINTABLE_OBJECT_GRAPH": ((), "string"),
                    "bert/kernel/.ATTRIBUTES/VARIABLE_VALUE": ((4, 4), "float32")}  # an attribute named `bert`
    with pytest.raises(UserError, match="TF2 object-graph"):
        refuse_object_graph_checkpoint(object_graph, "here")
    refuse_object_graph_checkpoint({**object_graph, "bert/embeddings/word_embeddings": ((9, 4), "float32")}, "here")


def test_an_output_embedding_name_on_a_task_heads_variable_is_harmless_without_the_mlm_head(classifier_ckpt,
                                                                                            tmp_path):
    """The MLM head is not converted beside a task head, so naming the head's kernel changes nothing."""
    plain, named = tmp_path / "plain", tmp_path / "named"
    head = "sequence-classification"
    convert_checkpoint(classifier_ckpt, plain, ["safetensors"], ConvertOptions(quiet=True, head=head))
    convert_checkpoint(classifier_ckpt, named, ["safetensors"],
                       ConvertOptions(quiet=True, head=head, output_embedding_name="output_weights"))
    assert (plain / "model.safetensors").read_bytes() == (named / "model.safetensors").read_bytes()


def test_any_object_graph_key_counts_as_one():
    """A TF2 checkpoint holds more than VARIABLE_VALUEs (a lookup table's `table-keys`, ...)."""
    from converters.mapping import refuse_object_graph_checkpoint

    with pytest.raises(UserError, match="TF2 object-graph"):
        refuse_object_graph_checkpoint({"_CHECKPOINTABLE_OBJECT_GRAPH": ((), "string"),
                                        "model/kernel/.ATTRIBUTES/VARIABLE_VALUE": ((4, 4), "float32"),
                                        "model/table/.ATTRIBUTES/table-keys": ((3,), "string")}, "here")


def test_without_a_tokenizer_special_ids_stay_inside_the_vocabulary(classifier_ckpt, tmp_path):
    """RemBERT's default bos/eos ids (312, 313) are past a small vocabulary: transformers 5.x warns about them."""
    out = tmp_path / "out"
    options = ConvertOptions(quiet=True, head="sequence-classification")
    convert_checkpoint(classifier_ckpt, out, ["safetensors"], options)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] < 312
    assert config["bos_token_id"] is None and config["eos_token_id"] is None and config["pad_token_id"] == 0


def test_without_a_tokenizer_the_special_id_bound_is_the_vocabulary_size(tmp_path):
    """313 words: id 312 is the last word (bos stays), id 313 is past it (eos goes)."""
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint

    prefix = write_synthetic_checkpoint(tmp_path / "ck", {**CLASSIFIER_CONFIG, "vocab_size": 313},
                                        optimizer_slots=False)
    convert_checkpoint(prefix, tmp_path / "out", ["safetensors"], ConvertOptions(quiet=True))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (312, None)


@pytest.mark.parametrize(("num_labels", "problem_type"), [(1, "regression"), (2, "single_label_classification"),
                                                          (3, "single_label_classification")])
def test_one_output_is_regression_and_two_or_more_are_classes(tmp_path, num_labels, problem_type):
    """transformers trains with this problem_type: MSE on class ids would be a silent mistake."""
    prefix = write_finetuned_checkpoint(tmp_path / "ck", CLASSIFIER_CONFIG, "run_classifier", num_labels=num_labels)
    convert_checkpoint(prefix, tmp_path / "out", ["safetensors"],
                       ConvertOptions(quiet=True, head="sequence-classification"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["problem_type"] == problem_type


@pytest.mark.parametrize(("max_seq_length", "expected"), [(32, 32), (None, 64), (65, None), (2, None), ("64", None)])
def test_bleurt_max_seq_length_is_the_tokenizers_limit(tmp_path, max_seq_length, expected):
    """BLEURT cuts every pair to bleurt_config.json's max_seq_length: `truncation=True` must cut there too."""
    ckpt = tmp_path / "bleurt"
    shutil.copytree(EXAMPLE, ckpt)
    bleurt_config = json.loads((ckpt / "bleurt_config.json").read_text())
    bleurt_config.pop("max_seq_length")
    if max_seq_length is not None:
        bleurt_config["max_seq_length"] = max_seq_length
    (ckpt / "bleurt_config.json").write_text(json.dumps(bleurt_config))
    result = CliRunner().invoke(main, ["convert", str(ckpt), "-o", str(tmp_path / "out"), "--format", "safetensors"])
    inspected = CliRunner().invoke(main, ["inspect", str(ckpt)])
    if expected is None:
        assert result.exit_code == 2 and "max_seq_length" in result.output, result.output
        assert not (tmp_path / "out").exists()
        assert inspected.exit_code == 2 and "max_seq_length" in inspected.output  # as convert refuses it
        return
    assert inspected.exit_code == 0, inspected.output
    assert result.exit_code == 0, result.output
    tokenizer_config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == expected
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert report["tokenizer"]["model_max_length"] == expected
    # Where the limit came from: a user reading the report must tell BLEURT's cut from the model's own limit.
    source = "bleurt_config.json max_seq_length" if max_seq_length is not None else "max_position_embeddings"
    assert report["tokenizer"]["model_max_length_from"] == source
    assert f"tokenizer: model_max_length {expected} (the checkpoint's {source})" in result.output


def test_inspect_ends_with_why_no_task_head_was_chosen(classifier_ckpt):
    """The rows carry the problem as each head variable's detail; the summary names it once, where the `task head:`
    line would be."""
    from converters.convert import ConvertOptions, inspect_checkpoint

    problem = inspect_checkpoint(classifier_ckpt, ConvertOptions()).head_problem
    assert problem and "--head" in problem
    result = CliRunner().invoke(main, ["inspect", str(classifier_ckpt)])
    assert result.exit_code == 2
    assert f"task head: {problem}" in result.output.splitlines()
