"""Helpers that let a conversion run at the speed of the disk on a small machine, in bounded memory.

- `read_ahead` runs the checkpoint reader (preadv + CRC32C) in a second thread, a few slices ahead of the
  casts and writes. Both sides spend most of their time in calls that release the GIL (os.preadv, numpy
  casts, file writes), so reading, checksumming and writing overlap on two cores.
- `BufferPool` and `ScratchArray` hold the slice-sized buffers a conversion reads into and casts into,
  allocated once: however big the model, a conversion allocates the same few buffers, and the allocator never
  sees a stream of 16 MiB blocks freed in one thread and allocated in another (which fragments its heaps).
- `FileHasher` computes the sha256 of output files while they are still being written, in a thread of its
  own: writers say how many leading bytes of each file are final, and the hasher reads those back from the
  page cache. Hashing 4 GB costs more CPU than reading and writing it, so it must not wait for the end.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

T = TypeVar("T")
HASH_BLOCK = 16 << 20


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a background thread, at most `depth` items ahead. An exception raised there is
    raised here, at the point where its item would have come; stopping early stops the thread."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                handoff.put((True, item))
                if stop.is_set():
                    return
            handoff.put((False, None))
        except BaseException as exc:  # handed over and raised in the consumer
            handoff.put((False, exc))

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = handoff.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # a producer blocked on a full queue needs room to see `stop`
            try:
                handoff.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


class BufferPool:
    """`count` byte buffers of `nbytes` each, allocated once. `take` waits until one is free; whoever took it
    gives it back (or any array viewing it) once nothing refers to its contents any more."""

    def __init__(self, count: int, nbytes: int):
        self.nbytes = nbytes
        self._buffers = [np.empty(nbytes, dtype=np.uint8) for _ in range(count)]
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        for buffer in self._buffers:
            self._free.put(buffer)

    def take(self, nbytes: int) -> np.ndarray:
        """A free buffer's first `nbytes` bytes (uint8)."""
        if nbytes > self.nbytes:
            raise ValueError(f"a slice of {nbytes} bytes does not fit the pool's {self.nbytes}-byte buffers")
        return self._free.get()[:nbytes]

    def give_back(self, array: np.ndarray) -> None:
        # A view of a view records the array that owns the memory as its base: that is the pool's buffer.
        owner = array if array.base is None else array.base
        if not any(owner is buffer for buffer in self._buffers):
            raise ValueError("this array is not a view of one of the pool's buffers")
        self._free.put(owner)


class ScratchArray:
    """One buffer reused by every slice of a conversion, for a result that lives until the next slice
    (a transposed kernel; casts go to the read-ahead thread's BufferPool). It grows to the largest slice
    and stays there."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)

    def array(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array of this shape and dtype, in the buffer (valid until the next call)."""
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if nbytes > self._buffer.nbytes:
            self._buffer = np.empty(nbytes, dtype=np.uint8)
        return self._buffer[:nbytes].view(dtype).reshape(shape)


class RunningHash(Protocol):
    """What FileHasher needs of a hashlib object (hashlib has no public type for it)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class FileHasher:
    """sha256 of files being written. `advance({path: final_bytes})` may be called as often as convenient;
    `finish(paths)` hashes what remains of each (now complete) file and returns the hex digests."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._final: dict[Path, int] = {}  # bytes of each file known to be final
        self._done: dict[Path, int] = {}  # bytes hashed
        self._sha: dict[Path, RunningHash] = {}
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def advance(self, final: dict[Path, int]) -> None:
        with self._lock:
            for path, size in final.items():
                if size > self._final.get(path, 0):
                    self._final[path] = size
            self._lock.notify()

    def hashed(self, path: Path) -> int:
        """How many leading bytes of `path` are hashed (the writer may let them leave the page cache)."""
        with self._lock:
            return self._done.get(path, 0)

    def finish(self, paths: Iterable[Path]) -> dict[Path, str]:
        paths = list(paths)
        self.advance({path: path.stat().st_size for path in paths})
        self._stop()
        if self._error is not None:
            raise self._error
        return {path: (self._sha.get(path) or hashlib.sha256()).hexdigest() for path in paths}

    def cancel(self) -> None:
        with self._lock:
            self._final.clear()
        self._stop()

    def _stop(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()

    def _next(self) -> tuple[Path, int, int] | None:
        """The next block to hash (path, offset, size), waiting for one; None once closing and all done."""
        with self._lock:
            while True:
                for path, final in self._final.items():
                    done = self._done.get(path, 0)
                    if final > done:
                        return path, done, min(HASH_BLOCK, final - done)
                if self._closing:
                    return None
                self._lock.wait()

    def _run(self) -> None:
        descriptors: dict[Path, int] = {}
        try:
            while (work := self._next()) is not None:
                path, offset, size = work
                if path not in descriptors:
                    descriptors[path] = os.open(path, os.O_RDONLY)
                    self._sha[path] = hashlib.sha256()
                block = os.pread(descriptors[path], size, offset)
                if len(block) != size:
                    raise RuntimeError(f"{path} is shorter than its writer said "
                                       f"({offset + len(block)} bytes)")
                self._sha[path].update(block)
                with self._lock:
                    self._done[path] = offset + size
        except BaseException as exc:  # raised by finish() in the driver's thread
            self._error = exc
        finally:
            for fd in descriptors.values():
                os.close(fd)
