"""The read-ahead thread and buffers of converters/pipeline.py, DirectFile, and the digests of what convert writes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from converters.convert import ConvertOptions, convert_checkpoint
from converters.pipeline import read_ahead
from converters.writers import DirectFile


def test_read_ahead_keeps_order_and_runs_in_another_thread():
    threads = []

    def items():
        for i in range(50):
            threads.append(threading.current_thread())
            yield i

    assert list(read_ahead(items(), depth=3)) == list(range(50))
    assert threading.main_thread() not in threads


def test_read_ahead_raises_the_producers_error_in_order():
    def items():
        yield 1
        yield 2
        raise ValueError("broken at 3")

    seen = []
    with pytest.raises(ValueError, match="broken at 3"):
        for item in read_ahead(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_stopping_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    for item in read_ahead(items(), depth=2):
        if item == 5:
            break
    assert len(produced) < 20  # it stopped a few items ahead, not at the end
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_buffer_pool_hands_out_its_own_buffers_only():
    from converters.pipeline import BufferPool

    pool = BufferPool(2, 64)
    first = pool.take(64)
    view = pool.take(10).view(np.int16)  # a view of a view still belongs to the pool
    with pytest.raises(ValueError, match="does not fit"):
        pool.take(65)
    with pytest.raises(ValueError, match="not a view of one of the pool's buffers"):
        pool.give_back(np.empty(64, dtype=np.uint8))
    pool.give_back(view)
    again = pool.take(64)
    assert np.shares_memory(again, view) and not np.shares_memory(again, first)


def test_scratch_array_reuses_its_buffer():
    from converters.pipeline import ScratchArray

    scratch = ScratchArray()
    big = scratch.array((4, 8), np.float32)
    small = scratch.array((3,), np.uint16)
    assert small.shape == (3,) and small.dtype == np.uint16 and np.shares_memory(big, small)
    assert not np.shares_memory(scratch.array((5, 8), np.float32), big)  # grown: a new buffer


@pytest.mark.parametrize("checksums", [True, False])
def test_report_digests_match_the_files(tiny_ckpt, tmp_path, checksums):
    out = tmp_path / "out"
    # Small slices and shards, so that hashing runs while the pytorch and safetensors files grow.
    options = ConvertOptions(quiet=True, chunk_bytes=256, max_shard_size="20KB", checksums=checksums)
    result = convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors", "tf2"], options)
    files = json.loads((out / "conversion_report.json").read_text())["files"]
    assert len(files) > 3  # pytorch_model.bin, safetensors shards and index, tf_model.h5
    # With --checksums the weight files are hashed as they are written, not read back again afterwards.
    weights = {name for name in files if name.endswith((".bin", ".safetensors", ".h5"))}
    assert set(result.digests) == (weights if checksums else set())
    for name, info in files.items():
        data = Path(out / name).read_bytes()
        assert info["bytes"] == len(data)
        if checksums:
            assert info["sha256"] == hashlib.sha256(data).hexdigest() == result.digests.get(name, info["sha256"]), name
        else:
            assert "sha256" not in info


class _SmallBuffers(DirectFile):
    BUFFER_BYTES = 2 * DirectFile.ALIGN  # many buffer hand-overs and an unaligned tail


@pytest.mark.parametrize("where", ["tmp", "tmpfs"])
@pytest.mark.parametrize("digest", [True, False])
def test_direct_file_writes_exact_bytes(tmp_path, where, digest):
    directory = tmp_path if where == "tmp" else Path("/dev/shm")  # tmpfs refuses O_DIRECT: the fallback
    if not directory.is_dir():
        pytest.skip("no /dev/shm")
    path = directory / f"direct-{os.getpid()}-{digest}.bin"
    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in (5, 8192, 1, 12289, 0, 4095, 333)]
    try:
        handle = _SmallBuffers(path, digest=digest)
        for piece in pieces:
            handle.write(piece)
        assert handle.tell() == sum(map(len, pieces))
        result = handle.close()
        expected = b"".join(pieces)
        assert path.read_bytes() == expected
        assert result == (hashlib.sha256(expected).hexdigest() if digest else None)
    finally:
        path.unlink(missing_ok=True)


def test_a_failed_write_stops_the_next_write_and_close_names_the_file():
    """A write that fails in the writing thread (a full disk: /dev/full fails every write with ENOSPC) is raised by
    the next `write` once its buffer comes back, not only at the end of a 4 GB file; and `close` names the file."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full")
    handle = _SmallBuffers(full)
    try:
        with pytest.raises(OSError) as info:
            for _ in range(3 * _SmallBuffers.BUFFERS):  # more buffers than the writer has: one comes back failed
                handle.write(bytes(_SmallBuffers.BUFFER_BYTES))
        assert info.value.errno == errno.ENOSPC
    finally:
        handle.abort()
    handle = _SmallBuffers(full)
    handle.write(b"x" * 100)  # less than a buffer: written, and refused, only when closing
    with pytest.raises(OSError) as info:
        handle.close()
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(full))


