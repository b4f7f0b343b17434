"""Progress of long steps (convert, verify, bundle) on a terminal: one line per step.

While steps run, one status line at the bottom names each running step with its share done, rewritten in place.
When a step ends it leaves one permanent line above it: when it ended, what it was, how long it took. Two steps
run at once (the tensor proof in a helper thread beside the functional proof), so every write holds one lock:
lines never interleave.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

Update = Callable[[float], None]  # a running step's share done, 0..1
ERASE_LINE = "\r\x1b[K"  # back to the line's start, then clear it: the status line is redrawn in place


class Sink(Protocol):
    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


class StepProgress:
    """Steps with a status line on `stream`; with no stream, steps are still run but nothing is written."""

    def __init__(self, stream: Sink | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._running: dict[str, int | None] = {}  # by step name: percent done, None until the step reports one
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Update]:
        """Run the block as a step named `name`; the block reports its share done through the function it gets.
        Names of steps running at once must differ."""
        started = time.perf_counter()
        with self._lock:
            self._running[name] = None
            self._draw()

        def update(done: float) -> None:
            with self._lock:
                if name not in self._running:  # the step has ended
                    return
                percent = min(max(int(done * 100), 0), 100)  # shown as it is compared: whole percents, rounded down
                if percent != self._running[name]:  # redraw only when the percentage moves
                    self._running[name] = percent
                    self._draw()

        ended = "stopped"  # what the line says if the block raises
        try:
            yield update
            ended = "done"
        finally:
            with self._lock:
                del self._running[name]
                now = time.perf_counter()
                self._write(f"{ERASE_LINE}[{now - self._started:6.1f} s] {name} {ended} ({now - started:.1f} s)\n")
                self._draw()

    def clear(self) -> None:
        """Take the status line off the screen, whatever still runs; the steps go on silently."""
        with self._lock:
            self._write(ERASE_LINE)
            self._stream = None

    def _draw(self) -> None:
        """The status line: every running step and its percentage, cut to the terminal's width (a line that wraps
        cannot be redrawn in place)."""
        if not self._running:
            self._write(ERASE_LINE)
            return
        parts = [name if percent is None else f"{name} {percent}%" for name, percent in self._running.items()]
        self._write(ERASE_LINE + ("... " + " | ".join(parts))[:self._width() - 1])

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, OSError, ValueError):  # not a terminal's descriptor (tests: a StringIO)
            columns = 0
        return columns or shutil.get_terminal_size().columns or 80  # 0: a terminal whose size was never set

    def _write(self, text: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError:  # the terminal went away (a closed ssh session): the work goes on without progress
            self._stream = None


class _Descriptor:
    """Text written straight to a file descriptor: nothing is buffered, so a terminal that went away fails the
    write at hand (which StepProgress survives), never a later flush or close."""

    def __init__(self, descriptor: int, encoding: str) -> None:
        self.descriptor, self.encoding = descriptor, encoding

    def write(self, text: str) -> None:
        data = text.encode(self.encoding, errors="replace")
        while data:
            data = data[os.write(self.descriptor, data):]

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.descriptor


@contextlib.contextmanager
def terminal_progress(quiet: bool) -> Iterator[StepProgress]:
    """Steps shown on stderr when it is a terminal and not `quiet` (silent otherwise), through a file descriptor of
    their own: while TensorFlow imports in another thread (verify, bundle), rembert_ref.tf_model captures
    descriptor 2 to hide its start-up notices, and progress written there would appear only once the import ends."""
    stderr = sys.stderr  # None when the process started with descriptor 2 closed
    try:
        descriptor = os.dup(stderr.fileno()) if not quiet and stderr is not None and stderr.isatty() else None
    except (AttributeError, OSError, ValueError):  # a stderr object without a descriptor
        descriptor = None
    if descriptor is None:
        yield StepProgress()
        return
    progress = StepProgress(_Descriptor(descriptor, getattr(stderr, "encoding", None) or "utf-8"))
    try:
        yield progress
    finally:  # a step left running (an error elsewhere) must not leave its status line under the error message
        progress.clear()
        os.close(descriptor)
