"""verify and bundle: they pass on good conversions and catch every kind of tampering, naming what changed.

Tamper tests change one thing in a converted folder (or in the mapping table both the conversion and the tensor
proof use) and check that the report fails and names it: the tensor proof for changed values anywhere, the
functional proof for an error in the table, which the tensor proof shares by design.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

import converters.mapping as mapping
from converters.convert import ConvertOptions, convert_checkpoint
from rembert_convert.cli import main
from rembert_ref.config import RemBertConfig
from rembert_ref.errors import UserError
from rembert_ref.tokenization import RemBertTokenizerFast
from validation.bundle import ParityFailure, bundle_checkpoint, card_snippets
from validation.parity import HEAD_SPECS, HEADS, MAX_PROBE_TOKENS, MULTILINGUAL_SAMPLE, make_inputs, verify_conversion

BASE_HEADS = ("RemBertModel", "RemBertForMaskedLM")
ST, BIN = "model.safetensors", "pytorch_model.bin"


@pytest.fixture(scope="module")
def bundled(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True))


@pytest.fixture(scope="module")
def converted(tiny_ckpt, tmp_path_factory) -> Path:
    """pytorch_model.bin + model.safetensors of the tiny checkpoint (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("conv") / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors"], ConvertOptions(quiet=True))
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit_safetensors(folder: Path, edit) -> None:
    tensors = load_file(folder / ST)
    edit(tensors)
    save_file(tensors, folder / ST, metadata={"format": "pt"})


def _failing_tensors(report) -> set[tuple[str, str, str]]:
    return {(r.format, r.tensor, r.check) for r in report.tensor_failures}


# -- good conversions -------------------------------------------------------------------------------------------


def test_bundle_measures_every_head_format_and_output(bundled, tiny_ckpt):
    report = bundled.parity
    assert report.passed and report.formats == ["pytorch", "safetensors", "tf2"]
    layers = tiny_ckpt.config["num_hidden_layers"]
    cells = {(r.head, r.format) for r in report.rows}
    assert cells == {(head, fmt) for head in HEADS for fmt in report.formats}  # every head in every format
    # Every output of every head, in every format: the encoder's layers for the base model and for each LM (the
    # causal one runs its own encoder), the logits of each head, both logits of question answering.
    states = {f"hidden_states.{i}" for i in range(layers + 1)}
    expected = {"RemBertModel": states | {f"attentions.{i}" for i in range(layers)} | {"last_hidden_state",
                                                                                          "pooler_output"},
                "RemBertForMaskedLM": states | {"logits"}, "RemBertForCausalLM": states | {"logits"},
                "RemBertForSequenceClassification": {"logits"}, "RemBertForMultipleChoice": {"logits"},
                "RemBertForTokenClassification": {"logits"},
                "RemBertForQuestionAnswering": {"start_logits", "end_logits"}}
    for fmt in report.formats:
        assert {head: {r.output for r in report.rows if (r.head, r.format) == (head, fmt)} for head in HEADS} == \
            expected, fmt
    assert all(r.reference == "original-fp64" for r in report.rows)
    # The tensor proof: one row per mapped tensor and format, plus one agreement row per tensor, and one row
    # saying config.json agrees with the checkpoint's config.
    mapped = len(bundled.conversion.plan.mappings)
    assert len(report.tensor_rows) == mapped * 4 + 1
    assert {r.check for r in report.tensor_rows} == {"values", "agree", "config"}


def test_the_probe_is_text_through_the_folders_tokenizer_cut_to_16_tokens(tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"
    out = tmp_path / "with-tokenizer"
    convert_checkpoint(example, out, ["safetensors"],
                       ConvertOptions(quiet=True, tokenizer=example / "sentencepiece.model"))
    inputs = make_inputs(RemBertConfig.from_json_file(out / "config.json"), out)
    assert inputs["description"].startswith("the folder's tokenizer")
    whole = RemBertTokenizerFast.from_pretrained(out)(MULTILINGUAL_SAMPLE)["input_ids"]
    assert len(whole) > MAX_PROBE_TOKENS  # else this test could not see the cut
    mask, types = inputs["attention_mask"], inputs["token_type_ids"]
    first = inputs["input_ids"][0][mask[0] == 1].tolist()
    # [CLS] + the sample's first pieces + [SEP], exactly MAX_PROBE_TOKENS of them
    assert len(first) == MAX_PROBE_TOKENS and first[:-1] == whole[:MAX_PROBE_TOKENS - 1] and first[-1] == whole[-1]
    assert (mask == 0).any() and mask[0].all()  # one padded row
    assert set(types[1][mask[1] == 1]) == {0, 1}  # the sentence pair has both token types


def test_without_a_tokenizer_the_probe_is_seeded_ids(bundled):
    inputs = bundled.parity.inputs
    assert inputs["description"].startswith("seeded ids (seed 0, no tokenizer)")
    mask, types = np.array(inputs["attention_mask"]), np.array(inputs["token_type_ids"])
    assert (mask == 0).any() and mask[0].all()  # one padded row
    assert set(types[1][mask[1] == 1]) == {0, 1}  # the second row has both token types


def test_bundle_files_and_checksums(bundled):
    out = bundled.output_dir
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "SHA256SUMS", "parity_report.json", "parity_report.md", "config.json",
            "conversion_report.json", "pytorch_model.bin", "model.safetensors", "tf_model.h5"} <= names
    listed = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    assert set(listed) == names - {"SHA256SUMS", "README.md"}  # the card stays editable
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    card = (out / "README.md").read_text()
    assert "gelu_new" in card and "| RemBertForMaskedLM |" in card
    assert json.loads((out / "parity_report.json").read_text())["passed"] is True


def test_a_closed_format_is_freed_without_the_garbage_collector(tiny_ckpt, converted, monkeypatch):
    # "One format in memory at a time" needs the models built on a format to be freed when it closes. With the
    # collector off only reference counting frees them, so a reference cycle shows up as a collection here.
    import gc

    collections = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or 0)
    gc.disable()
    try:
        report = verify_conversion(tiny_ckpt.prefix, converted)
    finally:
        gc.enable()
    assert report.passed and report.formats == ["pytorch", "safetensors"]
    assert collections == []


def test_the_report_times_each_step_for_library_callers(tiny_ckpt, converted):
    # `ParityReport.seconds` is where a library caller (and benchmarks/README's phase tables) reads the step times;
    # the files leave it out so that the same folder gives the same report.
    report = verify_conversion(tiny_ckpt.prefix, converted)
    steps = {f"{kind} {fmt}" for kind in ("tensors", "functional") for fmt in report.formats}
    assert set(report.seconds) == {"reference", "total"} | steps
    assert min(report.seconds.values()) > 0
    proofs = report.seconds["total"] - report.seconds["reference"]
    for kind in ("tensors", "functional"):  # a format's two proofs run side by side, formats one after another
        assert sum(report.seconds[f"{kind} {fmt}"] for fmt in report.formats) <= proofs
    assert "seconds" not in report.to_dict()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
@pytest.mark.parametrize("release", [True, False])
def test_each_format_leaves_the_cache_once_proven(tiny_ckpt, converted, monkeypatch, release):
    # bundle's verify drops each format from the page cache after its proofs, before the next format opens.
    import os

    import converters.writers as writers
    from validation import tensor_proof

    events: list[tuple[str, str]] = []
    real_open, real_drop = tensor_proof.open_format, writers.drop_cached_pages

    def open_format(directory: Path, fmt: str):
        handle = real_open(directory, fmt)
        events.append(("opened", handle.paths[0].name))
        return handle

    def drop(fd: int, length: int = 0) -> None:
        events.append(("dropped", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_drop(fd, length)

    monkeypatch.setattr(tensor_proof, "open_format", open_format)
    monkeypatch.setattr(writers, "drop_cached_pages", drop)
    report = verify_conversion(tiny_ckpt.prefix, converted, release_cache=release)
    assert report.passed
    expected = []
    for name in ("pytorch_model.bin", "model.safetensors"):
        expected += [("opened", name)] + [("dropped", name)] * release
    assert events == expected


def test_the_chosen_activation_is_the_one_verified(tiny_ckpt, tmp_path):
    """The ground truth runs the original graph with the activation config.json declares, so an exact-erf
    conversion is verified as such and the report says so."""
    out = tmp_path / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, activation="exact"))
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert report.passed and report.activation == "gelu"


