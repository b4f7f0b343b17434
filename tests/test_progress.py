"""Progress on a terminal: one permanent line per long step, a status line redrawn in place, never interleaved."""

from __future__ import annotations

import io
import os
import pathlib
import re
import subprocess
import sys
import threading
import types

import pytest

import converters.progress as progress_module
from converters.progress import StepProgress, terminal_progress

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tiny-rembert"
DONE_LINE = re.compile(r"\[\s*\d+\.\d s\] (?P<name>.+) (?P<ended>done|stopped) \(\d+\.\d s\)")


def screen(text: str) -> list[str]:
    """What a terminal shows after `text`, for writes that redraw a whole line: a carriage return goes back to
    the line's start, so the last text after one is what stays (ESC[K, clear to the end, only removes)."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        segments = raw.split("\r")
        while len(segments) > 1 and segments[-1] == "":
            segments.pop()
        lines.append(segments[-1].replace("\x1b[K", ""))
    return lines


def test_each_step_leaves_one_line_and_steps_in_threads_do_not_interleave():
    out = io.StringIO()
    progress = StepProgress(out)
    names = [f"step {i}" for i in range(6)]
    start = threading.Barrier(len(names))

    def run(name: str) -> None:
        start.wait()
        with progress.step(name) as update:
            for k in range(200):
                update(k / 200)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shown = screen(out.getvalue())
    assert shown[-1] == ""  # the status line is cleared once no step runs
    finished = [DONE_LINE.fullmatch(line) for line in shown[:-1]]
    assert all(finished), shown
    assert sorted(m["name"] for m in finished) == names
    assert {m["ended"] for m in finished} == {"done"}


def test_the_status_line_names_running_steps_with_their_share_done():
    out = io.StringIO()
    progress = StepProgress(out)
    with progress.step("pytorch tensors") as tensors, progress.step("pytorch 7 heads") as heads:
        tensors(0.4)
        heads(3 / 7)
        # Whole percents, rounded down, as they are compared: 3/7 shows 42%, and 100% only once all is done.
        assert out.getvalue().rsplit("\r\x1b[K", 1)[-1] == "... pytorch tensors 40% | pytorch 7 heads 42%"
        before = out.getvalue()
        tensors(0.404)  # the same percentage: nothing is redrawn
        assert out.getvalue() == before


def test_a_step_that_raises_says_it_stopped():
    out = io.StringIO()
    progress = StepProgress(out)
    with pytest.raises(RuntimeError), progress.step("tf2 tensors"):
        raise RuntimeError("boom")
    assert DONE_LINE.fullmatch(screen(out.getvalue())[0])["ended"] == "stopped"


def test_the_status_line_never_wraps(monkeypatch):
    monkeypatch.setattr("shutil.get_terminal_size", lambda *args: os.terminal_size((24, 10)))
    out = io.StringIO()
    progress = StepProgress(out)
    with progress.step("safetensors 7 heads") as update, progress.step("safetensors tensors"):
        update(0.5)
    status = [part for part in out.getvalue().split("\r\x1b[K") if part and not part.endswith("\n")]
    assert status and max(len(part) for part in status) == 23


def test_an_update_after_the_step_ended_changes_nothing():
    out = io.StringIO()
    progress = StepProgress(out)
    with progress.step("pytorch tensors") as update:
        pass
    before = out.getvalue()
    update(0.5)  # a late report from a helper thread
    with progress.step("tf2 tensors"):
        assert out.getvalue()[len(before):] == "\r\x1b[K... tf2 tensors"


class FakeStderr:
    """sys.stderr for terminal_progress: a terminal (so it says), on the descriptor given."""

    encoding = "utf-8"

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.descriptor


def test_a_terminal_that_goes_away_stops_the_progress_not_the_work(monkeypatch):
    leader, follower = os.openpty()
    monkeypatch.setattr(sys, "stderr", FakeStderr(follower))
    with terminal_progress(quiet=False) as progress, progress.step("pytorch tensors") as update:
        update(0.2)
        os.close(leader)  # the ssh session ends: writes to the terminal now fail (EIO)
        update(0.6)
        result = "finished"
    os.close(follower)
    assert result == "finished"


def test_leaving_terminal_progress_takes_a_running_steps_status_line_off_the_screen(monkeypatch):
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stderr", FakeStderr(write_end))
    with pytest.raises(RuntimeError), terminal_progress(quiet=False) as progress:
        running = progress.step("pytorch tensors")  # left running, as a helper thread's step may be
        running.__enter__()(0.3)
        raise RuntimeError("an error the CLI prints next")
    os.close(write_end)
    shown = screen(os.read(read_end, 1 << 16).decode())
    os.close(read_end)
    assert shown == [""]


def test_a_terminal_of_unknown_size_gets_the_default_width(monkeypatch):
    """A pseudo-terminal whose size was never set says 0 columns; the status line must not lose its end."""
    leader, follower = os.openpty()
    monkeypatch.setenv("COLUMNS", "60")

    class UnsizedTerminal(io.StringIO):
        def fileno(self) -> int:
            return follower

    out = UnsizedTerminal()
    unsized = os.get_terminal_size(follower).columns == 0
    with StepProgress(out).step("tf2 tensors") as update:
        update(0.5)
    os.close(follower)
    os.close(leader)
    assert unsized and "\r\x1b[K... tf2 tensors 50%" in out.getvalue()


def test_clear_takes_the_status_line_of_a_step_still_running_off_the_screen():
    out = io.StringIO()
    progress = StepProgress(out)
    with progress.step("pytorch tensors") as update:
        update(0.3)
        progress.clear()
        assert screen(out.getvalue())[-1] == ""
    assert screen(out.getvalue())[-1] == ""  # the step ended silently


def test_silent_progress_runs_the_steps_and_writes_nothing(capsys):
    with terminal_progress(quiet=True) as progress, progress.step("anything") as update:
        update(0.5)
    assert capsys.readouterr() == ("", "")


def on_a_terminal(*args: str) -> tuple[list[str], str]:
    """Run the CLI with stderr on a pseudo-terminal: the step names of the lines left on the screen (lines that
    are not step lines as they are), and stdout."""
    leader, follower = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "rembert_convert.cli", *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=follower, cwd=REPO)
    os.close(follower)
    received = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # the other end closed (Linux raises EIO)
            break
        if not chunk:
            break
        received.append(chunk)
    os.close(leader)
    stdout = process.stdout.read().decode()
    assert process.wait() == 0, stdout
    shown = [line for line in screen(b"".join(received).decode()) if line]
    return [m["name"] if (m := DONE_LINE.fullmatch(line)) else line for line in shown], stdout


def format_steps(names: list[str]) -> list[set[str]]:
    # A format's two proofs run side by side, so either may end first; the formats come one after another.
    return [set(names[i:i + 2]) for i in range(0, len(names), 2)]


EXPECTED_FORMAT_STEPS = [{f"{fmt} tensors", f"{fmt} 7 heads"} for fmt in ("pytorch", "safetensors", "tf2")]
needs_a_terminal = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")


@needs_a_terminal
def test_verify_on_a_terminal_shows_one_line_per_step(tmp_path):
    """Every proof step of every format leaves exactly one line, and nothing TensorFlow prints while it imports
    (in a thread, during the PyTorch proofs) lands inside them."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "rembert_convert.cli", "convert", str(EXAMPLE), "-o", str(out), "-q"],
                   check=True, cwd=REPO)
    names, stdout = on_a_terminal("verify", str(EXAMPLE), str(out))
    assert names[0] == "float64 reference" and format_steps(names[1:]) == EXPECTED_FORMAT_STEPS, names
    assert "parity passed" in stdout


