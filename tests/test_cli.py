"""The CLI: thin commands, one-line errors with exit code 2, tracebacks only with --debug."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import click
from click.testing import CliRunner

from rembert_convert.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["inspect", "pytorch", "safetensors", "tf2", "convert", "tokenizer", "verify",
                                     "bundle"])
def test_every_command_shows_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.output  # and under it (the usage line also names the command), a command line:
    assert f"convert-rembert {command} " in result.output.split("Example:", 1)[1]


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
        (("safetensors", "{example}", "-o", "{tmp}/out", "--max-shard-size", "lots"),
         "error: --max-shard-size 'lots' is not a size; write it like 5GB"),
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
    """--debug adds the traceback but keeps the README's exit code: a user error is still 2 (not Python's 1 for
    an uncaught exception, which reads as verify's 'parity failed'), with its one error line last."""
    result = run("pytorch", tmp_path / "nowhere", "-o", tmp_path / "out", "--debug")
    assert result.exit_code == 2, result.output
    assert "Traceback (most recent call last)" in result.output and "UserError" in result.output
    assert result.output.rstrip().splitlines()[-1].startswith("error: no TF1 checkpoint at ")
    assert not (tmp_path / "out").exists()


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
    assert "(or convert with --no-tokenizer)" in result.output  # the way out for a user who wants the weights
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
        assert "pass --tokenizer FILE, or --no-tokenizer" in result.output  # the note names both ways on
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
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "bert_config.json" in notes[0] and "--config" in notes[0]  # the note referred to


def test_convert_names_every_file_it_wrote_and_the_tokenizers_length(tmp_path):
    """The progress lines a user reads: a `wrote` line per file in the output and where model_max_length came from."""
    out = tmp_path / "out"
    result = run("convert", EXAMPLE, "-o", out, "--format", "safetensors")
    assert result.exit_code == 0, result.output
    for path in out.iterdir():
        assert f"wrote {path}" in result.output.splitlines()
    positions = json.loads((EXAMPLE / "bert_config.json").read_text())["max_position_embeddings"]
    assert f"tokenizer: model_max_length {positions} (the checkpoint's max_position_embeddings)" in result.output


def test_convert_passes_max_shard_size_to_the_safetensors_writer(tmp_path):
    """convert's --max-shard-size must shard model.safetensors as the safetensors command's does."""
    whole = tmp_path / "whole"
    assert run("convert", EXAMPLE, "-o", whole, "--format", "safetensors", "-q").exit_code == 0
    limit = (whole / "model.safetensors").stat().st_size // 3
    out = tmp_path / "sharded"
    result = run("convert", EXAMPLE, "-o", out, "--format", "safetensors", "--max-shard-size", str(limit), "-q")
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert all((out / shard).stat().st_size <= limit for shard in shards)


def test_checksums_records_each_files_sha256_and_is_off_by_default(tmp_path):
    """--checksums must reach the report, with the files' real digests; without it no digest is computed."""
    import hashlib

    plain, summed = tmp_path / "plain", tmp_path / "summed"
    assert run("safetensors", EXAMPLE, "-o", plain, "-q").exit_code == 0
    assert run("safetensors", EXAMPLE, "-o", summed, "-q", "--checksums").exit_code == 0
    files = json.loads((summed / "conversion_report.json").read_text())["files"]
    assert "model.safetensors" in files
    for name, row in files.items():
        assert row["sha256"] == hashlib.sha256((summed / name).read_bytes()).hexdigest()
    assert all("sha256" not in row for row in json.loads((plain / "conversion_report.json").read_text())["files"]
               .values())


