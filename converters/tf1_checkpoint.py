"""A native reader of TensorFlow's tensor-bundle checkpoints (`.index` + `.data-K-of-N`), without TensorFlow.

Why not `tf.train.load_checkpoint`: importing TensorFlow costs seconds and ~0.5 GB, and its reader returns
whole tensors (the RemBERT output embedding alone is 1.67 GB). This reader parses the `.index` table itself
(TensorFlow's LevelDB-style SSTable of `BundleEntryProto` records), reads tensor data with `pread` in row
slices of bounded size, and checks every tensor's CRC32C as it streams (and every index block's CRC).

Format references: tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc}, tensorflow/core/lib/io/
{table,block,format}.cc, and the protos BundleHeaderProto / BundleEntryProto / TensorShapeProto /
TensorSliceProto.
"""

from __future__ import annotations

import math
import os
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from converters.pipeline import BufferPool
from rembert_ref.errors import UserError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked CRC32C
SNAPPY_COMPRESSION = 1  # the compression byte of a snappy block (tensorflow/core/lib/io/table_options.h)
# 16 MiB slices: large enough that per-slice overheads vanish, small enough that a few of them in flight
# (read ahead, cast, written) keep a conversion far below 1 GB.
DEFAULT_CHUNK_BYTES = 16 << 20
MAX_SHARDS = 99999  # the `-of-NNNNN` field of a data file's name has five digits

# TensorFlow DataType enum -> numpy dtype name. bfloat16 is carried as raw uint16 bits (numpy has no bfloat16).
TF_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
             9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}
NUMPY_STORAGE = {"bfloat16": np.dtype("<u2")}


def numpy_storage_dtype(dtype: str) -> np.dtype:
    return NUMPY_STORAGE.get(dtype) or np.dtype(dtype).newbyteorder("<")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # "float32", "float16", "bfloat16", "int64", ...
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int  # bytes
    crc32c: int  # masked, as stored
    # A partitioned variable has no data of its own: one (start, length) per dimension for each saved slice,
    # length -1 meaning the whole dimension. Each slice's data is an entry of its own (see `slice_key`).
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()

    @property
    def partitioned(self) -> bool:
        return bool(self.slices)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else numpy_storage_dtype(self.dtype).itemsize

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)  # Python ints: a corrupt index's huge dimensions must not wrap around

    @property
    def nbytes(self) -> int:
        """The whole tensor's bytes (`size` is 0 for a partitioned variable, whose slices hold the data)."""
        return self.num_elements * self.itemsize


SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
SAVED_MODEL_VARIABLES = Path("variables") / "variables"  # the tensor bundle inside every SavedModel


def is_saved_model(directory: Path) -> bool:
    return any((directory / name).is_file() for name in SAVED_MODEL_FILES)