def test_the_cards_tokenizer_agreement_is_what_the_published_files_give(tmp_path):
    """Measuring the published tokenizer.json against the published sentencepiece.model, apart from bundle, must
    give the card's figures."""
    from tokenizers import Tokenizer

    from converters.tokenizer import measure_agreement, probe_corpus, read_sentencepiece

    example = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"
    out = tmp_path / "tiny"
    options = ConvertOptions(quiet=True, tokenizer=example / "sentencepiece.model")
    bundle_checkpoint(example, out, options, formats=("safetensors",), heads=BASE_HEADS)
    info = read_sentencepiece(out / "sentencepiece.model")
    agreement = measure_agreement(info, Tokenizer.from_file(str(out / "tokenizer.json")), probe_corpus())
    assert agreement.total == len(probe_corpus()) > 0
    card = (out / "README.md").read_text()
    assert (f"`sentencepiece.model` ({info.model_type}, {len(info.pieces)} pieces)" in card
            and f"{agreement.equal} of {agreement.total} lines" in card
            and f"({100 * agreement.rate:.1f}%)" in card)


def test_failed_parity_writes_no_bundle(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ParityFailure, match="parity failed on .* nothing was written"):
        bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True), formats=("safetensors",),
                          heads=BASE_HEADS, tolerance=1e-12)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(main, ["bundle", str(tiny_ckpt.prefix), "-o", str(out), "--format", "safetensors",
                                       "--tolerance", "1e-12", "-q"])
    assert result.exit_code == 1, result.output  # as verify's parity failure, not a user error
    assert result.output.startswith("error: parity failed on ") and result.output.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


# -- the functional proof's bar ---------------------------------------------------------------------------------


def _compare(ours, reference, atol=1e-5, rtol=1e-5):
    from validation.parity import compare

    return compare("H", "f", "out", "ref", ours, reference, atol, rtol)


def test_a_row_passes_within_atol_plus_rtol_times_the_outputs_scale_and_fails_past_it():
    reference = np.full((3, 5), 100.0)  # scale 100: the bar is 1e-5 + 1e-5 * 100 = 1.01e-3
    reference[1, 2] = -100.0
    bar = 1e-5 + 1e-5 * 100
    for offset, passed in ((0.9 * bar, True), (1.1 * bar, False)):
        ours = reference.copy()
        ours[2, 4] += offset
        row = _compare(ours.astype(np.float32), reference)
        assert row.passed is passed, (offset, row)
        assert row.tolerance == pytest.approx(bar) and row.max_abs == pytest.approx(offset, rel=2e-2)  # float32 steps


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_anywhere_fails_the_row(bad):
    from validation.parity import COMPARE_BLOCK

    reference = np.ones(COMPARE_BLOCK * 2 + 7)  # the bad value in the last, partial block
    ours = reference.astype(np.float32)
    ours[-1] = bad
    assert not _compare(ours, reference).passed


def test_an_output_of_the_same_size_but_another_shape_fails_the_row():
    reference = np.arange(12.0).reshape(3, 4)
    row = _compare(reference.reshape(4, 3).astype(np.float32), reference)
    assert not row.passed and row.shape == (4, 3)


def test_an_error_a_few_times_the_float32_bar_fails_the_functional_proof(tiny_ckpt, converted, tmp_path):
    """A weaker bar than atol 1e-5 + rtol 1e-5 x max|reference| for float32 files would pass this error."""
    from rembert_ref.numpy_reference import original_forward

    delta = 6e-4
    folder = _copy(converted, tmp_path)

    def edit(t):
        t["rembert.pooler.dense.bias"][3] += delta

    _edit_safetensors(folder, edit)
    # The oracle: the same change in the original variables, through the float64 original graph.
    inputs = make_inputs(RemBertConfig.from_json_file(folder / "config.json"))
    args = (inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"])
    variables = dict(tiny_ckpt.variables)
    before = original_forward(variables, tiny_ckpt.config, *args)["pooler_output"]
    variables["bert/pooler/dense/bias"] = variables["bert/pooler/dense/bias"].astype(np.float64)
    variables["bert/pooler/dense/bias"][3] += delta
    error = np.abs(original_forward(variables, tiny_ckpt.config, *args)["pooler_output"] - before).max()
    bar = 1e-5 + 1e-5 * np.abs(before).max()  # the float32 bar the README states
    assert 2 * bar < error < 8 * bar  # else the test would not measure the bar
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=("RemBertModel",), formats=("safetensors",),
                               tensors=False)
    assert {r.output for r in report.failures} == {"pooler_output"}
    (row,) = report.failures
    assert row.max_abs == pytest.approx(error, rel=1e-2)


# -- tampering with values: the tensor proof names the tensor -------------------------------------------------