@needs_a_terminal
def test_bundle_on_a_terminal_shows_convert_and_verify_steps_on_one_timeline(tmp_path):
    names, stdout = on_a_terminal("bundle", str(EXAMPLE), "-o", str(tmp_path / "bundle"))
    assert names[:3] == ["tokenizer files", "convert to pytorch + safetensors + tf2", "float64 reference"], names
    assert format_steps(names[3:9]) == EXPECTED_FORMAT_STEPS and names[9:] == ["tokenizer agreement"], names
    assert "parity passed" in stdout


@needs_a_terminal
def test_quiet_shows_no_progress_on_a_terminal(tmp_path):
    names, _ = on_a_terminal("convert", str(EXAMPLE), "-o", str(tmp_path / "out"), "-q")
    assert names == []


@needs_a_terminal
def test_verify_quiet_shows_no_progress_on_a_terminal(tmp_path):
    """verify's --quiet must silence its proof steps too, leaving only the verdict on stdout."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "rembert_convert.cli", "convert", str(EXAMPLE), "-o", str(out), "-q",
                    "--format", "safetensors"], check=True, cwd=REPO)
    names, stdout = on_a_terminal("verify", str(EXAMPLE), str(out), "-q")
    assert names == [] and stdout.startswith("parity passed") and stdout.count("\n") == 1


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_convert_step_shows_its_share_done_up_to_all_of_it(tmp_path, dtype):
    """The status line of `convert to ...` counts the checkpoint's bytes read: it climbs to 100% whatever the
    dtype written (counting float16's bytes written would stop at half)."""
    from converters.convert import ConvertOptions, convert_checkpoint

    out = io.StringIO()
    convert_checkpoint(EXAMPLE, tmp_path / "out", ["safetensors"], ConvertOptions(dtype=dtype, tokenizer=None),
                       progress=StepProgress(out))
    step = "convert to safetensors"
    shares = [int(share) for share in re.findall(rf"{step} (\d+)%", out.getvalue())]
    assert len(shares) > 2 and shares == sorted(shares) and shares[-1] == 100, shares


def status_line(out: io.StringIO) -> str:
    """The status line last drawn: what follows the last erase."""
    return out.getvalue().rsplit("\r\x1b[K", 1)[-1]


def test_a_share_outside_0_to_1_shows_as_0_or_100_percent():
    out = io.StringIO()
    progress = StepProgress(out)
    with progress.step("tf2 tensors") as update:
        update(-0.25)  # a report that overshoots either way shows the nearest end
        assert status_line(out) == "... tf2 tensors 0%"
        update(1.5)
        assert status_line(out) == "... tf2 tensors 100%"


def test_a_step_that_ends_gives_the_status_line_back_to_the_steps_still_running():
    out = io.StringIO()
    progress = StepProgress(out)
    with progress.step("pytorch tensors") as tensors:
        tensors(0.3)
        with progress.step("pytorch 7 heads"):
            pass
        shown = screen(out.getvalue())
        assert DONE_LINE.fullmatch(shown[-2])["name"] == "pytorch 7 heads"
        assert shown[-1] == "... pytorch tensors 30%"


def test_step_lines_say_when_each_step_ended_and_how_long_it_took(monkeypatch):
    """The bracket is the time since the progress started (one timeline for all steps), the parenthesis the step's
    own duration: a clock under the test's control, so no real time passes."""
    now = [100.0]
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    out = io.StringIO()
    progress = StepProgress(out)
    now[0] = 101.0
    with progress.step("tokenizer files"):
        now[0] = 103.5
    now[0] = 110.0
    with pytest.raises(RuntimeError), progress.step("float64 reference"):
        now[0] = 162.3
        raise RuntimeError("boom")
    assert [line for line in screen(out.getvalue()) if line] == [
        "[   3.5 s] tokenizer files done (2.5 s)",
        "[  62.3 s] float64 reference stopped (52.3 s)",
    ]


def test_once_cleared_a_step_that_ends_writes_nothing():
    out = io.StringIO()
    progress = StepProgress(out)
    with progress.step("pytorch tensors") as update:
        progress.clear()
        cleared = out.getvalue()
        update(0.7)
    assert out.getvalue() == cleared


class Terminal:
    """A sink that fails with EIO while `gone`, and records what it was given otherwise."""

    def __init__(self) -> None:
        self.gone, self.text = False, ""

    def write(self, text: str) -> None:
        if self.gone:
            raise OSError(5, "Input/output error")
        self.text += text

    def flush(self) -> None:
        if self.gone:
            raise OSError(5, "Input/output error")


def test_after_one_failed_write_the_progress_writes_no_more():
    sink = Terminal()
    progress = StepProgress(sink)
    with progress.step("safetensors tensors") as update:
        update(0.1)
        sink.gone = True
        update(0.2)  # fails: the progress gives up its stream
        sink.gone = False
        written = sink.text
        update(0.9)
    assert sink.text == written == "\r\x1b[K... safetensors tensors\r\x1b[K... safetensors tensors 10%"


def test_every_write_is_flushed_at_once():
    """A status line left in a buffer would show late, or never: each write reaches the screen before the next."""

    class Buffered:
        def __init__(self) -> None:
            self.pending, self.shown = "", ""

        def write(self, text: str) -> None:
            self.pending += text

        def flush(self) -> None:
            self.shown, self.pending = self.shown + self.pending, ""

    sink = Buffered()
    progress = StepProgress(sink)
    with progress.step("tf2 7 heads") as update:
        update(0.5)
        assert sink.pending == "" and sink.shown.endswith("... tf2 7 heads 50%")
    assert sink.pending == "" and DONE_LINE.fullmatch(screen(sink.shown)[0])


@needs_a_terminal
def test_the_status_line_fits_the_width_of_the_terminal_it_is_written_to(monkeypatch):
    """The width is that of the progress's own terminal, not of the process's (COLUMNS, stdout)."""
    import fcntl
    import struct
    import termios

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 20, 0, 0))  # 24 rows, 20 columns
    monkeypatch.setenv("COLUMNS", "200")

    class SizedTerminal(io.StringIO):
        def fileno(self) -> int:
            return follower

    out = SizedTerminal()
    try:
        with StepProgress(out).step("safetensors 7 heads") as update:
            update(0.5)
    finally:
        os.close(follower)
        os.close(leader)
    status = [part for part in out.getvalue().split("\r\x1b[K") if part and not part.endswith("\n")]
    assert status == ["... safetensors 7 h"] * 2  # drawn when the step starts and at 50%


