"""Streaming writers: each receives one tensor at a time, in slices, and never holds the model.

The conversion driver (`converters/convert.py`) reads every tensor once and hands each slice to every
writer, so one pass can write several formats. A writer gets slices already cast to the target dtype, in its
`layout`: the TF1 source layout, or for PyTorch layouts with the (small, whole) kernels the table marks
transposed once by the driver.
Files are written into a directory the driver later renames into place, and contain nothing that varies
between runs: the same input gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rembert_ref.errors import UserError
from converters.mapping import TensorMapping

TARGET_DTYPES = ("float32", "float16", "bfloat16")
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
TORCH_STORAGES = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage"}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
SAFETENSORS_METADATA = {"format": "pt"}


# -- dtype casts, slice by slice ------------------------------------------------------------------------------


def storage_dtype(target_dtype: str) -> np.dtype:
    """The numpy dtype holding a target dtype's values (bfloat16 as its uint16 bits)."""
    return np.dtype(np.uint16) if target_dtype == "bfloat16" else np.dtype(target_dtype)


def to_float32(chunk: np.ndarray, source_dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """The slice as float32: itself if it is float32, else its exact float32 values (in `out` if given)."""
    if source_dtype == "float32":
        return chunk
    if out is None:
        out = np.empty(chunk.shape, dtype=np.float32)
    if source_dtype == "bfloat16":  # stored as uint16 bits: the high half of a float32
        np.left_shift(chunk, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(out, chunk, casting="same_kind")
    return out


def cast(chunk: np.ndarray, source_dtype: str, target_dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """Cast a slice to the target dtype; bfloat16 comes back as uint16 bits (round to nearest even).

    With `out` (the slice's shape, `storage_dtype(target_dtype)`) the result goes there instead of into a new
    array, unless no cast is needed: then the slice itself comes back. A half-precision source cast to the
    other half type goes through a float32 copy of the slice."""
    if source_dtype == target_dtype:
        return chunk
    if target_dtype == "float32":
        return to_float32(chunk, source_dtype, out)
    as_float32 = to_float32(chunk, source_dtype)
    if out is None:
        out = np.empty(chunk.shape, dtype=storage_dtype(target_dtype))
    if target_dtype == "float16":
        float16_numpy(as_float32, out)
        return out
    try:  # ml_dtypes (a TensorFlow dependency) casts in C++, 15x faster than the numpy bit arithmetic below
        import ml_dtypes

        with np.errstate(invalid="ignore"):  # a signalling NaN comes out quiet, as from torch: no warning for it
            np.copyto(out.view(ml_dtypes.bfloat16), as_float32, casting="unsafe")
        return out
    except ImportError:
        pass
    bits = as_float32.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    out[...] = np.where(np.isnan(as_float32), np.uint16(0x7FC0), rounded)
    return out


# float32 -> float16 decides the float16 conversion time. numpy's own cast (np.copyto) converts one value
# at a time in C, 1.6 ns each here, and writes NaNs differently from torch; torch's cast is SIMD but importing
# torch costs more CPU than casting the whole model. The cast below is IEEE round-to-nearest-even done with
# whole-array integer ufuncs (numpy runs them with SIMD, without the GIL), 1.0 ns a value: nine passes over a
# block small enough to stay in the CPU cache, then fix-ups for the few values outside float16's normal range.
# It gives torch's bytes for all 2**32 float32 bit patterns (checked once exhaustively; the tests check the
# edge cases), NaN payloads included.
FLOAT16_BLOCK = 1 << 17  # values per block: 3 scratch arrays of 512 KiB
F16_OVERFLOW = np.uint32((127 + 16) << 23)  # |x| >= 65536 (after rounding, inf) or inf or NaN
F16_NORMAL_MIN = np.uint32((127 - 14) << 23)  # |x| < 2**-14: float16 subnormal or zero
# Rebias the exponent from 127 to 15 and add half an ulp less one; adding the kept mantissa's lowest bit on
# top rounds ties to even. (Modulo 2**32: the exponent goes down.)
REBIAS_HALF_ULP = np.uint32((((15 - 127) << 23) + 0xFFF) % (1 << 32))
# A float32 whose ulp is float16's smallest subnormal: adding it rounds |x| (in the FPU, to nearest even)
# to a multiple of 2**-24, left in its low mantissa bits.
SUBNORMAL_MAGIC = np.uint32(((127 - 15) + (23 - 10) + 1) << 23)


def float16_numpy(values: np.ndarray, out: np.ndarray) -> None:
    """IEEE float32 -> float16 (round to nearest even) into `out` (same shape, float16), bit for bit as torch
    casts, NaNs included (quiet, sign and the payload's top bits kept)."""
    if not out.flags.c_contiguous:
        contiguous = np.empty(out.shape, dtype=np.float16)
        float16_numpy(values, contiguous)
        out[...] = contiguous
        return
    source = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    target = out.reshape(-1).view(np.uint16)
    scratch = np.empty((3, min(FLOAT16_BLOCK, source.size)), dtype=np.uint32)
    for start in range(0, source.size, FLOAT16_BLOCK):
        bits = source[start:start + FLOAT16_BLOCK]
        sign, magnitude, half = (row[:bits.size] for row in scratch)
        np.bitwise_and(bits, np.uint32(0x80000000), out=sign)
        np.bitwise_xor(bits, sign, out=magnitude)
        np.right_shift(magnitude, 13, out=half)  # the lowest mantissa bit float16 keeps: ties go to even
        np.bitwise_and(half, np.uint32(1), out=half)
        np.add(half, magnitude, out=half)
        np.add(half, REBIAS_HALF_ULP, out=half)
        np.right_shift(half, 13, out=half)
        np.right_shift(sign, 16, out=sign)
        np.bitwise_or(half, sign, out=half)
        if magnitude.min() < F16_NORMAL_MIN:
            small = np.flatnonzero(magnitude < F16_NORMAL_MIN)
            rounded = magnitude[small].view(np.float32) + SUBNORMAL_MAGIC.view(np.float32)
            half[small] = (rounded.view(np.uint32) - SUBNORMAL_MAGIC) | sign[small]
        if magnitude.max() >= F16_OVERFLOW:
            large = np.flatnonzero(magnitude >= F16_OVERFLOW)
            kept = magnitude[large]
            nan = np.uint32(0x7E00) | ((kept >> 13) & np.uint32(0x3FF))
            half[large] = np.where(kept > np.uint32(0x7F800000), nan, np.uint32(0x7C00)) | sign[large]
        np.copyto(target[start:start + bits.size], half, casting="unsafe")  # the low 16 bits


def target_nbytes(mapping: TensorMapping, dtype: str) -> int:
    return ITEMSIZE[dtype] * int(np.prod(mapping.source_shape, dtype=np.int64))


def torch_layout(mapping: TensorMapping, chunk: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """PyTorch Linear weights are [out, in]: transpose the whole kernel (the driver never slices these),
    into `out` (shape reversed) if given."""
    return transpose(chunk, out) if mapping.transpose else np.ascontiguousarray(chunk)


def transpose(matrix: np.ndarray, out: np.ndarray | None = None, rows_per_block: int = 256) -> np.ndarray:
    """A contiguous transpose, a band of rows at a time: numpy's one-pass strided copy of a [1152, 4608]
    kernel runs at a third of this speed (cache-set conflicts of the power-of-two strides)."""
    if out is None:
        out = np.empty(matrix.shape[::-1], dtype=matrix.dtype)
    for start in range(0, matrix.shape[0], rows_per_block):
        np.copyto(out[:, start:start + rows_per_block], matrix[start:start + rows_per_block].T)
    return out


class Writer:
    """Interface: `add(mapping, chunk)` for consecutive slices of `mappings` in order, then `close()`.

    Chunks come in the writer's `layout`: "tf" is the TF1 source layout; "torch" has the kernels the table
    marks already transposed (`torch_layout`), by the driver, once for all writers.
    A chunk's memory is reused for the next slice once `add` returns: a writer copies what it keeps.
    """

    layout = "tf"

    def __init__(self, directory: Path, mappings: Sequence[TensorMapping], dtype: str):
        self.directory = directory
        self.mappings = list(mappings)
        self.dtype = dtype
        self.hashed: dict[Path, str] = {}  # what `digests` returns

    def add(self, mapping: TensorMapping, chunk: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> list[Path]:
        """Finish the files and return them."""
        raise NotImplementedError

    def abort(self) -> None:
        """Release open files after a failure (the driver deletes the temporary directory)."""

    def digests(self) -> dict[Path, str]:
        """sha256 of the files the writer hashed itself while writing them (known after `close()`)."""
        return dict(self.hashed)

    def _close_file(self, handle: DirectFile) -> None:
        """Close one of the writer's files, keeping its sha256 if it was hashed."""
        digest = handle.close()
        if digest is not None:
            self.hashed[handle.path] = digest


# -- files out of the page cache (bundle's verify drops each format once proven) -------------------------------


def drop_cached_pages(fd: int, length: int = 0) -> None:
    """Ask the kernel to drop the file's clean cached pages in [0, length) (0: the whole file); dirty pages are
    queued for write-back instead. A hint: no data changes, and where the call does not exist nothing happens."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)


def drop_cached_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_cached_pages(fd)
    finally:
        os.close(fd)


# -- sequential output that bypasses the page cache -------------------------------------------------------


class DirectFile:
    """A write-only, strictly sequential file written with O_DIRECT from page-aligned buffers by a thread of
    its own, optionally computing its sha256 on the way.

    Why: on small VMs, putting 4 GB of new data into the page cache costs far more CPU than the disk write
    (the benchmark's `dd` rows compare both: benchmarks/README.md), and a converted model is rarely read back
    at once. Where O_DIRECT is not supported (tmpfs, some network file systems) this is an
    ordinary buffered file. The final partial block is written padded, then the file is truncated to size.
    """

    ALIGN = 4096  # covers 512- and 4096-byte logical blocks
    BUFFER_BYTES = 16 << 20
    BUFFERS = 3  # one filling, one being written, one spare

    def __init__(self, path: Path, digest: bool = False):
        import mmap
        import queue
        import threading

        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            self.fd = os.open(self.path, flags | getattr(os, "O_DIRECT", 0), 0o644)
        except OSError:  # the file system refuses O_DIRECT
            self.fd = os.open(self.path, flags, 0o644)
        self.sha = hashlib.sha256() if digest else None
        self.size = 0
        self.free: queue.Queue = queue.Queue()
        for _ in range(self.BUFFERS):
            self.free.put(mmap.mmap(-1, self.BUFFER_BYTES))  # anonymous maps are page-aligned
        self.full: queue.Queue = queue.Queue()
        self.buffer, self.filled = self.free.get(), 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write_buffers, name="direct-write", daemon=True)
        self.thread.start()

    def write(self, data: memoryview | bytes) -> None:
        data = memoryview(data).cast("B")
        if self.sha is not None:
            self.sha.update(data)  # releases the GIL: the reader thread goes on meanwhile
        self.size += len(data)
        while len(data):
            if self.error is not None:
                raise self.error
            n = min(len(data), self.BUFFER_BYTES - self.filled)
            self.buffer[self.filled:self.filled + n] = data[:n]
            self.filled += n
            data = data[n:]
            if self.filled == self.BUFFER_BYTES:
                self.full.put((self.buffer, self.filled))
                self.buffer, self.filled = self.free.get(), 0

    def tell(self) -> int:
        return self.size

    def _write_buffers(self) -> None:
        while (item := self.full.get()) is not None:
            buffer, filled = item
            try:
                if self.error is None:
                    view = memoryview(buffer)[:-(-filled // self.ALIGN) * self.ALIGN]  # whole blocks
                    try:
                        written = os.write(self.fd, view)
                    except OSError:  # O_DIRECT refused after all (alignment): go on buffered
                        import fcntl

                        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                        written = os.write(self.fd, view)
                    while written < len(view):
                        written += os.write(self.fd, view[written:])
            except BaseException as exc:  # raised in the writing thread at its next write or close
                self.error = exc
            finally:
                view = None
                self.free.put(buffer)

    def close(self) -> str | None:
        """Finish the file; return its sha256 (hex) if asked for one."""
        if self.filled:
            padding = -self.filled % self.ALIGN  # zeros, cut off again by ftruncate
            self.buffer[self.filled:self.filled + padding] = bytes(padding)
            self.full.put((self.buffer, self.filled))
        self.full.put(None)
        self.thread.join()
        try:
            if self.error is not None:
                raise self.error
            os.ftruncate(self.fd, self.size)  # drop the padding of the last block
            # The size and the block map on disk too, before the caller renames the file into place.
            getattr(os, "fdatasync", os.fsync)(self.fd)  # macOS has only fsync
        except OSError as exc:
            if exc.filename is None:  # a write on a descriptor names no file: say which (a full disk, ...)
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
            raise
        finally:
            self._close_fd()
        return self.sha.hexdigest() if self.sha is not None else None

    def abort(self) -> None:
        """Stop after a failure or a signal, also one that came during `close` (its flush takes seconds)."""
        self.error = self.error or RuntimeError("aborted")
        if self.thread.is_alive():
            self.full.put(None)
            self.thread.join()
        self._close_fd()

    def _close_fd(self) -> None:
        # Once: a second close could close a descriptor another thread has opened under the same number since.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


# -- safetensors ----------------------------------------------------------------------------------------------


def parse_size(text: str, option: str | None = None) -> int:
    """'5GB', '500MB', '10KiB' or a byte count; `option` (e.g. "--max-shard-size") names it in an error."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError, OverflowError):  # OverflowError: inf, 1e400
        raise UserError(f"{option or 'size'} {text!r} is not a size; write it like 5GB, 500MB or 10000000") \
            from None
    if value <= 0:
        raise UserError(f"{option or 'size'} {text!r} must be positive")
    return value


class SafetensorsWriter(Writer):
    """`model.safetensors`, or `model-0000K-of-0000N.safetensors` + `model.safetensors.index.json` when the
    tensors exceed `max_shard_size` (a tensor larger than a shard gets a shard of its own). Shards are written
    in order, past the page cache (`DirectFile`), and hashed on the way when `checksums` is set."""

    layout = "torch"

    def __init__(self, directory: Path, mappings: Sequence[TensorMapping], dtype: str, max_shard_size: int,
                 checksums: bool = False):
        super().__init__(directory, mappings, dtype)
        self.checksums = checksums
        groups: list[list[TensorMapping]] = [[]]
        size = 0
        for mapping in self.mappings:
            nbytes = target_nbytes(mapping, dtype)
            if groups[-1] and size + nbytes > max_shard_size:
                groups.append([])
                size = 0
            groups[-1].append(mapping)
            size += nbytes
        if len(groups) == 1:
            names = ["model.safetensors"]
        else:
            names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
        self.shards = list(zip(names, groups, strict=True))
        self.shard_of = {m.torch_name: i for i, (_, group) in enumerate(self.shards) for m in group}
        self.handle: DirectFile | None = None
        self.current = -1

    def _open(self, index: int) -> None:
        self._close_shard()
        name, group = self.shards[index]
        header: dict[str, object] = {"__metadata__": SAFETENSORS_METADATA}
        offset = 0
        for mapping in group:
            nbytes = target_nbytes(mapping, self.dtype)
            header[mapping.torch_name] = {"dtype": SAFETENSORS_DTYPES[self.dtype],
                                          "shape": list(mapping.target_shape),
                                          "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self.handle = DirectFile(self.directory / name, digest=self.checksums)
        self.handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self.current = index

    def add(self, mapping: TensorMapping, chunk: np.ndarray) -> None:
        shard = self.shard_of[mapping.torch_name]
        if shard != self.current:
            self._open(shard)
        self.handle.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))

    def _close_shard(self) -> None:
        if self.handle is not None:
            self._close_file(self.handle)
            self.handle = None

    def close(self) -> list[Path]:
        self._close_shard()
        files = [self.directory / name for name, _ in self.shards]
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(target_nbytes(m, self.dtype) for m in self.mappings)},
                "weight_map": {m.torch_name: self.shards[self.shard_of[m.torch_name]][0]
                               for m in sorted(self.mappings, key=lambda m: m.torch_name)},
            }
            path = self.directory / "model.safetensors.index.json"
            path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            files.append(path)
        return files

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.abort()
            self.handle = None


# -- pytorch_model.bin ----------------------------------------------------------------------------------------


class _DataPickle:
    """The protocol-2 opcodes pickle's C pickler writes for torch.save's {name: tensor} state dict, written
    directly: the pickle names torch's globals (`torch._utils _rebuild_tensor_v2`, `torch FloatStorage`), and
    pickling real objects would mean importing torch (1-1.5 s of one core) just for their names. The memo
    follows the C pickler's: each string, tuple and REDUCE result gets the next index, and the objects it
    meets again (the globals, the constant strings "storage" and "cpu") are fetched from it."""

    BATCH = 1000  # the C pickler writes a dict's items in batches of this many (see torch_data_pickle)

    def __init__(self) -> None:
        self.out = bytearray(pickle.PROTO + b"\x02")
        self.memo: dict[object, int] = {}

    def put(self, key: object | None = None) -> None:
        index = len(self.memo)
        self.memo[key if key is not None else ("unique", index)] = index
        self.out += pickle.BINPUT + bytes([index]) if index < 256 else pickle.LONG_BINPUT + struct.pack("<I", index)

    def fetched(self, key: object) -> bool:
        index = self.memo.get(key)
        if index is None:
            return False
        self.out += pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index)
        return True

    def text(self, value: str, shared: bool = False) -> None:
        """A string; `shared`: the same object every time (a constant), so the memo serves it again."""
        if shared and self.fetched(("str", value)):
            return
        data = value.encode("utf-8", "surrogatepass")
        self.out += pickle.BINUNICODE + struct.pack("<I", len(data)) + data
        self.put(("str", value) if shared else None)

    def global_name(self, module: str, name: str) -> None:
        if not self.fetched(("global", module, name)):
            self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()
            self.put(("global", module, name))

    def integer(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.out += pickle.BININT1 + bytes([value])
        elif 0 <= value <= 0xFFFF:
            self.out += pickle.BININT2 + struct.pack("<H", value)
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            self.out += pickle.BININT + struct.pack("<i", value)
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += pickle.LONG1 + bytes([len(data)]) + data

    def int_tuple(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += pickle.EMPTY_TUPLE  # the empty tuple is never memoized
            return
        if len(values) > 3:
            self.out += pickle.MARK
        for value in values:
            self.integer(value)
        self.out += {1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}.get(len(values), pickle.TUPLE)
        self.put()

    def tensor(self, storage_class: str, key: str, shape: tuple[int, ...]) -> None:
        """_rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict()): a contiguous CPU tensor."""
        self.global_name("torch._utils", "_rebuild_tensor_v2")
        self.out += pickle.MARK
        self.out += pickle.MARK  # the storage's persistent id: ("storage", class, key, "cpu", numel)
        self.text("storage", shared=True)
        self.global_name("torch", storage_class)
        self.text(key)
        self.text("cpu", shared=True)
        self.integer(int(np.prod(shape, dtype=np.int64)))
        self.out += pickle.TUPLE
        self.put()
        self.out += pickle.BINPERSID
        self.integer(0)
        self.int_tuple(shape)
        self.int_tuple(tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))))
        self.out += pickle.NEWFALSE
        self.global_name("collections", "OrderedDict")
        self.out += pickle.EMPTY_TUPLE + pickle.REDUCE
        self.put()
        self.out += pickle.TUPLE
        self.put()
        self.out += pickle.REDUCE
        self.put()


def torch_data_pickle(entries: Sequence[tuple[str, str, tuple[int, ...]]]) -> bytes:
    """The `data.pkl` torch.save writes for {name: tensor}, from (name, storage class, shape) entries;
    storage keys are the entries' positions. No tensor is created and torch is not imported."""
    writer = _DataPickle()
    writer.out += pickle.EMPTY_DICT
    writer.put()
    items = list(enumerate(entries))

    def add(batch: list) -> None:
        for key, (name, storage_class, shape) in batch:
            writer.text(name)
            writer.tensor(storage_class, str(key), tuple(int(d) for d in shape))

    # As the C pickler does it: one item is a SETITEM; more go in MARK ... SETITEMS batches of BATCH, and a batch
    # that came out full is followed by another, even an empty one.
    if len(items) == 1:
        add(items)
        writer.out += pickle.SETITEM
    elif items:
        for start in range(0, len(items) + 1, _DataPickle.BATCH):
            writer.out += pickle.MARK
            add(items[start:start + _DataPickle.BATCH])
            writer.out += pickle.SETITEMS
    writer.out += pickle.STOP
    return bytes(writer.out)


ZIP_ALIGNMENT = 64  # torch aligns record data to 64 bytes (needed by torch.load(mmap=True))
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class _ForwardOnly:
    """A DirectFile as zipfile sees it: write and tell, no seek. zipfile then writes each record's CRC and sizes in
    a data descriptor after its data (zip's streaming form) instead of seeking back to its header, so every byte
    is final once written and the file can be hashed as it goes."""

    def __init__(self, out: DirectFile):
        self.out = out

    def write(self, data) -> int:
        self.out.write(data)
        return len(data)

    def tell(self) -> int:
        return self.out.tell()

    def flush(self) -> None:
        pass


class TorchBinWriter(Writer):
    """`pytorch_model.bin` in torch.save's zip format, written record by record as tensors stream in, front to
    back past the page cache (`DirectFile`), hashed on the way when `checksums` is set. torch.load reads records
    through the zip's central directory, as it does torch.save's."""

    ARCHIVE = "pytorch_model"
    layout = "torch"

    def __init__(self, directory: Path, mappings: Sequence[TensorMapping], dtype: str, name: str = "pytorch_model.bin",
                 checksums: bool = False):
        super().__init__(directory, mappings, dtype)
        self.path = directory / name
        self.out = DirectFile(self.path, digest=checksums)
        self.file = _ForwardOnly(self.out)
        self.zip = zipfile.ZipFile(self.file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.key_of = {m.torch_name: i for i, m in enumerate(self.mappings)}
        pickled = torch_data_pickle([(m.torch_name, TORCH_STORAGES[dtype], m.target_shape) for m in self.mappings])
        self._record("data.pkl", pickled)
        self._record(".format_version", b"1")
        self._record(".storage_alignment", str(ZIP_ALIGNMENT).encode())
        self._record("byteorder", b"little")
        self.serialization_id = hashlib.sha256(pickled).hexdigest()[:40]
        self.stream = None
        self.current = None

    def _info(self, record: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(f"{self.ARCHIVE}/{record}", date_time=ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        # Pad the local header's extra field so the record's data starts on an aligned offset. zipfile adds a
        # 20-byte zip64 field when the size is within 5% of the 4 GiB limit (ZipFile._open_to_write).
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
        header_size = 30 + len(info.filename.encode()) + (20 if zip64 else 0)
        start = self.file.tell() + header_size + 4
        info.extra = struct.pack("<HH", 0x4246, -start % ZIP_ALIGNMENT) + b"Z" * (-start % ZIP_ALIGNMENT)
        return info

    def _record(self, record: str, data: bytes) -> None:
        self.zip.writestr(self._info(record, len(data)), data)

    def add(self, mapping: TensorMapping, chunk: np.ndarray) -> None:
        if self.current != mapping.torch_name:
            if self.stream is not None:
                self.stream.close()
            key = self.key_of[mapping.torch_name]
            self.stream = self.zip.open(self._info(f"data/{key}", target_nbytes(mapping, self.dtype)), "w")
            self.current = mapping.torch_name
        self.stream.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))

    def close(self) -> list[Path]:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self._record("version", b"3\n")
        self._record(".data/serialization_id", self.serialization_id.encode())
        self.zip.close()
        self._close_file(self.out)
        return [self.path]

    def abort(self) -> None:
        self.out.abort()  # first: what zipfile still writes on closing goes nowhere (each write raises)
        # Both closed, each on its own: a zip left open would try again when collected, and complain.
        for close in ([self.stream.close] if self.stream is not None else []) + [self.zip.close]:
            # What closing an aborted zip raises ("aborted", a closed file): the directory is deleted anyway,
            # and the original error is the one to report.
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                close()
