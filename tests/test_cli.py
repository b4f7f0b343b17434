"""The CLI: thin commands, one-line errors with exit code 2, tracebacks only with --debug."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rembert_convert.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["inspect", "pytorch", "safetensors", "tf2", "convert", "tokenizer"])
def test_every_command_shows_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.output and f"convert-rembert {command} " in result.output


def test_convert_the_shipped_example(tmp_path):
    out = tmp_path / "tiny"
    result = run("convert", EXAMPLE, "-o", out)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["pytorch_model.bin", "model.safetensors", "tf_model.h5", "tokenizer.json",
                            "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.model",
                            "config.json", "conversion_report.json"])
    assert "activation gelu_new (tanh approximation, TF1 BERT's gelu)" in result.output
    report = json.loads((out / "conversion_report.json").read_text())
    ignored = {row["source"] for row in report["ignored"]}
    assert {"global_step", "cls/seq_relationship/output_weights"} <= ignored
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 512 and config["pad_token_id"] == 0


def test_inspect_lists_fates_and_writes_nothing(tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(EXAMPLE, copy)
    before = sorted(p.name for p in copy.iterdir())
    result = run("inspect", copy, "--all")
    assert result.exit_code == 0, result.output
    assert "mapped   bert/encoder/layer_1/attention/self/key/kernel" in result.output
    assert "rembert.encoder.layer.1.attention.self.key.weight (transposed)" in result.output
    assert "ignored  bert/encoder/layer_1/attention/self/key/kernel/adam_m" in result.output
    assert "cls/seq_relationship/output_bias" in result.output
    assert sorted(p.name for p in copy.iterdir()) == before


def test_inspect_reports_a_mismatch_and_fails(tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(EXAMPLE, copy)
    config = json.loads((copy / "bert_config.json").read_text())
    config["num_hidden_layers"] = 3
    (copy / "bert_config.json").write_text(json.dumps(config))
    result = run("inspect", copy)
    assert result.exit_code == 2
    assert "missing  bert/encoder/layer_2/attention/self/query/kernel" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: this checkpoint would not convert")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pytorch", "{tmp}/nowhere", "-o", "{tmp}/out"), "error: no TF1 checkpoint at"),
        (("safetensors", "{example}", "-o", "{tmp}/out", "--config", "{tmp}/none.json"),
         "error: config file"),
        (("safetensors", "{example}", "-o", "{tmp}/out", "--max-shard-size", "lots"), "error: cannot read size"),
        (("convert", "{example}", "-o", "{tmp}/out", "--tokenizer", "{tmp}/x.model"), "error: tokenizer"),
        (("convert", "{example}", "-o", "{tmp}/out", "--output-embedding-name", "cls/none"),
         "error: --output-embedding-name"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    args = [a.format(tmp=tmp_path, example=EXAMPLE) for a in args]
    result = run(*args)
    assert result.exit_code == 2
    assert result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    assert run("safetensors", EXAMPLE, "-o", out, "-q").exit_code == 0
    result = run("safetensors", EXAMPLE, "-o", out)
    assert result.exit_code == 2 and "pass --force" in result.output
    assert run("safetensors", EXAMPLE, "-o", out, "--force", "-q").exit_code == 0


def test_debug_shows_the_traceback(tmp_path):
    result = run("pytorch", tmp_path / "nowhere", "-o", tmp_path / "out", "--debug")
    assert result.exit_code != 0
    assert result.exc_info is not None and type(result.exc_info[1]).__name__ == "UserError"


def test_quiet_means_quiet_and_tensorflow_notices_stay_hidden(tmp_path):
    """A real process, so that TensorFlow's C++ start-up notices (absl/oneDNN, written to file descriptor 2 on
    import, whatever TF_CPP_MIN_LOG_LEVEL says) would show: bundle imports TensorFlow to verify tf_model.h5."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["PYTHONPATH"] = str(EXAMPLE.parent.parent)
    out = tmp_path / "tiny"
    quiet = subprocess.run([sys.executable, "-m", "rembert_convert.cli", "bundle", str(EXAMPLE), "-o", str(out),
                            "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("", "")
    loud = subprocess.run([sys.executable, "-m", "rembert_convert.cli", "verify", str(EXAMPLE), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert loud.returncode == 0 and "parity passed" in loud.stdout
    assert loud.stderr == ""


def test_tokenizer_model_max_length(tmp_path):
    default = run("tokenizer", EXAMPLE / "sentencepiece.model", "-o", tmp_path / "a", "--quiet")
    short = run("tokenizer", EXAMPLE / "sentencepiece.model", "-o", tmp_path / "b", "--model-max-length", "64")
    assert default.exit_code == short.exit_code == 0 and default.output == ""
    assert json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())["model_max_length"] == 512
    assert json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())["model_max_length"] == 64
    converted = run("convert", EXAMPLE, "-o", tmp_path / "c", "--format", "safetensors", "--quiet")
    assert converted.exit_code == 0 and converted.output == ""
    positions = json.loads((EXAMPLE / "bert_config.json").read_text())["max_position_embeddings"]
    tokenizer_config = json.loads((tmp_path / "c" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == positions != 512
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_inspect_checks_the_sentencepiece_model_convert_would_take(tmp_path):
    from testkit.spm_models import train_sentencepiece

    copy = tmp_path / "ck"
    shutil.copytree(EXAMPLE, copy)
    ok = run("inspect", copy)
    assert ok.exit_code == 0 and f"tokenizer: {copy / 'sentencepiece.model'} (its pieces match" in ok.output
    train_sentencepiece(copy / "sentencepiece.model", vocab_size=300)  # the config says 512
    result = run("inspect", copy)
    assert result.exit_code == 2
    assert "has 300 pieces but the model's vocab_size is 512" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: this checkpoint would not convert")
    assert run("convert", copy, "-o", tmp_path / "out").exit_code == 2  # as convert refuses it
    # inspect takes --tokenizer / --no-tokenizer as convert does, and agrees with convert on both.
    right = EXAMPLE / "sentencepiece.model"
    chosen = run("inspect", copy, "--tokenizer", right)
    assert chosen.exit_code == 0 and f"tokenizer: {right} (its pieces match" in chosen.output
    assert run("convert", copy, "--tokenizer", right, "-o", tmp_path / "out", "-q").exit_code == 0
    left_out = run("inspect", copy, "--no-tokenizer")
    assert left_out.exit_code == 0 and "tokenizer" not in left_out.output
    both = run("inspect", copy, "--no-tokenizer", "--tokenizer", right)
    assert both.exit_code == 2 and "contradict" in both.output


def test_a_conversion_without_a_tokenizer_to_find_says_so(tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(EXAMPLE, copy)
    (copy / "sentencepiece.model").unlink()
    note = "note: no sentencepiece.model or sent_piece.model beside the checkpoint, so no tokenizer"
    for command in (["inspect"], ["convert", "-o", tmp_path / "a"], ["bundle", "-o", tmp_path / "b",
                                                                       "--format", "safetensors"]):
        result = run(command[0], copy, *command[1:])
        assert result.exit_code == 0 and result.output.strip().splitlines()[-1].startswith(note), result.output
        quiet = run(command[0], copy, *command[1:], "--no-tokenizer", *(["--force"] if len(command) > 1 else []))
        assert quiet.exit_code == 0 and note not in quiet.output, quiet.output
    assert not (tmp_path / "a" / "tokenizer.json").exists()


def test_a_savedmodel_is_named_as_such_even_beside_a_checkpoint_file(tmp_path):
    copy = tmp_path / "bleurt"
    shutil.copytree(EXAMPLE.parent / "tiny-bleurt", copy)
    (copy / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-7"\n')  # names nothing that is here
    result = run("pytorch", copy, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"read checkpoint {copy / 'variables' / 'variables'} (the SavedModel's variables)" in result.output


def test_a_transformers_config_with_dtype_gets_the_converted_dtype_under_both_names(tmp_path):
    from rembert_ref.config import RemBertConfig

    values = RemBertConfig.from_original_json_file(EXAMPLE / "bert_config.json").to_dict()
    values.pop("torch_dtype")
    values["dtype"] = "float32"  # as transformers 5.x saves it
    config = tmp_path / "config.json"
    config.write_text(json.dumps(values))
    result = run("safetensors", EXAMPLE, "-o", tmp_path / "out", "--config", config, "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["dtype"] == written["torch_dtype"] == "bfloat16"


def test_the_clis_choices_are_the_librarys():
    """The CLI spells them out so that --help imports no numpy; they must stay what the library takes."""
    import rembert_convert.cli as cli
    from converters.convert import DEFAULT_MAX_SHARD_SIZE, FORMATS
    from converters.h5_writer import H5_DTYPES
    from converters.tokenizer import DEFAULT_MODEL_MAX_LENGTH
    from converters.writers import TARGET_DTYPES

    ours = (cli.FORMATS, cli.DEFAULT_MAX_SHARD_SIZE, cli.ALL_DTYPES, cli.TF2_DTYPES, cli.DEFAULT_MODEL_MAX_LENGTH)
    library = (FORMATS, DEFAULT_MAX_SHARD_SIZE, TARGET_DTYPES, tuple(H5_DTYPES), DEFAULT_MODEL_MAX_LENGTH)
    assert ours == library


def test_inspect_without_a_config_does_not_claim_the_tokenizer_fits(tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(EXAMPLE, copy)
    (copy / "bert_config.json").unlink()
    result = run("inspect", copy)
    assert result.exit_code == 2
    assert "(not checked: no usable config to check it against; see the note above)" in result.output
    assert "its pieces match" not in result.output