def test_progress_written_to_a_descriptor_survives_short_writes_and_unencodable_names(monkeypatch):
    """os.write may take part of what it is given; a name the terminal's encoding lacks is written replaced."""
    from converters.progress import _Descriptor

    real_write = os.write
    read_end, write_end = os.pipe()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))  # 3 bytes at a time
            _Descriptor(write_end, "ascii").write("caf\u00e9 \u2014 50%")
    finally:
        os.close(write_end)
        data = os.read(read_end, 1 << 16)
        os.close(read_end)
    assert data == b"caf? ? 50%"


def piped_stderr(monkeypatch, isatty: bool, encoding: str) -> tuple[int, int]:
    read_end, write_end = os.pipe()

    class Stderr(FakeStderr):
        def isatty(self) -> bool:
            return isatty

    stderr = Stderr(write_end)
    stderr.encoding = encoding
    monkeypatch.setattr(sys, "stderr", stderr)
    return read_end, write_end


def read_and_close(read_end: int, write_end: int) -> bytes:
    os.close(write_end)
    data = os.read(read_end, 1 << 16)
    os.close(read_end)
    return data


def test_no_progress_when_stderr_is_not_a_terminal(monkeypatch):
    """A log file or a pipe gets no status lines, even without --quiet."""
    read_end, write_end = piped_stderr(monkeypatch, isatty=False, encoding="utf-8")
    with terminal_progress(quiet=False) as progress, progress.step("pytorch tensors") as update:
        update(0.5)
    assert read_and_close(read_end, write_end) == b""


def test_progress_is_written_in_the_terminals_encoding(monkeypatch):
    read_end, write_end = piped_stderr(monkeypatch, isatty=True, encoding="latin-1")
    with terminal_progress(quiet=False) as progress, progress.step("caf\u00e9"):
        pass
    assert b"caf\xe9 done" in read_and_close(read_end, write_end)


def test_terminal_progress_closes_its_own_descriptor(monkeypatch):
    leader, follower = os.openpty()
    monkeypatch.setattr(sys, "stderr", FakeStderr(follower))
    real_dup, real_close = os.dup, os.close
    duplicated, closed = [], []
    monkeypatch.setattr(os, "dup", lambda fd: duplicated.append(real_dup(fd)) or duplicated[-1])
    monkeypatch.setattr(os, "close", lambda fd: closed.append(fd) or real_close(fd))
    try:
        with terminal_progress(quiet=False) as progress, progress.step("pytorch tensors"):
            pass
    finally:
        monkeypatch.undo()
        os.close(follower)
        os.close(leader)
    assert len(duplicated) == 1 and closed == duplicated