def test_a_far_position_row_is_caught(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    rows = make_inputs(RemBertConfig.from_json_file(folder / "config.json"))["input_ids"].shape[1]
    far = tiny_ckpt.config["max_position_embeddings"] - 2
    assert far >= rows  # a row the functional probe never reaches

    def edit(t):
        t["rembert.embeddings.position_embeddings.weight"][far, 3] += 0.5

    _edit_safetensors(folder, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder)
    assert not report.passed and not report.failures  # every functional row passes: only the tensor proof sees it
    name = "rembert.embeddings.position_embeddings.weight"
    assert _failing_tensors(report) == {("safetensors", name, "values"), ("all formats", name, "agree")}
    row = next(r for r in report.tensor_failures if r.format == "safetensors")
    assert row.first_index == (far, 3) and row.differing == 1 and row.max_abs == pytest.approx(0.5, rel=1e-6)


def test_an_unused_vocabulary_row_is_caught(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    used = set(make_inputs(RemBertConfig.from_json_file(folder / "config.json"))["input_ids"].ravel().tolist())
    row = max(set(range(tiny_ckpt.config["vocab_size"])) - used)

    def edit(t):
        t["rembert.embeddings.word_embeddings.weight"][row, 0] += 0.5

    _edit_safetensors(folder, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder)
    assert not report.failures
    assert ("safetensors", "rembert.embeddings.word_embeddings.weight", "values") in _failing_tensors(report)


def test_a_decoder_row_is_caught(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)

    def edit(t):
        t["cls.predictions.decoder.weight"][7, 5] += 0.5

    _edit_safetensors(folder, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder)
    assert ("safetensors", "cls.predictions.decoder.weight", "values") in _failing_tensors(report)
    failing = {(r.head, r.format, r.output) for r in report.failures}
    assert ("RemBertForMaskedLM", "safetensors", "logits") in failing
    assert ("RemBertForMaskedLM", "pytorch", "logits") not in failing


def test_swapped_layers_are_caught(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)

    def edit(t):
        for key in [k for k in t if ".layer.0." in k]:
            other = key.replace(".layer.0.", ".layer.1.")
            t[key], t[other] = t[other], t[key]

    _edit_safetensors(folder, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    names = {tensor for fmt, tensor, check in _failing_tensors(report) if fmt == "safetensors"}
    assert "rembert.encoder.layer.0.attention.self.query.weight" in names
    assert "rembert.encoder.layer.1.output.dense.weight" in names
    assert any(r.format == "safetensors" and r.output == "hidden_states.1" for r in report.failures)


def test_a_dropped_and_an_extra_tensor_are_caught(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    dropped = "rembert.encoder.layer.2.attention.output.LayerNorm.bias"

    def edit(t):
        del t[dropped]
        t["rembert.encoder.layer.2.extra.weight"] = np.ones((2, 2), np.float32)

    _edit_safetensors(folder, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder)
    failing = _failing_tensors(report)
    assert ("safetensors", dropped, "missing") in failing
    assert ("safetensors", "rembert.encoder.layer.2.extra.weight", "extra") in failing
    # The functional proof cannot build a head without the weight: each head's load fails, by name.
    loads = [r for r in report.failures if r.format == "safetensors"]
    bare = dropped.removeprefix("rembert.")  # the base model names it in the bare layout
    assert loads and all(r.output.startswith("load") and bare in r.output for r in loads)


def test_a_tensor_dropped_from_tf_model_h5_fails_every_tf2_head_by_name(tiny_ckpt, tmp_path):
    """The TF heads are built with one layer around the shared encoder: a weight of a later layer is still
    required, by the shared encoder, and every head names it."""
    import h5py

    out = tmp_path / "h5"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True))
    with h5py.File(out / "tf_model.h5", "a") as file:  # the dataset and its entry in weight_names, as Keras would
        (dataset,) = [ds for ds in _datasets(file) if "/layer_._2/attention/output/LayerNorm/beta" in ds.name]
        layer = file[dataset.name.split("/")[1]]
        stored = dataset.name.split("/", 2)[2]
        layer.attrs["weight_names"] = [n for n in layer.attrs["weight_names"] if n.decode() != stored]
        del file[dataset.name]
    report = verify_conversion(tiny_ckpt.prefix, out)
    scope = "rembert/encoder/layer_._2/attention/output/LayerNorm/beta:0"
    assert ("tf2", f"rembert/tf_rem_bert_for_masked_lm/{scope}", "missing") in _failing_tensors(report)
    loads = [r for r in report.failures if r.format == "tf2"]
    assert {r.head for r in loads} == set(HEADS)
    assert all(r.output.startswith("load: the file lacks") and scope in r.output for r in loads)


@pytest.fixture(scope="module")
def sharded(tiny_ckpt, tmp_path_factory) -> Path:
    """model.safetensors in several shards + index (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("sharded") / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, max_shard_size=100_000))
    return out


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def test_a_stale_copy_of_a_tensor_in_another_shard_is_caught(tiny_ckpt, sharded, tmp_path):
    """The index names the right shard, but transformers 4.57 loads every shard's tensors: a changed second
    copy elsewhere is what a user may get."""
    folder = _copy(sharded, tmp_path)
    weight_map = _index(folder)["weight_map"]
    shards = sorted(set(weight_map.values()))
    name = next(k for k, v in sorted(weight_map.items()) if v == shards[0])
    other = load_file(folder / shards[1])
    other[name] = load_file(folder / shards[0])[name] + 1.0
    save_file(other, folder / shards[1], metadata={"format": "pt"})
    report = verify_conversion(tiny_ckpt.prefix, folder, functional=False)
    assert any(r.check == "duplicate" and name in r.tensor for r in report.tensor_failures), report.tensor_failures


def test_a_tensor_the_index_leaves_out_is_caught(tiny_ckpt, sharded, tmp_path):
    """transformers initialises a tensor the index does not name at random, whatever the shard holds."""
    folder = _copy(sharded, tmp_path)
    index = _index(folder)
    name = sorted(index["weight_map"])[-1]
    del index["weight_map"][name]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    report = verify_conversion(tiny_ckpt.prefix, folder, functional=False)
    assert ("safetensors", name, "index") in _failing_tensors(report), report.tensor_failures


def test_an_index_naming_the_wrong_shard_or_a_tensor_no_shard_holds_is_caught(tiny_ckpt, sharded, tmp_path):
    """An index that does not describe its shards: a loader looks each tensor up in the shard the index names."""
    folder = _copy(sharded, tmp_path)
    index = _index(folder)
    shards = sorted(set(index["weight_map"].values()))
    moved = next(k for k, v in sorted(index["weight_map"].items()) if v == shards[0])
    index["weight_map"][moved] = shards[1]
    index["weight_map"]["rembert.ghost.weight"] = shards[0]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    report = verify_conversion(tiny_ckpt.prefix, folder, functional=False)
    assert _failing_tensors(report) == {("safetensors", moved, "index"),
                                        ("safetensors", "rembert.ghost.weight", "index")}
    wrong = next(r for r in report.tensor_failures if r.tensor == moved)
    assert shards[0] in wrong.detail and shards[1] in wrong.detail  # where it is, and where the index says


def test_safetensors_metadata_without_the_format_flag_is_caught(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)  # transformers: "Incompatible safetensors file" for such a header
    save_file(load_file(folder / ST), folder / ST, metadata={"source": "elsewhere"})
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=("safetensors",), functional=False)
    assert _failing_tensors(report) == {("safetensors", ST, "metadata")}


@pytest.mark.parametrize(("name", "where"), [
    ("rembert.embeddings.position_embeddings.weight", (0, 0)),
    ("rembert.embeddings.position_embeddings.weight", (-1, -1)),
    ("rembert.encoder.layer.0.intermediate.dense.bias", (-1,)),  # 37 floats: not whole 8-byte words
])
def test_a_changed_first_or_last_value_in_pytorch_model_bin_is_caught(tiny_ckpt, converted, tmp_path, name, where):
    """pytorch_model.bin's records are compared in 8-byte words, or byte by byte where a tensor's size is not a
    multiple of 8: the first and last value of a tensor count too."""
    import torch

    folder = _copy(converted, tmp_path)
    state = torch.load(folder / BIN, weights_only=True)
    whole_words = state[name].numel() * state[name].element_size() % 8 == 0
    assert whole_words == (len(where) == 2)  # the bias is the case compared byte by byte
    state[name][where] += 0.5
    torch.save(state, folder / BIN)
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=("pytorch",), functional=False)
    assert _failing_tensors(report) == {("pytorch", name, "values")}


@pytest.mark.parametrize("stray", ["step", 7])
def test_pytorch_model_bin_holding_more_than_named_tensors_is_one_line(tiny_ckpt, converted, tmp_path, stray):
    """A state dict entry that is not a tensor, or a key that is not a name: a one-line error naming it, not an
    internal error."""
    import torch

    folder = _copy(converted, tmp_path)
    state = torch.load(folder / BIN, weights_only=True)
    # "step": a number beside the tensors; 7: a tensor under a key that is not a name
    state[stray] = 3 if isinstance(stray, str) else state["rembert.pooler.dense.bias"]
    torch.save(state, folder / BIN)
    result = CliRunner().invoke(main, ["verify", str(tiny_ckpt.prefix), str(folder), "--format", "pytorch"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: {folder / BIN} holds {stray!r}: "), result.output


def test_a_tensor_of_the_wrong_shape_is_caught_by_the_tensor_proof(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    name = "rembert.embeddings.word_embeddings.weight"

    def edit(t):
        t[name] = np.concatenate([t[name], np.zeros((1, t[name].shape[1]), np.float32)])

    _edit_safetensors(folder, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=("safetensors",), functional=False)
    assert ("safetensors", name, "shape") in _failing_tensors(report)


def test_a_zero_stored_with_the_other_sign_is_caught(tmp_path):
    """-0.0 == +0.0 as numbers, but float32 must be bit-identical: a sign flipped on a zero is a changed value."""
    import tensorflow as tf

    from tests.conftest import TINY_ORIGINAL_CONFIG
    from testkit.synthetic_checkpoint import synthetic_variables

    values = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=4)
    values["bert/pooler/dense/bias"][2] = 0.0
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    tf.raw_ops.SaveV2(prefix=str(ckpt / "model.ckpt-1"), tensor_names=sorted(values),
                      shape_and_slices=[""] * len(values), tensors=[tf.constant(values[n]) for n in sorted(values)])
    (ckpt / "bert_config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    out = tmp_path / "out"
    convert_checkpoint(ckpt / "model.ckpt-1", out, ["safetensors"], ConvertOptions(quiet=True))

    def edit(t):
        t["rembert.pooler.dense.bias"][2] = -0.0

    _edit_safetensors(out, edit)
    report = verify_conversion(ckpt / "model.ckpt-1", out, functional=False)
    assert _failing_tensors(report) == {("safetensors", "rembert.pooler.dense.bias", "values")}


def test_pytorch_and_safetensors_disagreeing_on_one_value(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    name = "rembert.encoder.layer.2.intermediate.dense.weight"

    def edit(t):
        t[name][4, 9] = np.nextafter(t[name][4, 9], np.float32(1))  # one float32 ulp

    _edit_safetensors(folder, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder)
    assert _failing_tensors(report) == {("safetensors", name, "values"), ("all formats", name, "agree")}
    agree = next(r for r in report.tensor_failures if r.format == "all formats")
    assert "pytorch: as the source" in agree.detail and "safetensors: differs" in agree.detail
    assert not report.failures  # one ulp is far inside the functional tolerance


def test_a_float16_bundle_one_ulp_off_is_caught(tiny_ckpt, tmp_path):
    out = tmp_path / "fp16"
    result = bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True, dtype="float16"),
                               formats=("safetensors", "tf2"), heads=BASE_HEADS)
    assert result.parity.passed
    name = "rembert.encoder.layer.1.attention.self.value.weight"

    def edit(t):
        bits = t[name].view(np.uint16)
        bits[2, 2] += 1  # the next float16 up: off by one ulp

    _edit_safetensors(out, edit)
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert ("safetensors", name, "values") in _failing_tensors(report)
    row = next(r for r in report.tensor_failures if r.tensor == name and r.format == "safetensors")
    assert row.dtype == "float16" and row.differing == 1
    assert not report.failures  # the functional proof cannot see one float16 ulp; the tensor proof does


# -- an error in the mapping table: the tensor proof shares it, the functional proof catches it -------------------


def _convert_with(tiny_ckpt, out: Path) -> Path:
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors", "tf2"], ConvertOptions(quiet=True))
    return out


def test_a_table_that_swaps_two_layers_fails_the_functional_proof(tiny_ckpt, tmp_path, monkeypatch):
    original_expand = mapping.expand

    def swapped(rule, config):
        for source, torch, tf in original_expand(rule, config):
            for a, b in ((".layer.0.", ".layer.1."), ("/layer_._0/", "/layer_._1/")):
                if a in torch or a in tf:
                    torch, tf = torch.replace(a, b), tf.replace(a, b)
                elif b in torch or b in tf:
                    torch, tf = torch.replace(b, a), tf.replace(b, a)
            yield source, torch, tf

    monkeypatch.setattr(mapping, "expand", swapped)
    out = _convert_with(tiny_ckpt, tmp_path / "out")
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert not report.tensor_failures  # the same wrong table drives the tensor proof
    for fmt in ("pytorch", "safetensors", "tf2"):
        failing = {r.output for r in report.failures if r.format == fmt and r.head == "RemBertModel"}
        assert "hidden_states.1" in failing and "hidden_states.0" not in failing


def test_a_table_that_forgets_to_transpose_a_square_kernel_fails_the_functional_proof(tiny_ckpt, tmp_path,
                                                                                      monkeypatch):
    rules = tuple(dataclasses.replace(rule, transpose=False) if rule.source.endswith("self/{proj}/kernel")
                  else rule for rule in mapping.RULES)
    monkeypatch.setattr(mapping, "RULES", rules)
    out = _convert_with(tiny_ckpt, tmp_path / "out")
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert not report.tensor_failures
    failing = {(r.format, r.output) for r in report.failures if r.head == "RemBertModel"}
    assert ("pytorch", "hidden_states.1") in failing and ("safetensors", "hidden_states.1") in failing
    assert not any(fmt == "tf2" for fmt, _ in failing)  # Keras kernels keep the [in, out] layout


# -- the CI gate ------------------------------------------------------------------------------------------------


def test_verify_cli_exit_codes_junit_and_report(tiny_ckpt, converted, tmp_path):
    runner = CliRunner()
    junit, report_dir = tmp_path / "ci" / "verify.xml", tmp_path / "rep"
    ok = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(converted), "--report", str(report_dir),
                              "--junit", str(junit)])
    assert ok.exit_code == 0, ok.output
    assert "parity passed" in ok.output and (report_dir / "parity_report.md").is_file()
    report = json.loads((report_dir / "parity_report.json").read_text())
    suites = ET.parse(junit).getroot()
    cases = suites.findall(".//testcase")
    assert len(cases) == len(report["rows"]) + len(report["tensor_rows"]) == int(suites.get("tests"))
    assert suites.get("failures") == "0" and report["tolerance_override"] is False
    assert f"wrote {report_dir / 'parity_report.json'}" in ok.output and f"wrote {junit}" in ok.output
    quiet = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(converted), "--junit", str(junit), "--force",
                                 "-q"])
    assert quiet.exit_code == 0 and quiet.output.count("\n") == 1 and quiet.output.startswith("parity passed")

    again = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(converted), "--report", str(report_dir)])
    assert again.exit_code == 2 and "not empty" in again.output and "--force" in again.output
    inside = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(converted), "--junit",
                                  str(converted / "verify.xml")])
    assert inside.exit_code == 2 and "inputs are never written" in inside.output
    assert not (converted / "verify.xml").exists()

    strict_args = ["verify", str(tiny_ckpt.prefix), str(converted), "--tolerance", "1e-12", "--junit", str(junit),
                   "--format", "safetensors"]
    passing_junit = junit.read_bytes()
    kept = runner.invoke(main, strict_args)  # an earlier JUnit file is replaced only with --force
    assert kept.exit_code == 2 and "exists; pass --force" in kept.output and junit.read_bytes() == passing_junit
    strict = runner.invoke(main, [*strict_args, "--force", "--report", str(tmp_path / "strict")])
    assert strict.exit_code == 1 and "parity FAILED" in strict.output
    root = ET.parse(junit).getroot()
    failures = root.findall(".//failure")
    assert failures and all("max abs" in f.get("message") and "tolerance" in f.get("message") for f in failures)
    assert int(root.get("failures")) == len(failures)  # what a CI dashboard counts
    assert (tmp_path / "strict" / "parity_report.md").read_text().startswith("# Parity report: FAILED")
    strict_report = json.loads((tmp_path / "strict" / "parity_report.json").read_text())
    assert {c.get("name") for c in root.findall(".//testcase") if c.get("classname") == "tensors.safetensors"} == {
        r["tensor"] for r in strict_report["tensor_rows"] if r["format"] == "safetensors"}  # the file's own names
    # The summary's worst row per head and format is the one furthest over (or nearest to) its tolerance.
    for worst in strict_report["summary"]["worst_per_head_and_format"]:
        rows = [r for r in strict_report["rows"] if (r["head"], r["format"]) == (worst["head"], worst["format"])]
        assert worst["max_abs"] / worst["tolerance"] == max(r["max_abs"] / r["tolerance"] for r in rows)
    assert {c.get("classname").rsplit(".", 1)[-1] for c in ET.parse(junit).getroot().findall(".//testcase")
            if c.get("classname").startswith("functional.")} == {"safetensors"}

    missing = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(tmp_path)])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")
    no_tf = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(converted), "--format", "tf2"])
    assert no_tf.exit_code == 2 and "no tf2 files" in no_tf.output


def test_the_summary_names_failing_tensors(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    name, second = "rembert.embeddings.LayerNorm.bias", "rembert.embeddings.LayerNorm.weight"

    def edit(t):
        t[name][0] += 1.0
        t[second][1] -= 1.0

    _edit_safetensors(folder, edit)
    result = CliRunner().invoke(main, ["verify", str(tiny_ckpt.prefix), str(folder), "--report",
                                       str(tmp_path / "rep")])
    assert result.exit_code == 1
    assert any(line.startswith("FAIL tensor safetensors") and name in line for line in result.output.splitlines())
    summary = json.loads((tmp_path / "rep" / "parity_report.json").read_text())["summary"]
    named = [{k: t[k] for k in ("format", "tensor")} for t in summary["failing_tensors"]]
    assert {"format": "safetensors", "tensor": name} in named and {"format": "safetensors", "tensor": second} in named
    markdown = (tmp_path / "rep" / "parity_report.md").read_text()
    failing_section = markdown[markdown.index("Failing tensors:"):]
    assert f"`{name}`" in failing_section and f"`{second}`" in failing_section
    assert {(w["head"], w["format"]) for w in summary["worst_per_head_and_format"]} == {
        (h, f) for h in HEADS for f in ("pytorch", "safetensors")}
    assert name in (tmp_path / "rep" / "parity_report.md").read_text()


# -- what a loader reads besides the values: file types, links, metadata, config.json, other files -------------

H5_POOLER = "rembert/tf_rem_bert_for_masked_lm/rembert/pooler/dense/kernel:0"
H5_GAMMA = "rembert/tf_rem_bert_for_masked_lm/rembert/encoder/layer_._{}/attention/output/LayerNorm/gamma:0"


@pytest.fixture(scope="module")
def converted_h5(tiny_ckpt, tmp_path_factory) -> Path:
    """tf_model.h5 of the tiny checkpoint (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("h5") / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True))
    return out


def _replace_h5_dataset(path: Path, name: str, type_id, values: np.ndarray) -> None:
    """Store `values`' bytes unchanged as dataset `name`, declared with the HDF5 type `type_id`, contiguous and
    64-byte aligned (as convert writes datasets, so verify would memory-map it)."""
    import h5py

    access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    access.set_alignment(1, 64)
    with h5py.File(h5py.h5f.open(str(path).encode(), h5py.h5f.ACC_RDWR, access)) as file:
        parent, leaf = name.rsplit("/", 1)
        del file[name]
        layout = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        layout.set_layout(h5py.h5d.CONTIGUOUS)
        layout.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dataset = h5py.h5d.create(file[parent].id, leaf.encode(), type_id, h5py.h5s.create_simple(values.shape),
                                  dcpl=layout)
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(values), mtype=type_id)