def checkpoint_home(prefix: Path) -> Path:
    """Where a checkpoint's bert_config.json and SentencePiece model lie: beside the prefix, or, for a
    SavedModel's `variables/variables`, in the SavedModel directory (BLEURT's layout)."""
    if prefix.name == SAVED_MODEL_VARIABLES.name and prefix.parent.name == SAVED_MODEL_VARIABLES.parent.name \
            and is_saved_model(prefix.parent.parent):
        return prefix.parent.parent
    return prefix.parent


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint prefix, its `.index` file, a directory (its `checkpoint` file picks the latest), or
    a SavedModel directory (its `variables/variables` prefix: a TF1 Estimator export stores the graph's
    variables there under their graph names, like any checkpoint)."""
    return resolve_checkpoint_saying_how(path)[0]


def resolve_checkpoint_saying_how(path: str | os.PathLike) -> tuple[Path, str]:
    """`resolve_checkpoint`, and how the prefix was chosen where a folder chose it ("" otherwise), for the
    line that names what was read: a directory's `checkpoint` file may pick a prefix silently."""
    path = Path(path)
    how = ""
    if path.is_dir() and is_saved_model(path):
        prefix = path / SAVED_MODEL_VARIABLES
        if not Path(f"{prefix}.index").is_file():
            raise UserError(f"SavedModel {path} has no {SAVED_MODEL_VARIABLES}.index; it holds no variables to "
                            "convert (copy its variables/ folder too)")
        return prefix, "the SavedModel's variables"
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            how = f"named by {state}"
            match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(encoding="utf-8"), re.MULTILINE)
            if not match:
                raise UserError(f"{state} names no model_checkpoint_path; pass the checkpoint prefix instead")
            prefix = Path(match.group(1))
            prefix = prefix if prefix.is_absolute() else path / prefix
            if not Path(f"{prefix}.index").is_file():
                # The checkpoint file often holds the absolute path of the training machine.
                prefix = path / prefix.name
        else:
            indexes = sorted(path.glob("*.index"))
            if len(indexes) != 1:
                found = ", ".join(p.name for p in indexes) or "none"
                raise UserError(f"{path} has no `checkpoint` file and {len(indexes)} .index files ({found}); "
                                "pass the checkpoint prefix, e.g. DIR/model.ckpt-1000")
            prefix = indexes[0].with_suffix("")
    elif path.suffix == ".index":
        prefix = path.with_suffix("")
    elif path.name.endswith(".meta") or ".data-" in path.name:
        prefix = Path(re.sub(r"(\.meta|\.data-\d+-of-\d+)$", "", str(path)))
    else:
        prefix = path
    if not Path(f"{prefix}.index").is_file():
        raise UserError(f"no TF1 checkpoint at {path}: {prefix}.index does not exist; pass a checkpoint prefix, "
                        "its .index file, a directory with a `checkpoint` file, or a TF1 SavedModel directory")
    return prefix, how