def test_direct_file_finishes_short_writes(tmp_path, monkeypatch):
    """os.write may write less than it was given (a signal, a network file system): the rest follows."""
    real_write = os.write
    short = []

    def write_one_block(fd, data):
        data = memoryview(data)
        if len(data) > DirectFile.ALIGN:  # only the writer's own writes, which are whole blocks
            short.append(len(data))
            data = data[:DirectFile.ALIGN]
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_one_block)
    path = tmp_path / "short.bin"
    expected = np.random.default_rng(2).integers(0, 256, 5 * DirectFile.ALIGN + 123, dtype=np.uint8).tobytes()
    handle = _SmallBuffers(path, digest=True)
    handle.write(expected)
    assert handle.close() == hashlib.sha256(expected).hexdigest()
    assert path.read_bytes() == expected and short


@pytest.mark.parametrize("refused", ["when opened", "when written"])
def test_direct_file_goes_on_buffered_where_o_direct_is_refused(tmp_path, monkeypatch, refused):
    """A file system may refuse O_DIRECT when the file is opened (some network file systems; tmpfs before Linux 6.6,
    so /dev/shm above may not take this path) or only at a write it cannot align: the file is written buffered."""
    import fcntl

    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        pytest.skip("no O_DIRECT here")
    real_open, real_write = os.open, os.write
    refusals = []

    def open_refusing(path, flags, *args, **kwargs):
        if flags & direct:
            refusals.append(path)
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args, **kwargs)

    def write_refusing(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct:
            refusals.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    if refused == "when opened":
        monkeypatch.setattr(os, "open", open_refusing)
    else:
        monkeypatch.setattr(os, "write", write_refusing)
    path = tmp_path / "buffered.bin"
    expected = np.random.default_rng(3).integers(0, 256, 3 * _SmallBuffers.BUFFER_BYTES + 77, dtype=np.uint8).tobytes()
    handle = _SmallBuffers(path, digest=True)
    if refused == "when written" and not fcntl.fcntl(handle.fd, fcntl.F_GETFL) & direct:
        handle.abort()
        pytest.skip(f"{tmp_path} refuses O_DIRECT already when a file is opened")
    handle.write(expected)
    assert handle.close() == hashlib.sha256(expected).hexdigest()
    assert path.read_bytes() == expected and refusals


def test_direct_file_empty(tmp_path):
    path = tmp_path / "empty.bin"
    assert DirectFile(path, digest=True).close() == hashlib.sha256(b"").hexdigest()
    assert path.read_bytes() == b""


def test_every_weight_file_is_written_past_the_page_cache(tiny_ckpt, tmp_path, monkeypatch):
    opened: list[str] = []
    real_init = DirectFile.__init__

    def init(self, path, digest=False):
        opened.append(Path(path).name)
        real_init(self, path, digest)

    monkeypatch.setattr(DirectFile, "__init__", init)
    out = tmp_path / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors", "tf2"],
                       ConvertOptions(quiet=True, chunk_bytes=256, max_shard_size="20KB"))
    weights = sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".safetensors", ".h5"))
    assert len(weights) > 3 and sorted(opened) == weights
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # h5's layout file is gone


