"""The parity report and the bundle: they pass on good conversions and fail on broken ones."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from rembert_convert.cli import main
from converters.convert import ConvertOptions, convert_checkpoint
from validation.bundle import ParityFailure, bundle_checkpoint, card_snippets
from validation.parity import HEADS, verify_conversion

BASE_HEADS = ("RemBertModel", "RemBertForMaskedLM")


@pytest.fixture(scope="module")
def bundled(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True))


def test_bundle_measures_every_head_format_and_output(bundled, tiny_ckpt):
    report = bundled.parity
    assert report.passed and report.formats == ["pytorch", "safetensors", "tf2"]
    layers = tiny_ckpt.config["num_hidden_layers"]
    cells = {(r.head, r.format) for r in report.rows}
    for fmt in report.formats:  # base and MLM: every format against the float64 original graph
        for head in BASE_HEADS:
            assert (head, fmt) in cells
    for head in HEADS[2:]:  # task heads: the other formats against pytorch_model.bin
        assert {(head, "safetensors"), (head, "tf2")} <= cells
    base_tf = {r.output for r in report.rows if (r.head, r.format) == ("RemBertModel", "tf2")}
    assert {f"hidden_states.{i}" for i in range(layers + 1)} | {f"attentions.{i}" for i in range(layers)} | {
        "last_hidden_state", "pooler_output"} == base_tf
    assert all(r.reference == "original-fp64" for r in report.rows if r.head in BASE_HEADS)
    assert {"loss", "logits"} <= {r.output for r in report.rows if r.head == "RemBertForSequenceClassification"}


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


def _convert(tiny_ckpt, out: Path, **options) -> Path:
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, **options))
    return out


def test_a_perturbed_weight_fails_parity(tiny_ckpt, tmp_path):
    out = _convert(tiny_ckpt, tmp_path / "out")
    tensors = load_file(out / "model.safetensors")
    tensors["rembert.encoder.layer.1.output.dense.bias"][3] += 1e-3
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert not report.passed
    failing = {r.output for r in report.failures if r.head == "RemBertModel"}
    assert "hidden_states.2" in failing and "hidden_states.1" not in failing


def test_the_chosen_activation_is_the_one_verified(tiny_ckpt, tmp_path):
    """The ground truth runs the original graph with the activation config.json declares, so an exact-erf
    conversion is verified as such and the report says so."""
    out = _convert(tiny_ckpt, tmp_path / "out", activation="exact")
    report = verify_conversion(tiny_ckpt.prefix, out, heads=BASE_HEADS)
    assert report.passed and report.activation == "gelu"


def test_failed_parity_writes_no_bundle(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ParityFailure, match="parity failed on .* nothing was written"):
        bundle_checkpoint(tiny_ckpt.prefix, out, ConvertOptions(quiet=True), formats=("safetensors",),
                          heads=BASE_HEADS, tolerance=1e-12)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_verify_cli_exit_codes(tiny_ckpt, tmp_path):
    out = _convert(tiny_ckpt, tmp_path / "out")
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(out), "--report", str(tmp_path / "rep")])
    assert ok.exit_code == 0, ok.output
    assert "parity passed" in ok.output and (tmp_path / "rep" / "parity_report.md").is_file()
    strict = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(out), "--tolerance", "1e-12"])
    assert strict.exit_code == 1 and "parity FAILED" in strict.output
    report = json.loads((tmp_path / "rep" / "parity_report.json").read_text())
    assert report["tolerance_override"] is False
    missing = runner.invoke(main, ["verify", str(tiny_ckpt.prefix), str(tmp_path)])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")


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


@pytest.mark.parametrize("option", [["--language", "English language"], ["--license", "Apache 2"]])
def test_bad_card_options_are_one_line_errors(tiny_ckpt, tmp_path, option):
    result = CliRunner().invoke(main, ["bundle", str(tiny_ckpt.prefix), "-o", str(tmp_path / "x"),
                                       "--format", "safetensors", *option])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    assert option[0] in result.output and not (tmp_path / "x").exists()