def test_no_mlm_head_and_activation_reach_the_written_model(tmp_path):
    """--no-mlm-head writes the bare RemBertModel layout and --activation exact writes hidden_act 'gelu'."""
    from safetensors import safe_open

    def names(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return set(f.keys())

    full, bare = tmp_path / "full", tmp_path / "bare"
    assert run("safetensors", EXAMPLE, "-o", full, "-q").exit_code == 0
    result = run("safetensors", EXAMPLE, "-o", bare, "--no-mlm-head", "--activation", "exact")
    assert result.exit_code == 0, result.output
    with_head = {n for n in names(full) if n.startswith("cls.")}
    assert with_head and not {n for n in names(bare) if n.startswith("cls.")}
    assert names(bare) == {n.removeprefix("rembert.") for n in names(full) - with_head}
    assert "(0 in the MLM head)" in result.output and "activation gelu (exact erf gelu)" in result.output
    assert json.loads((bare / "config.json").read_text())["hidden_act"] == "gelu"
    assert json.loads((full / "config.json").read_text())["hidden_act"] == "gelu_new"


def test_verify_of_a_format_the_folder_lacks_names_the_next_step(tmp_path):
    """The README's promise for every error: one line naming the problem and the next step, nothing written."""
    out = tmp_path / "pt"
    assert run("pytorch", EXAMPLE, "-o", out, "-q").exit_code == 0
    result = run("verify", EXAMPLE, out, "--format", "safetensors", "--report", tmp_path / "rep")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "has no safetensors files; it holds pytorch" in result.output
    assert "--format pytorch" in result.output  # the next step
    assert not (tmp_path / "rep").exists()
    (out / "pytorch_model.bin").unlink()
    empty = run("verify", EXAMPLE, out)
    assert empty.exit_code == 2 and empty.output.count("\n") == 1
    assert "holds no weights" in empty.output and f"convert-rembert convert CKPT -o {out}" in empty.output


def test_verify_all_rows_and_config_options(tmp_path):
    """--all-rows prints every functional row of the report (not only the worst per head and format), and
    --config is the config verify reads when none is beside the checkpoint."""
    copy = tmp_path / "ck"
    shutil.copytree(EXAMPLE, copy)
    out = tmp_path / "out"
    assert run("convert", copy, "-o", out, "--format", "safetensors", "-q").exit_code == 0

    def rows(output):
        return [line for line in output.splitlines() if line.startswith(("ok  ", "FAIL"))]

    worst = run("verify", copy, out, "--report", tmp_path / "rep")
    every = run("verify", copy, out, "--all-rows")
    assert worst.exit_code == every.exit_code == 0, worst.output + every.output
    report = json.loads((tmp_path / "rep" / "parity_report.json").read_text())
    assert len(rows(worst.output)) == len(report["summary"]["worst_per_head_and_format"]) < len(report["rows"])
    assert len(rows(every.output)) == len(report["rows"])
    config = tmp_path / "bert_config.json"
    shutil.move(copy / "bert_config.json", config)
    assert run("verify", copy, out).exit_code == 2
    given = run("verify", copy, out, "--config", config)
    assert given.exit_code == 0 and "parity passed" in given.output, given.output


def test_bundle_says_what_parity_it_measured_and_its_card_leaves_out_debug(tmp_path):
    """bundle's summary line carries the report's counts, and --debug (no effect on the result) stays out of the
    command the card records."""
    out = tmp_path / "pub"
    result = run("bundle", EXAMPLE, "-o", out, "--format", "safetensors", "--debug")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "parity_report.json").read_text())
    assert (f"parity passed: {len(report['tensor_rows'])} tensor checks exact, {len(report['rows'])} outputs "
            "within tolerance") in result.output
    for path in out.iterdir():
        assert f"wrote {path}" in result.output.splitlines()
    card = (out / "README.md").read_text()
    assert f"convert-rembert bundle {EXAMPLE} --output {out} --format safetensors\n" in card and "--debug" not in card


def test_inspect_hides_optimizer_slots_unless_all_and_says_how_to_see_them(tmp_path):
    """Without --all the optimizer slots are hidden and the summary names --all; with it they are listed."""
    hidden = run("inspect", EXAMPLE)
    shown = run("inspect", EXAMPLE, "--all")
    assert hidden.exit_code == shown.exit_code == 0
    assert "/adam_m" not in hidden.output and "/adam_m" in shown.output
    assert "(optimizer slots hidden; --all lists them)" in hidden.output
    assert "(optimizer slots hidden" not in shown.output


