"""Never destroy what the user has: inputs are refused as outputs, `--force` replaces only with a complete
output, signals and kills leave nothing behind, cheap checks come first, and errors are one line a person
can act on (issue 9)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rembert_convert.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tiny-rembert"
CHECKPOINT_NAMES = ["bert_config.json", "checkpoint", "model.ckpt-3.data-00000-of-00001", "model.ckpt-3.index",
                    "sentencepiece.model"]


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (names, and each file's sha256): equal snapshots, equal bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """`tmp_path / "work" / "ckpt"`: a copy of the shipped example checkpoint (with config and SentencePiece model)."""
    shutil.copytree(EXAMPLE, tmp_path / "work" / "ckpt")
    return tmp_path / "work"


def corrupt_data(directory: Path) -> None:
    """Flip one byte of the word embeddings (a tensor every conversion reads): only reading the weights can
    notice (CRC32C). Anything checked first fails with its own message instead."""
    from converters.tf1_checkpoint import CheckpointReader

    with CheckpointReader(directory) as reader:
        entry = reader.entries["bert/embeddings/word_embeddings"]
        data = reader.data_path(entry.shard)
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


def test_corrupt_data_is_noticed_only_while_reading_weights(work, tmp_path):
    corrupt_data(work / "ckpt")
    assert run("inspect", work / "ckpt").exit_code == 0
    line = one_error_line(run("pytorch", work / "ckpt", "-o", tmp_path / "out"))
    assert "checksum mismatch in bert/embeddings/word_embeddings" in line


# -- 1. inputs are sacred --------------------------------------------------------------------------------------


def test_output_equal_to_the_checkpoint_folder_is_refused_even_with_force(work):
    ckpt = work / "ckpt"
    before = snapshot(ckpt)
    line = one_error_line(run("pytorch", ckpt, "-o", ckpt, "--force"))
    assert "is the checkpoint" in line and "inputs are never written" in line
    assert line.endswith("with or without --force: give -o a place outside it")
    assert snapshot(ckpt) == before


def test_bundle_output_above_the_checkpoint_is_refused(work):
    before = snapshot(work)
    line = one_error_line(run("bundle", work / "ckpt", "-o", work, "--force"))
    assert f"output {work} contains the checkpoint" in line
    assert snapshot(work) == before


def test_tokenizer_output_holding_its_model_is_refused(work):
    ckpt = work / "ckpt"
    before = snapshot(ckpt)
    line = one_error_line(run("tokenizer", ckpt / "sentencepiece.model", "-o", ckpt, "--force"))
    assert "contains the SentencePiece model" in line
    assert snapshot(ckpt) == before


def test_output_inside_the_checkpoint_folder_is_refused(work):
    ckpt = work / "ckpt"
    before = snapshot(ckpt)
    line = one_error_line(run("convert", ckpt, "-o", ckpt / "converted"))
    assert "lies inside the checkpoint folder" in line
    assert snapshot(ckpt) == before


def test_symlinks_and_dotdot_resolve_to_the_same_folder(work, monkeypatch):
    ckpt = work / "ckpt"
    (work / "alias").symlink_to(ckpt, target_is_directory=True)
    before = snapshot(ckpt)
    line = one_error_line(run("safetensors", ckpt, "-o", work / "alias", "--force"))
    assert "is the checkpoint folder" in line
    monkeypatch.chdir(ckpt)
    line = one_error_line(run("tf2", ".", "-o", "../other/../ckpt", "--force"))
    assert "is the checkpoint folder" in line
    assert snapshot(ckpt) == before


def test_output_holding_the_config_is_refused(work):
    configs = work / "configs"
    configs.mkdir()
    shutil.move(str(work / "ckpt" / "bert_config.json"), configs / "bert_config.json")
    before = snapshot(configs)
    line = one_error_line(run("pytorch", work / "ckpt", "--config", configs / "bert_config.json", "-o", configs,
                              "--force"))
    assert "contains the config file" in line
    assert snapshot(configs) == before


def test_output_holding_the_labels_file_is_refused(tmp_path):
    """--labels is an input like the config: a --force output that holds it would delete it."""
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.txt").write_text("score\n")  # BLEURT's head has one output
    before = snapshot(labels)
    line = one_error_line(run("pytorch", REPO / "examples" / "tiny-bleurt", "--labels", labels / "labels.txt",
                              "-o", labels, "--force"))
    assert "contains the labels file" in line
    assert snapshot(labels) == before


def test_a_config_mismatch_names_the_inspect_command_with_the_options_that_decide_the_table(work, tmp_path):
    """The suggested `inspect` must see the same table as the refused conversion: with its --config and
    --no-mlm-head (without them it would read the config beside the checkpoint and list nothing)."""
    import shlex

    config = json.loads((work / "ckpt" / "bert_config.json").read_text())
    config["intermediate_size"] += 1  # every layer disagrees
    config["output_embedding_size"] += 1  # so does the MLM head, which --no-mlm-head leaves out of the count
    other = tmp_path / "other_config.json"
    other.write_text(json.dumps(config))
    line = one_error_line(run("pytorch", work / "ckpt", "--config", other, "--no-mlm-head", "-o", work / "out"))
    count = int(line.split("disagree on ")[1].split(" ")[0])
    command = shlex.split(line.split("`convert-rembert ")[1].split("`")[0])
    listed = run(*command)
    assert listed.exit_code == 2
    assert sum(row.split()[0] in ("error", "missing") for row in listed.output.splitlines()) == count


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "out"
    result = run("pytorch", EXAMPLE, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_verify_report_is_refused_inside_the_verified_folder(converted):
    before = snapshot(converted)
    line = one_error_line(run("verify", EXAMPLE, converted, "--report", converted / "parity", "--force"))
    assert "lies inside the folder being verified" in line
    line = one_error_line(run("verify", EXAMPLE, converted, "--report", converted, "--force"))
    assert "is the folder being verified" in line
    assert snapshot(converted) == before


def test_verify_report_needs_force_for_a_non_empty_folder(converted, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine\n")
    line = one_error_line(run("verify", EXAMPLE, converted, "--report", report))
    assert "is not empty; pass --force" in line
    assert (report / "notes.txt").read_text() == "mine\n"
    result = run("verify", EXAMPLE, converted, "--report", report, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in report.iterdir()) == ["parity_report.json", "parity_report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# -- 2. atomic replace stays atomic ------------------------------------------------------------------------------


def old_output(parent: Path) -> Path:
    out = parent / "out"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("the user's previous output\n")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return out


def fail_rename_into(target: Path, monkeypatch) -> None:
    """os.rename fails when the staged output is being renamed onto `target` (a full disk, a quota, ...)."""
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == target and ".partial" in str(src):
            raise OSError(28, "No space left on device (simulated)")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("command", ["pytorch", "tokenizer"])
def test_failed_replace_leaves_the_old_output_byte_for_byte(work, tmp_path, monkeypatch, command):
    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(parent)
    fail_rename_into(out, monkeypatch)
    source = work / "ckpt" / ("sentencepiece.model" if command == "tokenizer" else "")
    result = run(command, source, "-o", out, "--force")
    line = one_error_line(result)  # a full disk: the output place's problem, named, not an internal error
    assert "No space left on device" in line and str(out) in line
    assert snapshot(parent) == before  # the old output as it was, and nothing beside it


# The safetensors writer alone, and beside the pytorch writer (then it runs in a writing thread of its own).
@pytest.mark.parametrize("command", [["safetensors"], ["convert", "--format", "pytorch", "--format", "safetensors"]])
def test_failure_while_writing_leaves_the_old_output(work, tmp_path, monkeypatch, command):
    from converters.writers import SafetensorsWriter

    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(parent)

    def add(self, mapping, chunk):
        raise OSError(5, "Input/output error (simulated)")

    monkeypatch.setattr(SafetensorsWriter, "add", add)
    result = run(*command, work / "ckpt", "-o", out, "--force")
    assert result.exit_code == 3 and "internal error OSError" in result.output
    assert snapshot(parent) == before


def test_current_directory_as_output_is_refused_cleanly(work, monkeypatch):
    here = work / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine\n")
    before = snapshot(work)
    monkeypatch.chdir(here)
    line = one_error_line(run("pytorch", work / "ckpt", "-o", ".", "--force"))
    assert "current directory" in line and "cannot be replaced atomically" in line
    assert snapshot(work) == before  # no ..old-* / ..partial-* debris


def test_an_output_holding_the_current_directory_is_refused(work, monkeypatch):
    """-o .. from inside: replacing it would delete the folder the user stands in, with everything in it."""
    (work / "out" / "here").mkdir(parents=True)
    (work / "out" / "here" / "notes.txt").write_text("mine\n")
    before = snapshot(work)
    monkeypatch.chdir(work / "out" / "here")
    line = one_error_line(run("pytorch", work / "ckpt", "-o", "..", "--force"))
    assert "current directory" in line
    assert snapshot(work) == before


def test_an_output_that_appears_during_the_run_is_not_replaced_without_force(work):
    """Checked when the run starts and again right before the new output goes in place."""
    from converters.convert import ConvertOptions, convert_checkpoint
    from rembert_ref.errors import UserError

    out = work / "out"

    def someone_else_writes_there(result):
        out.mkdir()
        (out / "precious.txt").write_text("not ours\n")

    with pytest.raises(UserError, match="not empty"):
        convert_checkpoint(work / "ckpt", out, ["safetensors"], ConvertOptions(quiet=True),
                           before_commit=someone_else_writes_there)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


# -- 3. signals -------------------------------------------------------------------------------------------------

# Runs the CLI in a child process whose first tensor write blocks (after touching READY) until a signal comes.
SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import converters.writers as writers

    def add(self, mapping, chunk):
        Path(os.environ["READY"]).touch()
        time.sleep(120)

    writers.TorchBinWriter.add = add
    from rembert_convert.cli import main
    main(sys.argv[1:])
""")