class CheckpointReader:
    """Lists a tensor bundle's variables and streams their data in row slices, checking CRC32C."""

    def __init__(self, path: str | os.PathLike):
        self.prefix = resolve_checkpoint(path)
        self.num_shards, self.entries, slice_entries = _read_index(Path(f"{self.prefix}.index"))
        # For every variable, its data as (region, entry) pieces: the whole tensor, or each saved slice.
        self.pieces = {name: _pieces(entry, slice_entries) for name, entry in self.entries.items()}
        self._files: dict[int, int] = {}
        self._files_lock = threading.Lock()  # verify reads from two threads (the reference, the tensor proof)
        # Stored blocks (shard, offset, size) whose CRC matched in this reader: verify reads each variable up to
        # four times (the reference, one tensor proof per format), and the CRC of 4 GB costs 0.25 s a pass.
        self._crc_matched: set[tuple[int, int, int]] = set()
        self._check_data_extents()

    def _check_data_extents(self) -> None:
        """Every stored block lies inside an existing data shard: checked against the files' sizes before
        anything is read or allocated, so a corrupt index's declared offsets and sizes cost nothing."""
        where = f"checkpoint index {self.prefix.name}.index"
        if not 1 <= self.num_shards <= MAX_SHARDS:
            raise UserError(f"{where} is corrupt: it declares {self.num_shards} data shards; "
                            "re-download the checkpoint")
        shard_sizes: dict[int, int] = {}
        for name, pieces in self.pieces.items():
            for _, entry in pieces:
                if not entry.size and not entry.num_elements:
                    continue
                if not 0 <= entry.shard < self.num_shards or entry.offset < 0 or entry.size < 0:
                    raise UserError(f"{where} is corrupt: {name} points at shard {entry.shard}, offset "
                                    f"{entry.offset}, size {entry.size}; re-download the checkpoint")
                if entry.shard not in shard_sizes:
                    data = self.data_path(entry.shard)
                    if not data.is_file():
                        raise UserError(f"checkpoint data shard {data.name} is missing next to "
                                        f"{self.prefix.name}.index; copy every .data-*-of-* file of the checkpoint")
                    shard_sizes[entry.shard] = data.stat().st_size
                if entry.offset + entry.size > shard_sizes[entry.shard]:
                    raise UserError(f"checkpoint data shard {self.data_path(entry.shard).name} is truncated or its "
                                    f"index is corrupt: {name} needs bytes {entry.offset}..{entry.offset + entry.size} "
                                    f"of {shard_sizes[entry.shard]}; re-download the checkpoint")

    def data_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def variables(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {name: (e.shape, e.dtype) for name, e in self.entries.items()}

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fd(self, shard: int) -> int:
        with self._files_lock:
            if shard not in self._files:
                self._files[shard] = os.open(self.data_path(shard), os.O_RDONLY)
            return self._files[shard]

    def read(self, name: str) -> np.ndarray:
        """The whole tensor (CRC checked). For big tensors prefer `iter_rows`."""
        entry = self._entry(name)
        parts = list(self.iter_rows(name, max_bytes=max(entry.nbytes, 1)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def iter_rows(self, name: str, max_bytes: int = DEFAULT_CHUNK_BYTES,
                  buffers: BufferPool | None = None) -> Iterator[np.ndarray]:
        """Yield consecutive slices along the first axis, each at most `max_bytes` (at least one row).

        Arrays use the stored dtype (bfloat16 as uint16 bits). A partitioned variable is reassembled in row
        order from its saved slices, whatever axes they split. Each piece's CRC is checked right after its
        last row is read (once per reader: a piece that matched is not checked again), so a caller writing
        slices as they come must discard its output when this raises.
        With `buffers`, each slice is read into a buffer taken from the pool, and the caller gives it back
        (`buffers.give_back(chunk)`) when done with it; without, each slice is a new array.
        """
        entry = self._entry(name)
        if entry.dtype == "string":
            raise UserError(f"{name} holds strings; only numeric tensors can be converted")
        dtype = numpy_storage_dtype(entry.dtype)
        shape = entry.shape
        rows = shape[0] if shape else 1
        row_shape = shape[1:] if shape else ()
        row_bytes = entry.itemsize * math.prod(row_shape)
        rows_per_chunk = max(1, max_bytes // max(row_bytes, 1))
        pieces = [_Piece(region, piece, shape) for region, piece in self.pieces[name]]
        for piece in pieces:
            if piece.rows.stop == piece.rows.start:  # an empty piece: only its checksum to check
                self._check_crc(name, piece)
        # Row bands in which the same pieces are present. Chunks of `rows_per_chunk` rows may span bands: a
        # caller asking for the whole tensor (a kernel to transpose) gets it in one chunk however it was split.
        bounds = sorted({0, rows} | {p.rows.start for p in pieces} | {p.rows.stop for p in pieces})
        bands = [(lo, hi, [p for p in pieces if p.rows.start <= lo < p.rows.stop])
                 for lo, hi in zip(bounds, bounds[1:], strict=False)]
        for start in range(0, rows, rows_per_chunk):
            count = min(rows_per_chunk, rows - start)
            nbytes = count * row_bytes
            raw = np.empty(nbytes, dtype=np.uint8) if buffers is None else buffers.take(nbytes)
            chunk = raw.view(dtype).reshape((count, *row_shape))
            for band_start, band_stop, present in bands:
                lo, hi = max(start, band_start), min(start + count, band_stop)
                if lo >= hi:
                    continue
                if len(present) == 1 and present[0].whole_rows:  # the common case: straight into the slice
                    self._read_piece_rows(name, present[0], lo, hi - lo,
                                          raw[(lo - start) * row_bytes:(hi - start) * row_bytes])
                else:
                    for piece in present:
                        part = np.empty((hi - lo) * piece.row_bytes, dtype=np.uint8)
                        self._read_piece_rows(name, piece, lo, hi - lo, part)
                        chunk[(slice(lo - start, hi - start), *piece.region[1:])] = part.view(dtype).reshape(
                            (hi - lo, *piece.shape[1:]))
            yield chunk if shape else chunk.reshape(())
        if rows == 0:
            yield np.empty(shape, dtype=dtype) if buffers is None else buffers.take(0).view(dtype).reshape(shape)

    def _read_piece_rows(self, name: str, piece: _Piece, start: int, count: int, into: np.ndarray) -> None:
        """Rows [start, start + count) of the full tensor from one piece into `into` (uint8, exactly their
        size), extending the piece's CRC."""
        entry = piece.entry
        offset = entry.offset + (start - piece.rows.start) * piece.row_bytes
        view = memoryview(into)
        done = 0
        while done < len(view):
            got = _pread_into(self._fd(entry.shard), view[done:], offset + done)
            if got == 0:
                raise UserError(f"checkpoint data shard {self.data_path(entry.shard).name} is truncated "
                                f"(reading {name}); re-download the checkpoint")
            done += got
        if (entry.shard, entry.offset, entry.size) in self._crc_matched:
            return
        readonly = into.view()
        readonly.flags.writeable = False  # google_crc32c takes read-only buffers only
        piece.crc = google_crc32c.extend(piece.crc, readonly)
        if start + count == piece.rows.stop:
            self._check_crc(name, piece)

    def _check_crc(self, name: str, piece: _Piece) -> None:
        if mask_crc(piece.crc) != piece.entry.crc32c:
            where = name if piece.entry.name == name else f"{name} (slice {piece.entry.name})"
            raise UserError(f"checksum mismatch in {where} (crc32c {mask_crc(piece.crc):#010x}, index says "
                            f"{piece.entry.crc32c:#010x}): the checkpoint data is corrupt; re-download it")
        self._crc_matched.add((piece.entry.shard, piece.entry.offset, piece.entry.size))

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise UserError(f"{name} is not in checkpoint {self.prefix}") from None


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into `view` at `offset` without moving the file position; the bytes read (0 at end of file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # where the platform has no preadv
    view[:len(data)] = data
    return len(data)


class _Piece:
    """A stored block of a tensor (the whole tensor, or one saved slice of a partitioned variable) and the
    running CRC of its data, read in row order."""

    def __init__(self, region: tuple[slice, ...], entry: TensorEntry, full_shape: tuple[int, ...]):
        self.region, self.entry = region, entry  # region: where the block sits in the full tensor
        self.shape = tuple(r.stop - r.start for r in region) or (1,)  # a scalar is one row
        self.rows = region[0] if region else slice(0, 1)
        self.row_bytes = entry.itemsize * math.prod(self.shape[1:])
        self.whole_rows = self.shape[1:] == tuple(full_shape[1:])  # its rows are whole rows of the tensor
        self.crc = 0


def _pieces(entry: TensorEntry, slice_entries: dict[bytes, TensorEntry]
            ) -> list[tuple[tuple[slice, ...], TensorEntry]]:
    """Where each stored block of a variable goes, checked to tile the full tensor exactly once."""
    shape = entry.shape
    if not entry.slices:
        if entry.dtype != "string" and entry.num_elements * entry.itemsize != entry.size:
            raise UserError(f"checkpoint index is corrupt: {entry.name} has shape {list(shape)} "
                            f"({entry.dtype}) but {entry.size} bytes of data; the checkpoint needs to be "
                            "re-downloaded")
        return [(tuple(slice(0, d) for d in shape), entry)]
    corrupt = f"checkpoint index is corrupt: partitioned variable {entry.name}"
    pieces = []
    for extents in entry.slices:
        if len(extents) != len(shape):
            raise UserError(f"{corrupt} has a {len(extents)}-d slice of a {len(shape)}-d tensor; "
                            "re-download it")
        region = tuple(slice(0, d) if length == -1 else slice(start, start + length)
                       for (start, length), d in zip(extents, shape, strict=True))
        if any(r.start < 0 or r.stop > d or r.stop < r.start for r, d in zip(region, shape, strict=True)):
            raise UserError(f"{corrupt} has a slice {_slice_spec(extents)} outside its shape {list(shape)}")
        piece = slice_entries.get(slice_key(entry.name, extents))
        if piece is None:
            raise UserError(f"{corrupt} lacks the data of its slice {_slice_spec(extents)}; re-download it")
        piece_shape = tuple(r.stop - r.start for r in region)
        if piece.dtype != entry.dtype or piece.num_elements * piece.itemsize != piece.size or (
                piece.shape != piece_shape):
            raise UserError(f"{corrupt}: its slice {_slice_spec(extents)} holds {list(piece.shape)} "
                            f"{piece.dtype} in {piece.size} bytes, not {list(piece_shape)} {entry.dtype}; "
                            "re-download it")
        pieces.append((region, TensorEntry(f"{entry.name}[{_slice_spec(extents)}]", piece.dtype, piece.shape,
                                           piece.shard, piece.offset, piece.size, piece.crc32c)))
    # Exactly once: the volumes add up and no two slices overlap.
    volume = sum(math.prod(r.stop - r.start for r in region) for region, _ in pieces)
    overlap = any(all(a.start < b.stop and b.start < a.stop for a, b in zip(first, second, strict=True))
                  for i, (first, _) in enumerate(pieces) for second, _ in pieces[i + 1:])
    if overlap or volume != entry.num_elements:
        raise UserError(f"{corrupt}: its slices do not cover it exactly once; re-download the checkpoint")
    return pieces


def _slice_spec(extents: tuple[tuple[int, int], ...]) -> str:
    """TensorFlow's notation: `0,5:-` is rows 0-4 of every column."""
    return ":".join("-" if length == -1 else f"{start},{length}" for start, length in extents)


def slice_key(name: str, extents: tuple[tuple[int, int], ...]) -> bytes:
    """The index key of one slice's data: TensorFlow's EncodeTensorNameSlice (strings::OrderedCode), i.e.
    0, the escaped name, the number of dimensions, then start and length of each (-1 for the whole)."""
    escaped = b"".join(_ESCAPES.get(byte, bytes([byte])) for byte in name.encode("utf-8"))
    key = _ordered_unsigned(0) + escaped + b"\x00\x01" + _ordered_unsigned(len(extents))
    for start, length in extents:
        key += _ordered_signed(start) + _ordered_signed(length)
    return key


_ESCAPES = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}  # so that b"\x00\x01" can end the name


def _ordered_unsigned(value: int) -> bytes:
    """OrderedCode::WriteNumIncreasing: a length byte, then the big-endian value without leading zeros."""
    raw = value.to_bytes(8, "big").lstrip(b"\x00")
    return bytes([len(raw)]) + raw


# OrderedCode::WriteSignedNumIncreasing marks the encoded length in the leading bits of the first two bytes.
_SIGNED_HEADER = {1: (0x80, 0), 2: (0xC0, 0), 3: (0xE0, 0), 4: (0xF0, 0), 5: (0xF8, 0), 6: (0xFC, 0),
                  7: (0xFE, 0), 8: (0xFF, 0), 9: (0xFF, 0x80), 10: (0xFF, 0xC0)}


def _ordered_signed(value: int) -> bytes:
    magnitude = ~value if value < 0 else value
    length = magnitude.bit_length() // 7 + 1  # 6 value bits in one byte, 7 more per extra byte
    raw = bytearray((value & ((1 << 80) - 1)).to_bytes(10, "big")[-length:])  # sign-extended big-endian
    first, second = _SIGNED_HEADER[length]
    raw[0] ^= first
    if length > 1:
        raw[1] ^= second
    return bytes(raw)


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow store CRCs masked, so that a CRC of data containing CRCs stays well distributed."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# -- the .index table -----------------------------------------------------------------------------------------


def _read_index(path: Path) -> tuple[int, dict[str, TensorEntry], dict[bytes, TensorEntry]]:
    data = path.read_bytes()
    where = f"checkpoint index {path.name}"
    if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise UserError(f"{where} is corrupt or not a TF checkpoint index (bad footer); re-download the checkpoint")
    try:
        footer = memoryview(data)[len(data) - FOOTER_SIZE:]
        (_meta_offset, _meta_size), pos = _read_handle(footer, 0)
        (index_offset, index_size), _ = _read_handle(footer, pos)
        header: dict[int, list] | None = None
        entries: dict[str, TensorEntry] = {}
        slice_entries: dict[bytes, TensorEntry] = {}
        for _, handle in _block_entries(_read_block(data, index_offset, index_size, where)):
            (offset, size), _ = _read_handle(handle, 0)
            for key, value in _block_entries(_read_block(data, offset, size, where)):
                if key == b"":
                    header = _parse_proto(value)
                elif key[:1] == b"\x00":  # the data of one slice of a partitioned variable
                    slice_entries[bytes(key)] = _parse_entry(repr(bytes(key)), _parse_proto(value))
                else:
                    name = bytes(key).decode("utf-8")
                    entries[name] = _parse_entry(name, _parse_proto(value))
        if header is None:
            raise UserError(f"{where} has no bundle header; it is not a TF2-style (V2) checkpoint index")
        num_shards, endianness = _scalar(header, 1, 1), _scalar(header, 2, 0)
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{where} is corrupt ({exc}); re-download the checkpoint") from None
    if endianness != 0:
        raise UserError(f"{where} was written on a big-endian machine; convert it on that machine to little-endian")
    return num_shards, entries, slice_entries


def _read_handle(buf: memoryview | bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _read_block(data: bytes, offset: int, size: int, where: str) -> memoryview:
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise UserError(f"{where} is truncated; re-download the checkpoint")
    compression = data[end]
    stored_crc = struct.unpack_from("<I", data, end + 1)[0]
    if mask_crc(google_crc32c.value(data[offset:end + 1])) != stored_crc:
        raise UserError(f"{where} is corrupt (block checksum mismatch); re-download the checkpoint")
    if compression == SNAPPY_COMPRESSION:
        # TensorFlow's table format allows snappy blocks, and real indexes have them: Google's BLEURT test
        # SavedModel (tests/data/bleurt_test_checkpoint) does, although TensorFlow 1.2+ writes uncompressed.
        return memoryview(snappy_decompress(data[offset:end]))
    if compression != 0:
        raise UserError(f"{where} has a block of unknown compression type {compression} (TensorFlow writes 0, "
                        "none, or 1, snappy); the file is corrupt or not a TF checkpoint index: re-download it")
    return memoryview(data)[offset:end]


def _block_entries(block: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """Entries of one table block: prefix-compressed keys, then a restart array we do not need."""
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_size, pos = _varint(block, pos)
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        yield key, block[pos:pos + value_size]
        pos += value_size


def _varint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _parse_proto(buf: memoryview | bytes) -> dict[int, list]:
    """A minimal protobuf wire-format parser: field number -> list of raw values (ints or bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _scalar(fields: dict[int, list], number: int, default: int) -> int:
    value = fields.get(number, [default])[-1]
    if not isinstance(value, int):  # a corrupt index can give any field any wire type
        raise ValueError(f"protobuf field {number} holds bytes where a number belongs")
    return value


def _messages(fields: dict[int, list], number: int) -> list[bytes]:
    values = fields.get(number, [])
    if any(not isinstance(value, bytes) for value in values):
        raise ValueError(f"protobuf field {number} holds a number where a message belongs")
    return values


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_entry(name: str, fields: dict[int, list]) -> TensorEntry:
    dtype_code = _scalar(fields, 1, 0)
    if dtype_code not in TF_DTYPES:
        raise ValueError(f"{name} has unsupported TensorFlow dtype code {dtype_code}")
    shape: list[int] = []
    for shape_bytes in _messages(fields, 2):
        for dim in _messages(_parse_proto(shape_bytes), 2):
            shape.append(_signed(_scalar(_parse_proto(dim), 1, 0)))
    if any(d < 0 for d in shape):
        raise ValueError(f"{name} has a negative dimension {shape}")
    return TensorEntry(
        name=name, dtype=TF_DTYPES[dtype_code], shape=tuple(shape), shard=_scalar(fields, 3, 0),
        offset=_signed(_scalar(fields, 4, 0)), size=_signed(_scalar(fields, 5, 0)), crc32c=_scalar(fields, 6, 0),
        slices=tuple(_parse_slice(buf) for buf in _messages(fields, 7)),
    )


def _parse_slice(buf: bytes) -> tuple[tuple[int, int], ...]:
    """TensorSliceProto: one Extent {start, length} per dimension; an empty Extent is the whole dimension."""
    extents = []
    for extent in _messages(_parse_proto(buf), 1):
        fields = _parse_proto(extent)
        extents.append((_signed(_scalar(fields, 1, 0)), _signed(_scalar(fields, 2, 0)) if 2 in fields else -1))
    return tuple(extents)


# -- snappy ---------------------------------------------------------------------------------------------------

# The most a snappy stream can expand: a 3-byte copy element emits at most 64 bytes (a literal emits less than
# it holds), so a declared length above 64/3 of the stream is corrupt and is refused before anything is allocated.
SNAPPY_MOST_OUT, SNAPPY_PER_IN = 64, 3


def snappy_decompress(data: bytes | memoryview) -> bytes:
    """Snappy's raw format (github.com/google/snappy, format_description.txt), as TensorFlow's table writer
    compresses blocks: the uncompressed length as a varint, then literal and copy elements. Any malformed input
    raises ValueError (the index reader turns it into a UserError); every step consumes input or is bounded by
    the declared length, so nothing can loop or grow without bound."""
    data = bytes(data)
    try:
        length, pos = _varint(data, 0)
    except IndexError:
        raise ValueError("snappy block ends inside its length") from None
    if length * SNAPPY_PER_IN > SNAPPY_MOST_OUT * (len(data) - pos):
        raise ValueError(f"snappy block declares {length} bytes, more than its {len(data)} bytes can hold")
    out = bytearray(length)
    filled = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal: its length - 1 in the tag, or in the next 1-4 bytes
            size = tag >> 2
            if size >= 60:
                extra = size - 59
                if pos + extra > len(data):
                    raise ValueError("snappy literal length runs past the block")
                size = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            size += 1
            if pos + size > len(data) or filled + size > length:
                raise ValueError("snappy literal runs past the block or the declared length")
            out[filled:filled + size] = data[pos:pos + size]
            pos += size
            filled += size
            continue
        if kind == 1:  # copy with a 1-byte offset: 3 high offset bits and length - 4 in the tag
            size, extra = ((tag >> 2) & 7) + 4, 1
            if pos + extra > len(data):
                raise ValueError("snappy copy runs past the block")
            back = ((tag >> 5) << 8) | data[pos]
        else:  # copy with a 2- or 4-byte offset, length - 1 in the tag
            size, extra = (tag >> 2) + 1, 2 if kind == 2 else 4
            if pos + extra > len(data):
                raise ValueError("snappy copy runs past the block")
            back = int.from_bytes(data[pos:pos + extra], "little")
        pos += extra
        if back == 0 or back > filled or filled + size > length:
            raise ValueError("snappy copy points outside the bytes decoded so far or past the declared length")
        source = filled - back
        if back >= size:
            out[filled:filled + size] = out[source:source + size]
        else:  # an overlapping copy repeats the last `back` bytes
            pattern = bytes(out[source:filled])
            out[filled:filled + size] = (pattern * (size // back + 1))[:size]
        filled += size
    if filled != length:
        raise ValueError(f"snappy block holds {filled} bytes, not the {length} it declares")
    return bytes(out)