def test_hash_in_stream_gives_the_digest_of_every_weight_file(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    result = convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors", "tf2"],
                                ConvertOptions(quiet=True, chunk_bytes=256), hash_in_stream=True)
    assert result.digests == {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
                              for name in ("pytorch_model.bin", "model.safetensors", "tf_model.h5")}
    files = json.loads((out / "conversion_report.json").read_text())["files"]
    assert not any("sha256" in info for info in files.values())


def _run_in_a_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=30)  # generous: on clean code this returns at once; a thread still alive means a hang
    return thread


@pytest.mark.parametrize("depth", [1, 3, None])
def test_read_ahead_runs_at_most_depth_items_ahead_and_closes_while_the_producer_waits(depth):
    """Once the consumer holds item 0, the producer can have made items 1..depth (queued) and one more (waiting
    for room): depth + 2 items in all, never more. Closing the iterator then must not wait for that producer."""
    produced = []
    changed = threading.Condition()

    def items():
        for i in range(100):
            with changed:
                produced.append(i)
                changed.notify_all()
            yield i

    iterator = read_ahead(items()) if depth is None else read_ahead(items(), depth=depth)
    limit = (2 if depth is None else depth) + 2
    assert next(iterator) == 0
    with changed:
        assert changed.wait_for(lambda: len(produced) >= limit, timeout=30)  # it fills the queue
        # No time would be enough for a correct producer to make one more; a fifth of a second is plenty for one
        # that is not held back.
        assert not changed.wait_for(lambda: len(produced) > limit, timeout=0.2), produced
    closer = _run_in_a_thread(iterator.close)
    assert not closer.is_alive()
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


class _Cancelled(BaseException):
    """Not an Exception, as KeyboardInterrupt and SystemExit are not."""


def test_read_ahead_hands_over_an_error_that_is_not_an_exception():
    def items():
        yield 1
        raise _Cancelled

    seen, raised = [], []

    def consume() -> None:
        try:
            for item in read_ahead(items()):
                seen.append(item)
        except _Cancelled as exc:
            raised.append(exc)

    assert not _run_in_a_thread(consume).is_alive()
    assert seen == [1] and len(raised) == 1


def test_buffer_pool_take_waits_for_a_buffer_given_back():
    """`count` buffers and no more: a take beyond them waits until one comes back, and gets that one, whole."""
    from converters.pipeline import BufferPool

    pool = BufferPool(2, 16)
    first, second = pool.take(16), pool.take(8)
    assert (first.nbytes, second.nbytes, first.dtype, second.dtype) == (16, 8, np.uint8, np.uint8)
    taken = []
    waiting = threading.Thread(target=lambda: taken.append(pool.take(16)), daemon=True)
    waiting.start()
    waiting.join(timeout=0.2)  # a third buffer must not exist: the take is still waiting
    assert taken == []
    pool.give_back(second[2:6].view(np.int16))  # a view of a view gives back the whole buffer
    waiting.join(timeout=30)
    assert len(taken) == 1 and taken[0].nbytes == 16 and taken[0].dtype == np.uint8
    assert np.shares_memory(taken[0], second) and not np.shares_memory(taken[0], first)


def test_scratch_array_of_the_same_size_reuses_its_buffer():
    from converters.pipeline import ScratchArray

    scratch = ScratchArray()
    first = scratch.array((2, 3), np.float32)
    again = scratch.array((3, 2), np.int32)  # the same 24 bytes, another shape
    assert again.shape == (3, 2) and again.dtype == np.int32 and np.shares_memory(first, again)