def test_tf_model_h5_is_freed_without_the_garbage_collector(tiny_ckpt, converted_h5, monkeypatch):
    import gc

    collections = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or 0)
    gc.disable()
    try:
        report = verify_conversion(tiny_ckpt.prefix, converted_h5, formats=["tf2"], heads=BASE_HEADS)
    finally:
        gc.enable()
    assert report.passed and collections == []


def test_the_tf_heads_are_closed_when_a_head_raises(tiny_ckpt, converted_h5, monkeypatch):
    """Closing them drops the tensors made from tf_model.h5 and leaves its weights context: an error in a head
    must not skip it."""
    import validation.parity as parity

    closed = []
    close = parity._TFHeads.close

    def broken(self, model, inputs):
        raise RuntimeError("a head broke")

    monkeypatch.setattr(parity._TFHeads, "run", broken)
    monkeypatch.setattr(parity._TFHeads, "close", lambda self: closed.append(self) or close(self))
    with pytest.raises(RuntimeError, match="a head broke"):
        verify_conversion(tiny_ckpt.prefix, converted_h5, formats=["tf2"], heads=BASE_HEADS)
    assert len(closed) == 1 and not closed[0].variables and not closed[0].encoders


def test_an_h5_dataset_whose_type_changes_its_values_is_caught(tiny_ckpt, converted_h5, tmp_path):
    """The same bytes under a float type without the implied leading 1: h5py still calls it float32, but HDF5
    (and so Keras) reads other values. verify must not take the raw bytes for the values."""
    import h5py

    folder = _copy(converted_h5, tmp_path)
    with h5py.File(folder / "tf_model.h5", "r") as file:
        values = file[H5_POOLER][()]
    custom = h5py.h5t.IEEE_F32LE.copy()
    custom.set_norm(h5py.h5t.NORM_NONE)
    _replace_h5_dataset(folder / "tf_model.h5", H5_POOLER, custom, values)
    with h5py.File(folder / "tf_model.h5", "r") as file:
        assert file[H5_POOLER].dtype == np.float32 and file[H5_POOLER].id.get_offset() % 64 == 0
        assert not np.array_equal(file[H5_POOLER][()], values)  # what a reader gets
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    assert _failing_tensors(report) == {("tf2", H5_POOLER, "dtype")}
    assert "not a standard IEEE float" in report.tensor_failures[0].detail
    assert any(r.output == "pooler_output" for r in report.failures)  # the model read what HDF5 gives