def test_debug_shows_the_traceback_of_an_internal_error_too(tmp_path, monkeypatch):
    """An internal error (a bug) shows its traceback under --debug, so it is really one flag away, and still
    exits 3."""
    import converters.convert

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(converters.convert, "plan_conversion", broken)
    result = run("pytorch", EXAMPLE, "-o", tmp_path / "out", "--debug")
    assert result.exit_code == 3, result.output  # the README's code for a bug, with or without --debug
    assert "Traceback (most recent call last)" in result.output and "RuntimeError: a bug" in result.output
    assert "rerun with --debug" not in result.output


def test_a_reader_leaving_a_stdout_without_a_descriptor_exits_141_and_opens_nothing(monkeypatch):
    """A test runner's stdout has no file descriptor: nothing to point at the null device, and no descriptor
    may be left open by trying."""
    def gone(*args, **kwargs):
        raise BrokenPipeError

    monkeypatch.setattr(click, "echo", gone)
    before = sorted(os.listdir("/proc/self/fd"))
    result = run("inspect", EXAMPLE)
    assert result.exit_code == 141
    assert sorted(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("debug", [False, True])
def test_a_closed_stdout_pipe_exits_as_sigpipe_without_an_internal_error_line(debug):
    """Writing to a pipe whose reader left must not print 'internal error ... rerun with --debug' (exit 3), nor,
    under --debug, end as Click ends a broken pipe: exit 1, a parity failure's code; --debug adds the traceback,
    not another exit code. stdout buffered, as from a shell (PYTHONUNBUFFERED would hide a line left in the
    buffer for the interpreter's final flush)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before the first line is written: every write fails with EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "rembert_convert.cli", "inspect",
                                 str(EXAMPLE), *(["--debug"] if debug else [])], stdout=writer,
                                stderr=subprocess.PIPE, text=True, cwd=EXAMPLE.parent.parent, env=env, timeout=300)
    finally:
        os.close(writer)
    if debug:
        assert "BrokenPipeError" in result.stderr and "error:" not in result.stderr
    else:
        assert result.stderr == ""
    assert result.returncode == 128 + 13  # as a command stopped by SIGPIPE (a shell reports 141)


# -- mutation review of cli.py, second pass: exit codes, the one-line form, option parsing, what is printed ------


def usage_error_line(result, command: str) -> str:
    """Click's own usage error as ours: exit 2, nothing on stdout, one `error: ` line on stderr ending with the
    help to read."""
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output and "Usage:" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert lines[0].endswith(f" (see `convert-rembert {command}--help`)"), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "command", "message"),
    [
        (["pytorch", "{example}", "-o", "{out}", "--dtype", "float64"], "pytorch ", "Invalid value for '--dtype'"),
        (["convert", "{example}", "-o", "{out}", "--format", "onnx"], "convert ", "Invalid value for '--format'"),
        (["inspect", "{example}", "--head", "regression"], "inspect ", "Invalid value for '--head'"),
        (["tokenizer", "{example}/sentencepiece.model", "-o", "{out}", "--model-max-length", "0"], "tokenizer ",
         "Invalid value for '--model-max-length'"),
        (["verify", "{example}", "{out}", "--tolerance", "tight"], "verify ", "Invalid value for '--tolerance'"),
        (["bundle", "{example}", "-o", "{out}", "--no-such-option"], "bundle ", "--no-such-option"),
        (["frobnicate"], "", "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_naming_the_help_and_write_nothing(tmp_path, args, command, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [a.format(example=EXAMPLE, out=out) for a in args])
    assert message in usage_error_line(result, command)
    assert list(tmp_path.iterdir()) == []


def test_h_is_help_as_help_option_names_promises():
    for args in (["-h"], ["pytorch", "-h"]):
        short = run(*args)
        assert short.exit_code == 0 and short.output == run(*args[:-1], "--help").output
        assert short.output.startswith("Usage: convert-rembert ")


def test_errors_go_to_stderr_and_results_to_stdout(tmp_path):
    failed = run("pytorch", tmp_path / "nowhere", "-o", tmp_path / "out")
    assert failed.exit_code == 2 and failed.stdout == ""
    assert failed.stderr.startswith("error: no TF1 checkpoint at") and failed.stderr.count("\n") == 1
    listed = run("inspect", EXAMPLE)
    assert listed.exit_code == 0 and listed.stderr == "" and "mapped   " in listed.stdout


def _broken_plan(monkeypatch, exc: BaseException) -> None:
    import converters.convert

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(converters.convert, "plan_conversion", broken)


@pytest.mark.parametrize("module", ["converters.gone", "rembert_ref.gone", "validation", "rembert_convert.gone"])
def test_a_missing_module_of_any_of_our_packages_is_a_bug_not_the_install(tmp_path, monkeypatch, module):
    _broken_plan(monkeypatch, ModuleNotFoundError(f"No module named {module!r}", name=module))
    result = run("pytorch", EXAMPLE, "-o", tmp_path / "out")
    assert result.exit_code == 3 and result.stderr.startswith("error: internal error ModuleNotFoundError")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_inside_a_command_is_one_line_exit_130(monkeypatch):
    import converters.convert

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(converters.convert, "inspect_checkpoint", interrupted)
    result = run("inspect", EXAMPLE)
    assert result.exit_code == 130 and result.stdout == ""
    assert result.stderr == "error: interrupted by SIGINT\n"  # one line: not Click's blank line and its Abort


def test_an_operation_not_permitted_is_a_refusal_too():
    """EPERM (chattr +i, a sealed mount) as EACCES: the file system's refusal, not a bug."""
    import errno

    from rembert_convert.cli import _file_system_refusal

    assert _file_system_refusal(OSError(errno.EPERM, "Operation not permitted", "out/x")) == (
        "out/x: Operation not permitted; check its permissions (inputs must be readable, outputs writable)")


def test_ctrl_c_while_the_options_are_parsed_is_an_interrupt(monkeypatch):
    """Click turns a KeyboardInterrupt outside the command into click.Abort: it must end as one, exit 130."""
    def interrupted(self, value, param, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(click.Path, "convert", interrupted)
    result = run("inspect", EXAMPLE)
    assert result.exit_code == 130, result.output
    assert result.output == "error: interrupted by SIGINT\n"  # one line: no blank line before it, as Click prints


def test_called_without_standalone_mode_the_group_returns_and_raises_as_click_does(tmp_path):
    assert main.main(["inspect", str(EXAMPLE)], standalone_mode=False) is None
    with pytest.raises(click.MissingParameter):
        main.main(["pytorch", str(EXAMPLE)], standalone_mode=False)
    assert list(tmp_path.iterdir()) == []


def test_verify_marks_each_row_and_counts_what_passed(tmp_path):
    """One MLM-head tensor changed: its tensor check and the heads that read it fail, the others pass; the
    printed marks and the verdict's counts are the report's."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "out"
    assert run("convert", EXAMPLE, "-o", out, "--format", "safetensors", "-q").exit_code == 0
    tensors = load_file(str(out / "model.safetensors"))
    tensors["cls.predictions.dense.bias"][0] += 1.0
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    result = run("verify", EXAMPLE, out, "--all-rows", "--report", tmp_path / "rep")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "rep" / "parity_report.json").read_text())
    passed = {(r["head"], r["format"], r["output"]): r["passed"] for r in report["rows"]}
    assert True in passed.values() and False in passed.values()  # both marks are to be told apart
    printed = {}
    for line in result.stdout.splitlines():
        if line.startswith(("ok   ", "FAIL ")) and not line.startswith("FAIL tensor"):
            head, fmt, output = line[5:].split()[:3]
            printed[(head, fmt, output)] = line.startswith("ok   ")
    assert printed == passed
    tensor_ok = sum(r["passed"] for r in report["tensor_rows"])
    rows_ok = sum(passed.values())
    verdict = (f"parity FAILED: tensor checks {tensor_ok}/{len(report['tensor_rows'])} pass, outputs {rows_ok}/"
               f"{len(passed)} within tolerance (weights float32, safetensors)")
    assert result.stdout.splitlines()[-1] == verdict
    assert tensor_ok == len(report["tensor_rows"]) - 1
    # -q: no rows, but still the failing tensor and the verdict
    quiet = run("verify", EXAMPLE, out, "-q")
    assert quiet.exit_code == 1
    lines = quiet.stdout.splitlines()
    assert len(lines) == 2 and lines[-1] == verdict
    assert lines[0].startswith("FAIL tensor") and "cls.predictions.dense.bias" in lines[0]


def test_bundle_records_its_exact_command_and_worst_relative_error(tmp_path):
    """The card's command: arguments, then each option not at its default as typed (a flag bare, a repeated
    option once per value); the summary's worst relative error is the parity report's largest."""
    out = tmp_path / "pub"
    result = run("bundle", EXAMPLE, "-o", out, "--format", "safetensors", "--language", "en", "--language", "sw",
                 "--checksums")
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert (f"convert-rembert bundle {EXAMPLE} --output {out} --checksums --format safetensors --language en "
            "--language sw\n") in card
    rows = json.loads((out / "parity_report.json").read_text())["rows"]
    assert f"(worst relative error {max(r['rel_err'] for r in rows):.1e})" in result.output


def test_inspect_lists_what_is_not_an_optimizer_slot_and_counts_every_row(tmp_path):
    listed = run("inspect", EXAMPLE, "--all")
    hidden = run("inspect", EXAMPLE)
    assert listed.exit_code == hidden.exit_code == 0
    rows = [line.split()[:2] for line in listed.output.splitlines() if line.startswith(("mapped ", "ignored "))]
    counts = {status: sum(1 for s, _ in rows if s == status) for status in ("ignored", "mapped")}
    assert counts["ignored"] and counts["mapped"]
    summary = f"{EXAMPLE / 'model.ckpt-3'}: 1 data shard(s); {counts['ignored']} ignored, {counts['mapped']} mapped"
    assert summary in listed.output and summary in hidden.output
    # not optimizer state: listed without --all too
    for kept in ("global_step", "cls/seq_relationship/output_weights"):
        assert any(line.startswith("ignored ") and line.split()[1] == kept for line in hidden.output.splitlines())


def test_a_checkpoint_without_a_pooler_says_so_and_counts_it_neither_converted_nor_ignored(tmp_path):
    """Each checkpoint variable is converted or ignored (the counts line); the pooler the checkpoint lacks is
    neither, and has a line of its own."""
    from converters.tf1_checkpoint import CheckpointReader
    from testkit.synthetic_checkpoint import write_synthetic_checkpoint
    from tests.conftest import TINY_ORIGINAL_CONFIG

    prefix = write_synthetic_checkpoint(tmp_path / "ck", TINY_ORIGINAL_CONFIG, seed=2, with_pooler=False)
    out = tmp_path / "out"
    result = run("pytorch", prefix, "-o", out)
    assert result.exit_code == 0, result.output
    absent = [line for line in result.output.splitlines() if line.startswith("absent by design: ")]
    assert sorted(line.split()[3].rstrip(":") for line in absent) == ["rembert.pooler.dense.bias",
                                                                     "rembert.pooler.dense.weight"]
    report = json.loads((out / "conversion_report.json").read_text())
    with CheckpointReader(prefix) as reader:
        assert len(report["mapped"]) + len(report["ignored"]) == len(reader.entries)
    mlm = sum(row["source"].startswith("cls/predictions/") for row in report["mapped"])
    assert mlm and report["ignored"]
    assert (f"converted {len(report['mapped'])} tensors ({mlm} in the MLM head), ignored {len(report['ignored'])}, "
            in result.output)


def test_quiet_keeps_the_no_tokenizer_note_out_too(tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(EXAMPLE, copy)
    (copy / "sentencepiece.model").unlink()
    result = run("convert", copy, "-o", tmp_path / "out", "--format", "safetensors", "-q")
    assert result.exit_code == 0 and result.output == ""


def test_convert_writes_only_the_formats_asked_for(tmp_path):
    out = tmp_path / "out"
    result = run("convert", EXAMPLE, "-o", out, "--format", "tf2", "--format", "pytorch", "-q")
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"pytorch_model.bin", "tf_model.h5", "tokenizer.json"} <= names
    assert not {n for n in names if "safetensors" in n}
    assert sorted(json.loads((out / "conversion_report.json").read_text())["formats"]) == ["pytorch", "tf2"]