# The child dies by SIGKILL at the worst moment: the old output set aside, the new one not yet renamed in.
KILLED_WHILE_REPLACING = textwrap.dedent("""
    import os, signal, sys
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if ".partial" in str(src):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(src, dst, *args, **kwargs)

    os.rename = rename
    from rembert_convert.cli import main
    main(sys.argv[1:])
""")


def spawn(script: str, args: list[object], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO), "READY": str(ready)}
    child = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return child, ready


def wait_for(path: Path, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never started writing"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_the_write_removes_the_partial_output(work, tmp_path, signum):
    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(parent)
    child, ready = spawn(SLOW_WRITER, ["pytorch", work / "ckpt", "-o", out, "--force"], tmp_path)
    wait_for(ready, child)
    assert any(p.name.startswith(".out.partial") for p in parent.iterdir())  # the write really was under way
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [f"error: interrupted by {signal.Signals(signum).name}; the partial "
                                           "output was removed and the previous output (if any) is unchanged"]
    assert snapshot(parent) == before


def test_the_next_run_removes_what_a_killed_run_left_and_nothing_else(work, tmp_path):
    parent = tmp_path / "outs"
    parent.mkdir()
    out = parent / "out"
    # Look-alikes that are not ours: no marker, and a marker naming a process that still runs.
    decoy = parent / ".out.partial-decoy"
    decoy.mkdir()
    (decoy / "precious.txt").write_text("not a leftover\n")
    alive = parent / ".out.partial-alive"
    alive.mkdir()
    (alive / ".rembert-convert-partial").write_text(json.dumps(
        {"tool": "rembert-convert", "kind": "staging", "pid": os.getpid(), "host": os.uname().nodename,
         "token": "0" * 32, "target": str(out.resolve())}) + "\n")
    kept = snapshot(parent)
    child, ready = spawn(SLOW_WRITER, ["pytorch", work / "ckpt", "-o", out], tmp_path)
    wait_for(ready, child)
    child.kill()
    child.communicate(timeout=60)
    leftovers = sorted(set(snapshot(parent)) - set(kept))
    assert leftovers and all(name.startswith(".out.partial") for name in leftovers)

    result = run("pytorch", work / "ckpt", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    after = snapshot(parent)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == kept  # leftover gone, decoys kept
    assert (out / "pytorch_model.bin").is_file()


def test_an_old_output_set_aside_by_a_killed_run_is_put_back(work, tmp_path):
    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(out)
    child, _ = spawn(KILLED_WHILE_REPLACING, ["pytorch", work / "ckpt", "-o", out, "--force"], tmp_path)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert not out.exists()  # killed with the old output set aside
    line = one_error_line(run("pytorch", work / "ckpt", "-o", out))
    assert "is not empty; pass --force" in line  # the old output is back, so it is refused without --force
    assert snapshot(out) == before
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


# -- 4. cheap checks first -------------------------------------------------------------------------------------


def test_tokenizer_size_is_checked_before_reading_weights(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_ckpt.directory, ckpt)
    corrupt_data(ckpt)
    line = one_error_line(run("convert", ckpt, "--tokenizer", EXAMPLE / "sentencepiece.model", "-o",
                              tmp_path / "out"))
    assert "has 512 pieces but the model's vocab_size is 99" in line
    assert not (tmp_path / "out").exists()


def test_bleurt_max_seq_length_is_checked_before_reading_weights(tmp_path):
    """A bleurt_config.json max_seq_length past the model's positions is refused by name before any weight is read
    (corrupt weights would otherwise be reported first, after reading them all)."""
    ckpt = tmp_path / "bleurt"
    shutil.copytree(REPO / "examples" / "tiny-bleurt", ckpt)
    bleurt_config = json.loads((ckpt / "bleurt_config.json").read_text())
    positions = json.loads((ckpt / "bert_config.json").read_text())["max_position_embeddings"]
    bleurt_config["max_seq_length"] = positions + 1
    (ckpt / "bleurt_config.json").write_text(json.dumps(bleurt_config))
    corrupt_data(ckpt)
    line = one_error_line(run("convert", ckpt, "-o", tmp_path / "out", "--format", "safetensors"))
    assert f"max_seq_length {positions + 1}" in line
    assert not (tmp_path / "out").exists()


def test_output_location_is_checked_before_reading_weights(work):
    ckpt = work / "ckpt"
    corrupt_data(ckpt)
    line = one_error_line(run("pytorch", ckpt, "-o", ckpt, "--force"))
    assert "is the checkpoint folder" in line


def test_tf2_bfloat16_fails_while_parsing():
    # A checkpoint that does not exist: only a parse-time refusal can come first.
    line = one_error_line(run("tf2", "no/such/checkpoint", "-o", "never-written", "--dtype", "bfloat16"))
    assert "'bfloat16' is not one of 'float32', 'float16'" in line
    assert not Path("never-written").exists()


def test_bundle_bfloat16_names_the_way_out_before_reading_weights(work, tmp_path):
    corrupt_data(work / "ckpt")
    line = one_error_line(run("bundle", work / "ckpt", "-o", tmp_path / "b", "--dtype", "bfloat16"))
    assert "pass --format pytorch --format safetensors" in line
    assert not (tmp_path / "b").exists()


# -- 5. messages a person reads ----------------------------------------------------------------------------------


def test_a_config_mismatch_names_the_count_the_first_three_and_inspect(work):
    config_path = work / "ckpt" / "bert_config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] += 1  # both dense layers around the intermediate now disagree, in every layer
    config_path.write_text(json.dumps(config))
    corrupt_data(work / "ckpt")  # shapes are checked before any weight is read
    line = one_error_line(run("pytorch", work / "ckpt", "-o", work / "out"))
    count = int(line.split("disagree on ")[1].split(" ")[0])
    assert count > 3
    shown = line.split(": ", 2)[2].split(". Check --config")[0]
    assert len(shown.split("; ")) == 4 and shown.endswith(f"and {count - 3} more")
    assert f"`convert-rembert inspect {work / 'ckpt'}` lists them all" in line
    assert len(line) < 600
    # ...and that command does list every one of them.
    listed = run("inspect", work / "ckpt")
    assert sum(row.split()[0] in ("error", "missing") for row in listed.output.splitlines()) == count


def test_usage_errors_share_the_error_prefix():
    line = one_error_line(run("pytorch", EXAMPLE))
    assert "Missing option '-o'" in line and "convert-rembert pytorch --help" in line


def test_verify_on_a_missing_folder_says_it_does_not_exist(tmp_path):
    line = one_error_line(run("verify", EXAMPLE, tmp_path / "nowhere"))
    assert f"{tmp_path / 'nowhere'} does not exist" in line


@pytest.mark.parametrize("command", ["pytorch", "safetensors", "tf2", "convert", "bundle"])
def test_converting_commands_name_the_checkpoint_they_read(tmp_path, command):
    result = run(command, EXAMPLE, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"read checkpoint {EXAMPLE / 'model.ckpt-3'} (named by {EXAMPLE / 'checkpoint'})" in result.output
    quiet = run(command, EXAMPLE, "-o", tmp_path / "quiet", "--quiet")
    assert quiet.exit_code == 0 and quiet.output == ""


def test_internal_errors_keep_their_own_exit_code(tmp_path, monkeypatch):
    import converters.convert

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(converters.convert, "plan_conversion", broken)
    line = one_error_line(run("pytorch", EXAMPLE, "-o", tmp_path / "out"), code=3)
    assert line == "error: internal error RuntimeError: a bug (rerun with --debug for the traceback)"


def test_a_missing_dependency_is_the_installs_problem_not_a_bug(tmp_path, monkeypatch):
    import converters.convert

    def not_installed(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'google_crc32c'", name="google_crc32c")

    monkeypatch.setattr(converters.convert, "plan_conversion", not_installed)
    line = one_error_line(run("pytorch", EXAMPLE, "-o", tmp_path / "out"))
    assert line.startswith("error: the Python module 'google_crc32c' is not installed; install rembert-convert")
    assert not (tmp_path / "out").exists()

    def ours_missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'converters.plan_v2'", name="converters.plan_v2")

    monkeypatch.setattr(converters.convert, "plan_conversion", ours_missing)
    line = one_error_line(run("pytorch", EXAMPLE, "-o", tmp_path / "out"), code=3)  # our own module: a bug
    assert line.startswith("error: internal error ModuleNotFoundError")


def test_no_command_shows_the_help_not_an_error():
    result = run()
    assert result.output.startswith("Usage: convert-rembert [OPTIONS] COMMAND") and "error:" not in result.output


def test_an_old_output_set_aside_stays_when_something_took_its_place(work, tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    parent = tmp_path / "outs"
    out = old_output(parent)  # something the user made after the killed run
    aside = parent / ".out.old-killed"
    (aside / "old").mkdir(parents=True)
    (aside / "old" / "weights.bin").write_bytes(b"the output the killed run was replacing")
    (aside / ".rembert-convert-partial").write_text(json.dumps(
        {"tool": "rembert-convert", "kind": "aside", "pid": dead_pid, "host": os.uname().nodename,
         "token": "1" * 32, "target": str(out.resolve())}) + "\n")
    before = snapshot(parent)
    line = one_error_line(run("pytorch", work / "ckpt", "-o", out))
    assert "is not empty; pass --force" in line
    assert snapshot(parent) == before  # neither the set-aside output nor the new one is deleted


# -- 4. found by an adversarial review: more ways an input or an old output could be touched --------------------


def test_the_folder_named_as_the_checkpoint_is_an_input_where_its_state_file_points_elsewhere(work, tmp_path):
    """TensorFlow writes absolute paths into `checkpoint`: a copied folder names the original. The folder the
    user named is still an input, so `-o` that folder (or inside it) is refused, whatever it points at."""
    copy = tmp_path / "copy"
    shutil.copytree(work / "ckpt", copy)
    state = f'model_checkpoint_path: "{work / "ckpt" / "model.ckpt-3"}"\n'
    (copy / "checkpoint").write_text(state)
    before = snapshot(copy)
    for out in (copy, copy / "sub"):
        line = one_error_line(run("pytorch", copy, "-o", out, "--force"))
        assert f"checkpoint folder {copy}" in line and "inputs are never written" in line
    assert "checkpoint folder" in one_error_line(run("verify", copy, work / "ckpt", "--report", copy / "rep"))
    assert snapshot(copy) == before


def _unmount_under(root: Path) -> None:
    """Unmount whatever is mounted below `root`, wherever the code under test may have moved it."""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{root}/")]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], check=True)


def _bind_mount(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    mounted = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs privileges): {mounted.stderr.decode().strip()}")


@pytest.mark.parametrize("command", ["pytorch", "tokenizer", "report"])
def test_an_old_output_holding_a_mount_of_an_input_is_not_replaced(work, tmp_path, command):
    """Replacing an old output deletes it; deleting a folder descends into a mount inside it."""
    out = tmp_path / "out"
    view = out / "ckpt-view"
    _bind_mount(work / "ckpt", view)
    try:
        before = snapshot(work / "ckpt")
        spm = work / "ckpt" / "sentencepiece.model"
        args, named = {"pytorch": (["pytorch", work / "ckpt", "-o"], f"checkpoint folder {work / 'ckpt'}"),
                       "tokenizer": (["tokenizer", spm, "-o"], f"SentencePiece model {spm}"),
                       "report": (["verify", work / "ckpt", work / "ckpt", "--report"],
                                  f"checkpoint folder {work / 'ckpt'}")}[command]
        line = one_error_line(run(*args, out, "--force"))
        assert "holds ckpt-view, which is or holds the " + named in line
        assert snapshot(work / "ckpt") == before and sorted(p.name for p in tmp_path.iterdir()) == ["out", "work"]
    finally:
        _unmount_under(tmp_path)


def test_an_old_output_holding_another_file_system_is_not_replaced(work, tmp_path):
    out = tmp_path / "out"
    mount = out / "scratch"
    mount.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount here (needs privileges): {mounted.stderr.decode().strip()}")
    try:
        (mount / "precious.txt").write_text("not ours\n")
        line = one_error_line(run("pytorch", work / "ckpt", "-o", out, "--force"))
        assert "holds scratch, a mount point of another file system" in line
        assert (mount / "precious.txt").read_text() == "not ours\n"
    finally:
        _unmount_under(tmp_path)


def test_an_old_output_holding_a_bind_mount_of_any_folder_is_not_replaced(work, tmp_path):
    """Not an input, the same file system: only the mount table tells it is a mount."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("not ours\n")
    out = tmp_path / "out"
    _bind_mount(precious, out / "view")
    try:
        line = one_error_line(run("pytorch", work / "ckpt", "-o", out, "--force"))
        assert "holds view, a mount point" in line
        assert (precious / "keep.txt").read_text() == "not ours\n"
    finally:
        _unmount_under(tmp_path)


def test_a_refused_read_or_write_names_the_file(tmp_path):
    from rembert_convert.cli import _file_system_refusal

    unreadable = _file_system_refusal(PermissionError(13, "Permission denied", str(tmp_path / "model.ckpt-3.index")))
    assert unreadable == (f"{tmp_path / 'model.ckpt-3.index'}: Permission denied; check its permissions (inputs "
                          "must be readable, outputs writable)")
    assert "writable file system" in _file_system_refusal(OSError(30, "Read-only file system", "out"))
    assert _file_system_refusal(OSError(5, "Input/output error")) is None  # not the place's fault: an internal error


def test_junit_never_writes_through_a_hard_link_and_replaces_only_with_force(converted, tmp_path):
    ci = tmp_path / "ci"
    ci.mkdir()
    config = converted / "config.json"
    linked = ci / "verify.xml"
    os.link(config, linked)  # e.g. a folder copied with `cp -al`
    before = config.read_bytes()
    line = one_error_line(run("verify", EXAMPLE, converted, "--junit", linked, "--force"))
    assert "under another name (a hard link)" in line and config.read_bytes() == before

    earlier = tmp_path / "earlier.xml"
    earlier.write_text("an earlier result\n")
    keeper = tmp_path / "keeper.xml"
    os.link(earlier, keeper)
    assert "exists; pass --force" in one_error_line(run("verify", EXAMPLE, converted, "--junit", earlier))
    replaced = run("verify", EXAMPLE, converted, "--junit", earlier, "--force")
    assert replaced.exit_code == 0, replaced.output
    assert earlier.read_text().startswith("<?xml")  # the name now holds the new file...
    assert keeper.read_text() == "an earlier result\n"  # ...and the old file, under its other name, is untouched
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the mode any new file gets here (the umask applied)
    assert earlier.stat().st_mode == plain.stat().st_mode


def test_an_output_that_cannot_be_made_is_one_line_before_any_work(work, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_error_line(run("pytorch", work / "ckpt", "-o", afile / "out"))
    assert f"{afile} is a file, not a folder" in line
    line = one_error_line(run("verify", work / "ckpt", work / "ckpt", "--junit", afile / "verify.xml"))
    assert "--junit" in line and "is a file, not a folder" in line
    if Path("/proc/self").is_dir():  # writable by its mode, yet no folder can be made in it
        line = one_error_line(run("pytorch", work / "ckpt", "-o", "/proc/rembert-out"))
        assert "-o /proc/rembert-out cannot be made: /proc " in line  # (not writable, as non-root)
        for option, place in (("--report", "/proc/rembert-report"), ("--junit", "/proc/rembert.xml")):
            line = one_error_line(run("verify", work / "ckpt", work / "ckpt", option, place))
            assert f"{option} {place} cannot be made: /proc " in line  # before any proof is run


def test_the_output_place_is_tried_once_before_the_work_and_a_killed_trial_is_cleared(work, tmp_path, monkeypatch):
    import errno
    import tempfile

    import converters.output as output

    trials = []
    probe = output._probe_new_folder
    monkeypatch.setattr(output, "_probe_new_folder", lambda *args: trials.append(args) or probe(*args))
    assert run("pytorch", work / "ckpt", "-o", tmp_path / "out", "-q").exit_code == 0
    assert len(trials) == 1  # not again once the work is done: a place that fills up then is the write's problem
    # A trial folder left by a run killed in between (its process gone) goes; one of a live process stays.
    dead, alive = (tmp_path / f"{output.PROBE_PREFIX}{pid}-x" for pid in (2**22 + 12345, os.getpid()))
    dead.mkdir()
    alive.mkdir()
    assert run("pytorch", work / "ckpt", "-o", tmp_path / "out", "--force", "-q").exit_code == 0
    assert not dead.exists() and alive.exists()
    # A full disk while trying is said as such.
    make = tempfile.mkdtemp

    def full(*args, prefix="", **kwargs):
        if prefix.startswith(output.PROBE_PREFIX):
            raise OSError(errno.ENOSPC, "No space left on device")
        return make(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    line = one_error_line(run("pytorch", work / "ckpt", "-o", tmp_path / "new"))
    assert f"cannot be made: no free space in {tmp_path}" in line


@pytest.mark.parametrize("where", ["a write", "the flush"])
def test_a_full_disk_is_the_output_places_problem_not_a_bug(work, tmp_path, monkeypatch, where):
    # A write on a descriptor names no file; the flush at the end of a weight file names the file, which is a
    # staged one in a hidden folder removed at once. Either way the user is told about the output they asked for.
    from converters.writers import SafetensorsWriter

    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(parent)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "a write":
        monkeypatch.setattr(SafetensorsWriter, "add", full)
    else:
        monkeypatch.setattr(os, "fdatasync", full, raising=False)
        monkeypatch.setattr(os, "fsync", full)
    line = one_error_line(run("safetensors", work / "ckpt", "-o", out, "--force"))
    assert line == f"error: {out}: {os.strerror(errno.ENOSPC)}; free space there or choose another output location"
    assert snapshot(parent) == before


def test_another_refusal_of_a_staged_file_names_it_inside_the_output(work, tmp_path, monkeypatch):
    from converters.writers import SafetensorsWriter

    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(parent)
    real_close = SafetensorsWriter.close

    def close(self):
        written = real_close(self)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(written[0]))

    monkeypatch.setattr(SafetensorsWriter, "close", close)
    line = one_error_line(run("safetensors", work / "ckpt", "-o", out, "--force"))
    assert line.startswith(f"error: {out / 'model.safetensors'}: {os.strerror(errno.EACCES)}; check its permissions")
    assert ".partial" not in line
    assert snapshot(parent) == before


# A signal during the flush at the end of a weight file (seconds for 4 GB): the file's descriptor must be
# closed once, so the signal's exit code comes out, not EBADF from a second close.
SIGNAL_IN_FLUSH = textwrap.dedent("""
    import os, signal, sys
    real = os.fdatasync

    def fdatasync(fd):
        real(fd)
        os.kill(os.getpid(), signal.SIGTERM)

    os.fdatasync = fdatasync
    from rembert_convert.cli import main
    main(sys.argv[1:])
""")


@pytest.mark.skipif(not hasattr(os, "fdatasync"), reason="the flush is fsync without fdatasync")
def test_a_signal_during_the_final_flush_exits_with_the_signals_code(work, tmp_path):
    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(parent)
    child, _ = spawn(SIGNAL_IN_FLUSH, ["safetensors", work / "ckpt", "-o", out, "--force", "-q"], tmp_path)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == ["error: interrupted by SIGTERM; the partial output was removed and the "
                                           "previous output (if any) is unchanged"]
    assert snapshot(parent) == before


def test_an_interrupt_inside_the_import_system_comes_a_moment_later():
    """Raised there, KeyboardInterrupt can leave the global import lock held (CPython 3.11), and a thread
    importing beside the main one then waits for ever."""
    from converters.output import interrupt_outside_imports

    class Code:
        co_filename = "<frozen importlib._bootstrap>"

    class Frame:
        f_code = Code()

    interrupt_outside_imports(signal.SIGINT, Frame())  # nothing raised here...
    with pytest.raises(KeyboardInterrupt):  # ...but the interrupt comes back, outside it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt):
        interrupt_outside_imports(signal.SIGINT, sys._getframe())


def test_an_interrupt_set_aside_is_collected_when_the_command_ends_first():
    from converters.output import interrupt_outside_imports, pending_redelivery

    class Code:
        co_filename = "<frozen importlib._bootstrap_external>"

    class Frame:
        f_code = Code()

    interrupt_outside_imports(signal.SIGINT, Frame())
    assert pending_redelivery() == signal.SIGINT and pending_redelivery() is None
    time.sleep(0.3)  # well past the redelivery: it was taken back, so nothing arrives


def test_an_import_thread_that_never_ends_does_not_hold_up_an_error(monkeypatch):
    import threading

    import validation.parity as parity

    stuck = threading.Event()
    monkeypatch.setattr(parity, "import_ahead", lambda formats: stuck.wait(30))
    monkeypatch.setattr(parity, "IMPORT_GRACE_S", 0.1)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the work failed"), parity.imports_ahead(["pytorch"]):
        raise RuntimeError("the work failed")
    assert time.monotonic() - started < 5
    stuck.set()


@pytest.mark.parametrize(("args", "expected"), [
    (["verify", EXAMPLE, EXAMPLE, "--tolerance", "-1"], "--tolerance -1.0 is not a positive number"),
    (["verify", EXAMPLE, EXAMPLE, "--tolerance", "nan"], "--tolerance nan is not a positive number"),
    (["safetensors", EXAMPLE, "-o", "never", "--max-shard-size", "inf"], "--max-shard-size 'inf' is not a size"),
    (["safetensors", EXAMPLE, "-o", "never", "--max-shard-size", "1e400"], "--max-shard-size '1e400' is not a size"),
    (["tokenizer", EXAMPLE, "-o", "never"], "is a directory; pass the path of a .model file"),
])
def test_bad_option_values_are_one_line(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in one_error_line(run(*args))
    assert not (tmp_path / "never").exists()


def test_a_closed_stderr_does_not_lend_its_number_to_an_output_file(tmp_path):
    """A process started with descriptor 2 closed hands that number to the next file it opens; a C library's
    message to stderr would then be written into it. The CLI parks the null device there first."""
    probe = tmp_path / "output.bin"
    script = textwrap.dedent(f"""
        import os
        from converters.output import occupy_closed_standard_descriptors
        occupy_closed_standard_descriptors()
        fd = os.open({str(probe)!r}, os.O_WRONLY | os.O_CREAT)
        os.write(2, b"a library's warning")
        print(fd)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            preexec_fn=lambda: os.close(2), cwd=REPO)
    assert int(result.stdout) > 2 and probe.read_bytes() == b""


@pytest.mark.parametrize("command", ["convert", "bundle"])
def test_commands_work_with_stderr_closed(tmp_path, command):
    """`2>&-` (cron jobs, daemons): no progress and no messages on stderr, but the same files, and they verify."""
    out = tmp_path / "out"
    closed = subprocess.run([sys.executable, "-m", "rembert_convert.cli", command, str(EXAMPLE), "-o", str(out)],
                            capture_output=True, text=True, preexec_fn=lambda: os.close(2), cwd=REPO)
    assert closed.returncode == 0, closed.stdout
    verified = subprocess.run([sys.executable, "-m", "rembert_convert.cli", "verify", str(EXAMPLE), str(out)],
                              capture_output=True, text=True, cwd=REPO)
    assert verified.returncode == 0 and "parity passed" in verified.stdout, verified.stdout + verified.stderr


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_the_cli_parks_the_null_device_on_a_closed_stderr(tmp_path):
    """What the CLI itself does with `2>&-`: by the time it converts, descriptor 2 is the null device."""
    script = textwrap.dedent(f"""
        import os
        import converters.convert
        from rembert_convert.cli import main
        real = converters.convert.convert_checkpoint
        def spy(*args, **kwargs):
            print(os.readlink("/proc/self/fd/2"), flush=True)
            return real(*args, **kwargs)
        converters.convert.convert_checkpoint = spy
        main(["convert", {str(EXAMPLE)!r}, "-o", {str(tmp_path / "out")!r}, "-q"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            preexec_fn=lambda: os.close(2), cwd=REPO)
    assert result.returncode == 0 and result.stdout.splitlines() == [os.devnull], result.stdout


# -- mutation review of converters/output.py: promises no earlier test held the code to ------------------------

DEAD_PID = 2**22 + 12345  # above Linux's largest process id (2**22): no process has it


class _Code:
    co_filename = "<frozen importlib._bootstrap>"


class _Frame:
    """A frame inside the import system, as the signal handlers see one."""

    f_code = _Code()


def test_output_inside_a_bind_mount_of_the_checkpoint_is_refused(work, tmp_path):
    view = tmp_path / "view"
    _bind_mount(work / "ckpt", view)
    try:
        before = snapshot(work / "ckpt")
        line = one_error_line(run("pytorch", work / "ckpt", "-o", view / "out"))
        assert "lies inside the checkpoint folder" in line
        assert snapshot(work / "ckpt") == before
    finally:
        _unmount_under(tmp_path)


def test_tokenizer_output_holding_its_model_through_a_bind_mount_is_refused(tmp_path):
    real = tmp_path / "x" / "work"
    real.mkdir(parents=True)
    shutil.copy(EXAMPLE / "sentencepiece.model", real / "sentencepiece.model")
    (real / "notes.txt").write_text("mine\n")
    view = tmp_path / "view"
    _bind_mount(tmp_path / "x", view)
    try:
        before = snapshot(real)
        line = one_error_line(run("tokenizer", real / "sentencepiece.model", "-o", view / "work", "--force"))
        assert "contains the SentencePiece model" in line
        assert snapshot(real) == before
    finally:
        _unmount_under(tmp_path)


def test_output_that_is_a_bind_mount_of_the_checkpoint_folder_is_named_as_it(work, tmp_path):
    view = tmp_path / "view"
    _bind_mount(work / "ckpt", view)
    try:
        line = one_error_line(run("pytorch", work / "ckpt", "-o", view, "--force"))
        assert f"output {view} is the checkpoint folder" in line
    finally:
        _unmount_under(tmp_path)


def test_an_output_that_is_a_mount_point_is_refused_before_any_work(work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount")
    try:
        line = one_error_line(run("pytorch", work / "ckpt", "-o", out))
        assert "is a mount point" in line
    finally:
        subprocess.run(["umount", str(out)])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_every_full_disk_errno_is_the_output_places_problem(work, tmp_path, monkeypatch, code):
    from converters.writers import SafetensorsWriter

    parent = tmp_path / "outs"
    out = old_output(parent)
    before = snapshot(parent)

    def add(self, mapping, chunk):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(SafetensorsWriter, "add", add)
    line = one_error_line(run("safetensors", work / "ckpt", "-o", out, "--force"))
    assert line.startswith(f"error: {out}: ") and "free space there" in line
    assert snapshot(parent) == before


def _leftover(parent: Path, name: str, *, pid: int, host: str, target: Path) -> Path:
    folder = parent / name
    (folder / "new").mkdir(parents=True)
    (folder / "new" / "precious.bin").write_bytes(b"someone's write in progress")
    (folder / ".rembert-convert-partial").write_text(json.dumps(
        {"tool": "rembert-convert", "kind": "staging", "pid": pid, "host": host, "token": "2" * 32,
         "target": str(target)}) + "\n")
    return folder


def test_a_leftover_for_another_output_is_kept(work, tmp_path):
    parent = tmp_path / "outs"
    parent.mkdir()
    out = parent / "out"
    other = _leftover(parent, ".out.partial-moved", pid=DEAD_PID, host=os.uname().nodename,
                      target=tmp_path / "elsewhere" / "out")
    assert run("pytorch", work / "ckpt", "-o", out, "-q").exit_code == 0
    assert (other / "new" / "precious.bin").is_file()


def test_a_leftover_of_another_host_is_kept(work, tmp_path):
    parent = tmp_path / "outs"
    parent.mkdir()
    out = parent / "out"
    other = _leftover(parent, ".out.partial-nfs", pid=DEAD_PID, host="another-host.example",
                      target=out.resolve())
    assert run("pytorch", work / "ckpt", "-o", out, "-q").exit_code == 0
    assert (other / "new" / "precious.bin").is_file()


def test_a_leftover_of_another_users_live_process_is_kept(work, tmp_path, monkeypatch):
    parent = tmp_path / "outs"
    parent.mkdir()
    out = parent / "out"
    other = _leftover(parent, ".out.partial-theirs", pid=DEAD_PID, host=os.uname().nodename, target=out.resolve())
    real_kill = os.kill

    def kill(pid, sig):
        if pid == DEAD_PID:
            raise PermissionError(errno.EPERM, "Operation not permitted")  # alive, another user's
        return real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    assert run("pytorch", work / "ckpt", "-o", out, "-q").exit_code == 0
    assert (other / "new" / "precious.bin").is_file()


def cli_signalling_itself(function: str, when: str, signal_name: str, *, before: bool = False) -> str:
    """A script that runs the CLI with `function` (e.g. "os.rename") wrapped: on a call whose last positional
    argument (`path`) satisfies `when`, the process sends itself `signal_name`, after the call or `before` it."""
    module, name = function.rsplit(".", 1)
    return textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        import {module}
        real = {function}

        def wrapper(*args, **kwargs):
            hit = {when.replace("path", "Path(args[-1])")}
            if hit and {before}:
                os.kill(os.getpid(), signal.{signal_name})
            result = real(*args, **kwargs)
            if hit and not {before}:
                os.kill(os.getpid(), signal.{signal_name})
            return result

        {module}.{name} = wrapper
        from rembert_convert.cli import main
        main(sys.argv[1:])
    """)


SIGNAL_WHILE_SETTING_ASIDE = cli_signalling_itself("os.rename", 'path.name == "old"', "SIGTERM")


def test_a_signal_while_the_old_output_is_set_aside_waits_for_the_commit(work, tmp_path):
    parent = tmp_path / "outs"
    out = old_output(parent)
    child, _ = spawn(SIGNAL_WHILE_SETTING_ASIDE, ["pytorch", work / "ckpt", "-o", out, "--force", "-q"], tmp_path)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == [
        "error: interrupted by SIGTERM after the output was complete; it is in place"]
    assert (out / "pytorch_model.bin").is_file()
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


def test_the_guard_sets_aside_a_signal_inside_the_import_system():
    from converters.output import _SignalGuard, pending_redelivery

    with _SignalGuard() as guard:
        guard._handle(signal.SIGTERM, _Frame())  # nothing raised here
        assert pending_redelivery() == signal.SIGTERM


KILLED_WHILE_DELETING_THE_OLD = cli_signalling_itself("shutil.rmtree", 'path.name.startswith(".out.old-")',
                                                     "SIGKILL", before=True)


def test_an_old_output_replaced_before_a_kill_is_removed_by_the_next_run(work, tmp_path):
    parent = tmp_path / "outs"
    out = old_output(parent)
    child, _ = spawn(KILLED_WHILE_DELETING_THE_OLD, ["pytorch", work / "ckpt", "-o", out, "--force", "-q"], tmp_path)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert (out / "pytorch_model.bin").is_file()  # the new output was in place
    assert run("pytorch", work / "ckpt", "-o", out, "--force", "-q").exit_code == 0
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


def test_reporting_an_interrupt_takes_back_a_copy_set_aside(monkeypatch):
    import converters.output as output
    from rembert_convert.cli import _interrupted

    monkeypatch.setattr(output, "REDELIVERY_DELAY_S", 5.0)
    output.interrupt_outside_imports(signal.SIGINT, _Frame())
    try:
        with pytest.raises(SystemExit) as exited:
            _interrupted(KeyboardInterrupt())
        assert exited.value.code == 130
    finally:
        left = output.pending_redelivery()  # never let a copy reach pytest
    assert left is None


def test_a_ctrl_c_set_aside_when_the_command_ends_exits_130(monkeypatch):
    import converters.convert as convert
    import converters.output as output

    monkeypatch.setattr(output, "REDELIVERY_DELAY_S", 5.0)
    real = convert.inspect_checkpoint

    def spy(*args, **kwargs):
        output.interrupt_outside_imports(signal.SIGINT, _Frame())
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "inspect_checkpoint", spy)
    try:
        result = run("inspect", EXAMPLE)
    finally:
        output.pending_redelivery()
    assert result.exit_code == 130 and result.output.strip().splitlines()[-1] == "error: interrupted by SIGINT"


def test_the_cli_keeps_ctrl_c_out_of_the_import_system(monkeypatch):
    import converters.convert as convert
    from converters.output import interrupt_outside_imports

    seen = []
    real = convert.inspect_checkpoint

    def spy(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGINT))
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "inspect_checkpoint", spy)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert run("inspect", EXAMPLE).exit_code == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [interrupt_outside_imports]