def test_an_h5_dataset_stored_big_endian_is_read_as_its_values(tiny_ckpt, converted_h5, tmp_path):
    import h5py

    folder = _copy(converted_h5, tmp_path)
    with h5py.File(folder / "tf_model.h5", "r") as file:
        values = file[H5_POOLER][()]
    _replace_h5_dataset(folder / "tf_model.h5", H5_POOLER, h5py.h5t.IEEE_F32BE, values.astype(">f4"))
    assert verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS).passed


def test_h5_links_are_followed_or_refused(tiny_ckpt, converted_h5, tmp_path):
    """A hard link gives layer 1's gamma layer 0's values (Keras reads them by that name); an external link
    points into a file outside the folder's proof."""
    import h5py

    folder = _copy(converted_h5, tmp_path)
    with h5py.File(folder / "tf_model.h5", "a") as file:
        del file[H5_GAMMA.format(1)]
        file[H5_GAMMA.format(1)] = file[H5_GAMMA.format(0)]
        with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
            other["kernel"] = file[H5_POOLER][()]
        del file[H5_POOLER]
        file[H5_POOLER] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "kernel")
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    failing = _failing_tensors(report)
    assert ("tf2", H5_GAMMA.format(1), "values") in failing
    assert ("tf2", H5_POOLER, "link") in failing and ("tf2", H5_POOLER, "missing") in failing


def test_a_weight_name_only_in_a_split_attribute_beside_the_whole_one_is_unlisted(tiny_ckpt, converted_h5, tmp_path):
    """Keras reads `weight_names0, 1, ...` only when `weight_names` is absent: a name moved there beside it is
    invisible to the loader, so the tensor proof must not count it as listed."""
    import h5py

    folder = _copy(converted_h5, tmp_path)
    with h5py.File(folder / "tf_model.h5", "a") as file:
        layer = file["rembert"]
        names = list(layer.attrs["weight_names"])
        hidden = next(n for n in names if n.decode() == H5_POOLER.split("/", 1)[1])
        layer.attrs["weight_names"] = [n for n in names if n != hidden]
        layer.attrs["weight_names0"] = [hidden]
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    assert ("tf2", H5_POOLER, "unlisted") in _failing_tensors(report)


def test_h5_weight_names_listed_twice_and_links_to_nothing_fail_and_a_link_cycle_ends(tiny_ckpt, converted_h5,
                                                                                     tmp_path):
    """A weight listed twice gives a loader that assigns by position one value too many; a soft link to nothing
    is a name no reader can open. A soft link back to its own group must neither hang nor crash the walk."""
    import h5py

    folder = _copy(converted_h5, tmp_path)
    with h5py.File(folder / "tf_model.h5", "a") as file:
        layer = file["rembert"]
        names = list(layer.attrs["weight_names"])
        layer.attrs["weight_names"] = [*names, names[0]]
        layer["nowhere"] = h5py.SoftLink("/rembert/gone")
        layer["loop"] = h5py.SoftLink("/rembert")
    report = verify_conversion(tiny_ckpt.prefix, folder, functional=False)
    assert _failing_tensors(report) == {("tf2", f"rembert/{names[0].decode()}", "duplicate"),
                                        ("tf2", "rembert/nowhere", "link")}


def test_an_h5_dataset_past_the_end_of_the_file_is_one_line(converted_h5):
    from validation.tensor_proof import open_format

    handle = open_format(converted_h5, "tf2")
    handle.size = 1024  # as if the file ended there
    with pytest.raises(UserError, match="past the end of the file"):
        handle.array(H5_POOLER)
    handle.close()


def test_safetensors_metadata_a_loader_refuses_is_caught(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    save_file(load_file(folder / ST), folder / ST, metadata={"format": "np"})  # transformers refuses "np"
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    assert _failing_tensors(report) == {("safetensors", ST, "metadata")}


def test_weight_files_verify_does_not_read_fail_by_name(tiny_ckpt, converted_h5, tmp_path):
    """A sharded pytorch_model.bin beside tf_model.h5: transformers' PyTorch classes would load it."""
    folder = _copy(converted_h5, tmp_path)
    (folder / "pytorch_model-00001-of-00001.bin").write_bytes(b"weights")
    (folder / "pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
    (folder / "flax_model.msgpack").write_bytes(b"weights")
    (folder / "rembert-q8.gguf").write_bytes(b"weights")  # llama.cpp's format: a published file all the same
    (folder / "NOTES.txt").write_text("not weights")
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    assert _failing_tensors(report) == {("folder", name, "unproven") for name in (
        "pytorch_model-00001-of-00001.bin", "pytorch_model.bin.index.json", "flax_model.msgpack", "rembert-q8.gguf")}
    assert not report.failures


def test_safetensors_shards_the_index_does_not_name_fail(tiny_ckpt, tmp_path):
    out = tmp_path / "sharded"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, max_shard_size=100_000))
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS).passed
    shutil.copy(out / shards[0], out / "model-extra.safetensors")
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert _failing_tensors(report) == {("folder", "model-extra.safetensors", "unproven")}


