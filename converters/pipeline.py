"""Helpers that let a conversion run at the speed of the disk on a small machine, in bounded memory.

- `read_ahead` runs the checkpoint reader (preadv + CRC32C) in a second thread, a few slices ahead of the
  casts and writes. Both sides spend most of their time in calls that release the GIL (os.preadv, numpy
  casts, file writes), so reading, checksumming and writing overlap on two cores.
- `BufferPool` and `ScratchArray` hold the slice-sized buffers a conversion reads into and casts into,
  allocated once: however big the model, a conversion allocates the same few buffers, and the allocator never
  sees a stream of 16 MiB blocks freed in one thread and allocated in another (which fragments its heaps).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")


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
