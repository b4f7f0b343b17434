"""The read-ahead thread and buffers of converters/pipeline.py, DirectFile, and the digests of what convert writes."""

from __future__ import annotations

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
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors", "tf2"], options)
    files = json.loads((out / "conversion_report.json").read_text())["files"]
    assert len(files) > 3  # pytorch_model.bin, safetensors shards and index, tf_model.h5
    for name, info in files.items():
        data = Path(out / name).read_bytes()
        assert info["bytes"] == len(data)
        if checksums:
            assert info["sha256"] == hashlib.sha256(data).hexdigest(), name
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