def test_an_index_and_its_shards_beside_model_safetensors_are_unproven(tiny_ckpt, converted, sharded, tmp_path):
    """With model.safetensors there, verify proves it and not the shards a stale index names: a loader that
    takes the index gets weights nobody checked."""
    folder = _copy(converted, tmp_path)
    stale = ["model.safetensors.index.json", *sorted(set(_index(sharded)["weight_map"].values()))]
    for name in stale:
        shutil.copy(sharded / name, folder / name)
    report = verify_conversion(tiny_ckpt.prefix, folder, functional=False)
    assert _failing_tensors(report) == {("folder", name, "unproven") for name in stale}


def test_verify_against_another_checkpoint_says_so(tiny_ckpt, converted, tmp_path):
    other = Path(__file__).resolve().parents[1] / "examples" / "tiny-bleurt"
    result = CliRunner().invoke(main, ["verify", str(other), str(converted)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert f"Was {converted} converted from {other / 'variables' / 'variables'}?" in result.output
    assert "CKPT" not in result.output and "--config" not in result.output
    # A fine-tuned folder against a checkpoint without its head: no word of convert's --head either.
    bleurt = tmp_path / "bleurt"
    convert_checkpoint(other, bleurt, ["safetensors"], ConvertOptions(quiet=True))
    result = CliRunner().invoke(main, ["verify", str(tiny_ckpt.prefix), str(bleurt)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "was it converted from this checkpoint?" in result.output and "--head" not in result.output


@pytest.mark.parametrize("weight_map", [["model-00001-of-00002.safetensors"], {"a": 1}, "x"])
def test_an_index_whose_weight_map_is_not_names_to_files_is_one_line(tiny_ckpt, tmp_path, weight_map):
    from rembert_ref.torch_model import RemBertModel

    out = tmp_path / "sharded"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, max_shard_size=100_000))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    result = CliRunner().invoke(main, ["verify", str(tiny_ckpt.prefix), str(out), "--format", "safetensors"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {out / 'model.safetensors.index.json'} "
                                                             "is not a valid index")
    with pytest.raises(UserError, match="is not a valid index"):
        RemBertModel.from_pretrained(out)


@pytest.mark.parametrize(("key", "value"), [
    ("pruned_heads", {"0": [0]}),  # transformers prunes a head: its weights no longer fit
    ("return_dict", False),  # outputs become tuples: `.logits` on the card breaks
    ("layer_norm_eps", 1e-6),  # within the functional tolerance at this size, but not what TF1 computes
    ("hidden_act", "gelu"),  # conversion_report.json records gelu_new (tanh): only config.json changed
    ("architectures", ["RemBertForCausalLM"]),
    ("dtype", "bfloat16"),  # transformers 5.x reads it before torch_dtype and loads the weights cast
    ("output_hidden_states", True),  # every call returns more than the card says
])
def test_config_json_that_changes_the_model_is_caught(tiny_ckpt, converted, tmp_path, key, value):
    folder = _copy(converted, tmp_path)
    values = json.loads((folder / "config.json").read_text())
    values[key] = value
    (folder / "config.json").write_text(json.dumps(values))
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    assert ("config", f"config.json {key}", "config") in _failing_tensors(report)
    row = next(r for r in report.tensor_failures if r.format == "config")
    assert repr(value) in row.detail and row.source == "bert_config.json"


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 if value else 1
    return {"0": [0]} if isinstance(value, dict) else None


def _every_config_key_verify_proves():
    from validation.tensor_proof import FOREIGN_KEYS, MODEL_KEYS

    return [*MODEL_KEYS, *FOREIGN_KEYS]


@pytest.mark.parametrize("key", _every_config_key_verify_proves())
def test_every_config_key_verify_proves_is_caught_when_changed(tiny_ckpt, converted, tmp_path, key):
    """Each key: a config row fails, or the folder no longer fits the checkpoint at all (one UserError)."""
    from validation.tensor_proof import FOREIGN_KEYS

    folder = _copy(converted, tmp_path)
    values = json.loads((folder / "config.json").read_text())
    values[key] = _changed(values.get(key, FOREIGN_KEYS.get(key)))
    (folder / "config.json").write_text(json.dumps(values))
    try:
        report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS, functional=False)
    except UserError as exc:  # a size the checkpoint's tensors do not have
        assert "checkpoint and config disagree" in str(exc), exc
        return
    assert ("config", f"config.json {key}", "config") in _failing_tensors(report), key


def test_without_a_report_the_activation_must_be_the_original_graphs(tiny_ckpt, converted, tmp_path):
    folder = _copy(converted, tmp_path)
    (folder / "conversion_report.json").unlink()
    assert verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS).passed
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "hidden_act": "gelu"}))
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    assert _failing_tensors(report) == {("config", "config.json hidden_act", "config")}


def test_config_json_must_hold_the_activation_the_report_records_even_one_verify_cannot_map(tiny_ckpt, converted,
                                                                                           tmp_path):
    """conversion_report.json records what the folder was made with: a hand-edited one saying relu is not proven
    by config.json's gelu_new, though the checkpoint's own config would give gelu_new."""
    folder = _copy(converted, tmp_path)
    recorded = json.loads((folder / "conversion_report.json").read_text())
    assert recorded["activation"]["hidden_act"] == json.loads((folder / "config.json").read_text())["hidden_act"]
    recorded["activation"]["hidden_act"] = "relu"
    (folder / "conversion_report.json").write_text(json.dumps(recorded))
    report = verify_conversion(tiny_ckpt.prefix, folder, functional=False)
    assert _failing_tensors(report) == {("config", "config.json hidden_act", "config")}
    assert "'relu'" in report.tensor_failures[0].detail


def test_without_a_report_a_bare_model_folder_is_not_asked_for_an_mlm_head(tiny_ckpt, tmp_path):
    """conversion_report.json is optional: config.json's RemBertModel says the files hold no MLM head."""
    out = tmp_path / "bare"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, mlm_head=False))
    (out / "conversion_report.json").unlink()
    report = verify_conversion(tiny_ckpt.prefix, out, functional=False)
    assert report.passed, [(r.tensor, r.check) for r in report.tensor_failures]
    assert not any(r.tensor.startswith("cls.") for r in report.tensor_rows)


def test_safetensors_index_metadata_beyond_total_size_fails(tiny_ckpt, tmp_path):
    out = tmp_path / "sharded"
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, max_shard_size=100_000))
    index = out / "model.safetensors.index.json"
    values = json.loads(index.read_text())
    values["metadata"]["dtype"] = "bfloat16"  # transformers 5.x would load the model in bfloat16
    index.write_text(json.dumps(values))
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert _failing_tensors(report) == {("safetensors", index.name, "index")}


@pytest.mark.parametrize("storage", ["virtual", "external"])
def test_an_h5_dataset_stored_in_another_file_fails(tiny_ckpt, converted_h5, tmp_path, storage):
    """A virtual dataset reads its values from another file (gone with it, TensorFlow loads zeros); external
    storage keeps its raw bytes in another file, which changes or goes without this file changing."""
    import h5py

    folder = _copy(converted_h5, tmp_path)
    with h5py.File(folder / "tf_model.h5", "a") as file:
        values = file[H5_POOLER][()]
        del file[H5_POOLER]
        if storage == "virtual":
            with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
                other["kernel"] = values
            layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
            layout[...] = h5py.VirtualSource(str(tmp_path / "elsewhere.h5"), "kernel", shape=values.shape)
            file.create_virtual_dataset(H5_POOLER, layout)
        else:
            file.create_dataset(H5_POOLER, data=values, external=[(str(tmp_path / "elsewhere.raw"), 0, values.nbytes)])
    report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
    assert ("tf2", H5_POOLER, "storage") in _failing_tensors(report)


def test_bf16_bundle_refuses_h5_with_one_line(tiny_ckpt, tmp_path):
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    result = CliRunner().invoke(main, ["bundle", str(tiny_ckpt.prefix), "-o", str(tmp_path / "out"),
                                       "--dtype", "bfloat16"])
    assert result.exit_code == 2 and "bfloat16" in result.output
    assert not (tmp_path / "out").exists()


def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_card_metadata_parses_with_the_keys_a_hub_reads(bundled):
    card = (bundled.output_dir / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["multilingual"]
    assert meta["pipeline_tag"] == "fill-mask" and meta["library_name"] == "transformers"
    assert {"rembert", "safetensors", "pytorch", "tf"} <= set(meta["tags"])
    assert "\n# tiny\n" in card  # the output folder's name, not the checkpoint's model.ckpt-3
    assert "sha256sum -c SHA256SUMS" in card and "convert-rembert verify" in card
    snippets = card_snippets(card)
    assert set(snippets) == {"pytorch", "tensorflow"}
    for code in snippets.values():
        compile(code, "card", "exec")
    assert 'path = "tiny"' in snippets["pytorch"] and "use_safetensors=False" in snippets["tensorflow"]


def test_card_options_and_a_bundle_without_pytorch_bin(tiny_ckpt, tmp_path):
    out = tmp_path / "pub"
    result = CliRunner().invoke(main, ["bundle", str(tiny_ckpt.prefix), "-o", str(out), "--quiet",
                                       "--format", "safetensors", "--name", "RemBERT tiny test",
                                       "--license", "mit", "--language", "en", "--language", "sw"])
    assert result.exit_code == 0, result.output
    assert result.output == ""  # --quiet: nothing but errors
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not names & {"pytorch_model.bin", "tf_model.h5"}
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["license"] == "mit" and meta["language"] == ["en", "sw"]
    assert "pytorch" not in meta["tags"] and "\n# RemBERT tiny test\n" in card
    assert "--format safetensors --name 'RemBERT tiny test' --license mit" in card  # the exact command
    assert set(card_snippets(card)) == {"pytorch"}
    listed = {line.split("  ")[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert listed == names - {"SHA256SUMS", "README.md"}
    assert "variables ignored (1 global-step," in card and "optimizer-slot)" in card  # counted from the report


def test_the_card_counts_in_the_singular_and_the_plural(tmp_path):
    """A checkpoint without optimizer slots has one variable to ignore (global_step): the card says so in the
    singular; the counts come from conversion_report.json."""
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint
    from tests.conftest import TINY_ORIGINAL_CONFIG

    prefix = write_synthetic_checkpoint(tmp_path / "ckpt", dict(TINY_ORIGINAL_CONFIG), seed=2, optimizer_slots=False)
    out = tmp_path / "pub"
    bundle_checkpoint(prefix, out, ConvertOptions(quiet=True), formats=("safetensors",), heads=BASE_HEADS)
    report = json.loads((out / "conversion_report.json").read_text())
    assert [r["source"] for r in report["ignored"]] == ["global_step"]
    card = (out / "README.md").read_text()
    assert f"- {len(report['mapped'])} tensors converted; 1 checkpoint variable ignored (1 global-step)" in card


def test_a_bundle_made_twice_is_the_same_bytes_and_its_card_quotes_paths(tiny_ckpt, tmp_path):
    """No timings in the reports; shell lines of the card work for a folder name with a space."""
    out = tmp_path / "tiny rembert"
    hashes = []
    for _ in range(2):
        bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True, force=True), formats=("safetensors",))
        hashes.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert hashes[0] == hashes[1]
    card = (out / "README.md").read_text()
    assert "cd 'tiny rembert' && sha256sum -c SHA256SUMS" in card
    assert "convert-rembert verify ORIGINAL_CHECKPOINT_DIR 'tiny rembert'" in card


@pytest.mark.parametrize("option", [["--language", "English language"], ["--license", "Apache 2"],
                                    ["--language", "en English"], ["--license", "mit license"], ["--name", "   "]])
def test_bad_card_options_are_one_line_errors(tiny_ckpt, tmp_path, option):
    result = CliRunner().invoke(main, ["bundle", str(tiny_ckpt.prefix), "-o", str(tmp_path / "x"),
                                       "--format", "safetensors", *option])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    assert option[0] in result.output and not (tmp_path / "x").exists()


def test_the_card_of_a_library_bundle_to_a_dot_folder_with_its_own_tolerance(tiny_ckpt, tmp_path):
    """The title falls back to RemBERT, the card lists itself among the files, says the tolerance was the
    user's, and its parity table gives the largest relative error of each head and format."""
    out = tmp_path / ".tiny"
    result = bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True), formats=("safetensors",),
                               tolerance=1e-3)
    card = (out / "README.md").read_text()
    assert "\n# RemBERT\n" in card and "- `README.md`" in card and "overridden by the user" in card
    report = json.loads((out / "parity_report.json").read_text())
    largest: dict[str, float] = {}
    for row in report["rows"]:
        largest[row["head"]] = max(largest.get(row["head"], 0.0), row["rel_err"])
    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1].rstrip(" |")
             for line in card.splitlines() if line.startswith("| RemBert")}
    assert table == {head: f"{value:.1e}" for head, value in largest.items()} and result.parity.passed


def test_bf16_tensors_are_cast_exact(tiny_ckpt, tmp_path):
    out = tmp_path / "bf16"
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors"], ConvertOptions(quiet=True,
                                                                                          dtype="bfloat16"))
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert report.passed and {r.dtype for r in report.tensor_rows if r.check == "values"} == {"bfloat16"}


def test_h5_datasets_are_mapped_when_aligned_and_read_otherwise(tiny_ckpt, tmp_path):
    """convert aligns tf_model.h5's datasets so verify maps them (no copy for TensorFlow); a file whose datasets
    are not aligned (h5py's default layout) is read into memory instead, and both prove the same."""
    import h5py

    from validation.tensor_proof import open_format

    out = tmp_path / "h5"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True))
    unaligned = tmp_path / "unaligned"
    shutil.copytree(out, unaligned)
    (unaligned / "tf_model.h5").unlink()
    with h5py.File(out / "tf_model.h5", "r") as source, h5py.File(unaligned / "tf_model.h5", "w") as copy:
        for key, value in source.attrs.items():
            copy.attrs[key] = value
        for name in source:
            source.copy(source[name], copy, name=name)
    arrays = {}
    for folder, mapped in ((out, True), (unaligned, False)):
        handle = open_format(folder, "tf2")
        with h5py.File(folder / "tf_model.h5", "r") as plain:
            for name in handle.datasets:
                array = handle.array(name)
                on_boundary = plain[name].id.get_offset() % 64 == 0
                assert on_boundary or not mapped  # convert aligns every dataset
                assert isinstance(array, np.memmap) == on_boundary, (folder.name, name)
                assert array.ctypes.data % 64 == 0
                np.testing.assert_array_equal(array, plain[name][()])
                arrays.setdefault(name, []).append(np.array(array))
        handle.close()
        report = verify_conversion(tiny_ckpt.prefix, folder, heads=BASE_HEADS)
        assert report.passed and report.formats == ["tf2"], folder.name
    with h5py.File(unaligned / "tf_model.h5", "r") as file:
        unaligned_offsets = [ds.id.get_offset() % 64 for ds in _datasets(file)]
    assert any(unaligned_offsets)  # the copy really is unaligned, so the read path ran


def _datasets(file) -> list:
    """Every dataset of an open h5py file."""
    import h5py

    found = []
    file.visititems(lambda name, item: found.append(item) if isinstance(item, h5py.Dataset) else None)
    return found


def test_a_failed_bundle_names_its_worst_outputs(tiny_ckpt, converted, tmp_path):
    """The one-line refusal names the three rows furthest over their tolerance, worst first."""
    from validation.parity import severity

    with pytest.raises(ParityFailure) as failed:
        bundle_checkpoint(tiny_ckpt.prefix, tmp_path / "b", ConvertOptions(quiet=True),
                          formats=("pytorch", "safetensors"), tolerance=1e-12)
    assert not (tmp_path / "b").exists()
    rows = verify_conversion(tiny_ckpt.prefix, converted, tolerance=1e-12, tensors=False).rows
    worst = sorted(rows, key=severity, reverse=True)[:3]
    named = ", ".join(str(failed.value).split("(", 1)[1].split("; ")[:3])
    assert [f"{r.head}/{r.format}/{r.output}" for r in worst] == [part.split(" max abs")[0]
                                                                    for part in named.split(", ")], named


def test_the_cards_tokenizer_section_lists_each_cause():
    """Also when every difference has a known cause (nothing unexplained)."""
    from types import SimpleNamespace

    from converters.tokenizer import Agreement
    from validation.bundle import _tokenizer_section

    info = SimpleNamespace(model_type="unigram", pieces=[None] * 512)
    lines = _tokenizer_section((info, Agreement(total=10, equal=8, classes={"nfc-composition": 2})))
    assert any(line.startswith("- 2 x `nfc-composition`: ") for line in lines)
    assert not any("unexplained" in line for line in lines)


def test_a_library_bundle_records_a_command_that_runs_as_written(tiny_ckpt, tmp_path):
    """Without a command from the caller, the card's command line quotes the paths it names."""
    out = tmp_path / "tiny rembert"
    bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True), formats=("safetensors",))
    assert "-o 'tiny rembert'" in (out / "README.md").read_text()


# -- the functional proof: each head measured, against the right part of the original graph ---------------------


def _drop_bias(cls, layer: str):
    """`cls` whose task layer leaves out its bias: a head miswired in a way only its outputs show."""

    class DroppedBias(cls):
        def __init__(self, config):
            super().__init__(config)
            linear = getattr(self, layer)
            linear.register_forward_hook(lambda module, args, output: output - module.bias)

    return DroppedBias


@pytest.mark.parametrize("head", [name for name, spec in HEAD_SPECS.items() if spec.layer is not None])
def test_a_task_head_that_drops_its_bias_fails_the_functional_proof(tiny_ckpt, converted, head,
                                                                    monkeypatch):
    """Zero seeded biases, or a head compared with anything but the float64 reference, would pass it."""
    from rembert_ref import torch_model

    monkeypatch.setitem(torch_model.MODEL_CLASSES, head,
                        _drop_bias(torch_model.MODEL_CLASSES[head], HEAD_SPECS[head].layer))
    report = verify_conversion(tiny_ckpt.prefix, converted, heads=(head,), formats=("safetensors",), tensors=False)
    assert report.failures and {r.head for r in report.failures} == {head}
    assert {r.output for r in report.failures} == set(HEAD_SPECS[head].outputs)


class _CountingEncoder:
    def __init__(self):
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=None,
                use_cache=None):
        return object()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.forward(*args, **kwargs)


@pytest.mark.parametrize("argument", ["input_ids", "attention_mask", "token_type_ids", "output_hidden_states"])
def test_the_shared_encoder_runs_again_when_any_argument_differs(argument):
    """Sharing one result between calls that differ in any argument would give a head another head's outputs."""
    import torch

    from validation.parity import _SharedEncoder

    def call(**changed):
        values = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 0]]),
                  "token_type_ids": torch.tensor([[0, 1, 1]]), "output_hidden_states": True}
        return shared(**dict(values, **changed))

    encoder = _CountingEncoder()
    shared = _SharedEncoder(encoder)
    first = call()
    assert call() is first and encoder.calls == 1  # equal values in new tensors: one pass
    other = {"input_ids": torch.tensor([[5, 6, 8]]), "attention_mask": torch.tensor([[1, 1, 1]]),
             "token_type_ids": torch.tensor([[0, 0, 1]]), "output_hidden_states": False}[argument]
    assert call(**{argument: other}) is not first and encoder.calls == 2


def test_the_checkpoints_tables_read_in_row_slices_are_the_whole_tables(tiny_ckpt, monkeypatch):
    """verify reads the embedding and output-embedding tables in slices; a slice put at the wrong rows would
    move the reference away from the original graph (at full size, never in one slice)."""
    import rembert_ref.numpy_reference as reference
    from converters.tf1_checkpoint import CheckpointReader
    from validation.parity import CheckpointWeights

    config = tiny_ckpt.config
    rng = np.random.default_rng(4)
    ids = rng.integers(0, config["vocab_size"], size=(2, 9))
    whole = reference.original_forward(tiny_ckpt.variables, config, ids)
    monkeypatch.setattr(reference, "SLICE_BYTES", 8 * 43 * 7)  # 7 output-embedding rows per slice
    with CheckpointReader(tiny_ckpt.prefix) as reader:
        sliced = reference.original_forward(CheckpointWeights(reader), config, ids)
    for key in ("embedding_output", "last_hidden_state", "mlm_logits"):
        np.testing.assert_allclose(sliced[key], whole[key], rtol=0, atol=1e-10)


@pytest.mark.parametrize("positions", [4, 5, 12])
def test_the_seeded_probe_fits_a_short_model_and_keeps_a_padded_row(positions):
    """A probe longer than max_position_embeddings cannot run; one without padding leaves the mask untested."""
    config = RemBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=positions, input_embedding_size=18,
                           output_embedding_size=43)
    inputs = make_inputs(config)
    mask, types = inputs["attention_mask"], inputs["token_type_ids"]
    assert inputs["input_ids"].shape[1] <= positions
    assert (mask == 0).any()
    assert set(types[1][mask[1] == 1]) == {0, 1}


def test_task_head_weights_a_caller_passes_are_the_ones_measured(tiny_ckpt, converted):
    """Seeded weights used in their place would still pass, but would not be the head the caller asked about."""
    bias = np.array([50.0, -60.0, 70.0], np.float32)
    weights = {"RemBertForSequenceClassification": (np.zeros((3, 32), np.float32), bias)}
    report = verify_conversion(tiny_ckpt.prefix, converted, heads=("RemBertForSequenceClassification",),
                               formats=("safetensors",), tensors=False, task_head_weights=weights)
    (row,) = report.rows
    # A zero weight makes the logits the bias: the row's scale, and so its bar, is max |bias|.
    assert row.passed and row.tolerance == pytest.approx(1e-5 + 1e-5 * 70.0)


def test_every_head_of_a_float16_tf_model_h5_is_measured(tiny_ckpt, tmp_path):
    """float16 datasets must reach the TF heads widened; else the task heads cannot even run."""
    out = tmp_path / "fp16"
    convert_checkpoint(tiny_ckpt.prefix, out, ["tf2"], ConvertOptions(quiet=True, dtype="float16"))
    report = verify_conversion(tiny_ckpt.prefix, out, tensors=False)
    assert report.passed and {r.head for r in report.rows} == set(HEADS)


def test_a_checkpoint_without_a_pooler_verifies_every_head_that_does_not_read_it(tmp_path):
    """convert takes a checkpoint without a pooler; verify (and so bundle) refused the whole folder."""
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint
    from tests.conftest import TINY_ORIGINAL_CONFIG

    prefix = write_synthetic_checkpoint(tmp_path / "ck", dict(TINY_ORIGINAL_CONFIG), optimizer_slots=False,
                                        with_pooler=False)
    out = tmp_path / "out"
    convert_checkpoint(prefix, out, ["safetensors", "tf2"], ConvertOptions(quiet=True))
    report = verify_conversion(prefix, out)
    pooled = {"RemBertForSequenceClassification", "RemBertForMultipleChoice"}
    assert report.passed and {(r.head, r.format) for r in report.rows} == {
        (head, fmt) for head in set(HEADS) - pooled for fmt in ("safetensors", "tf2")}
    assert "pooler_output" not in {r.output for r in report.rows}
    with pytest.raises(UserError, match="RemBertForMultipleChoice read.* the pooled output but the checkpoint has "
                                        "no pooler"):
        verify_conversion(prefix, out, heads=("RemBertModel", "RemBertForMultipleChoice"))
