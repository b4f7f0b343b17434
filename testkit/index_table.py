"""Read and rewrite a tensor-bundle `.index` file (TensorFlow's LevelDB-style table) field by field, so that
tests can declare any shape, offset or size a corrupt or hostile checkpoint might, with valid block
checksums (random bytes would mostly stop at the first checksum). Written apart from the product's reader
(converters/tf1_checkpoint.py) so that a test does not check the reader with itself.

Layout (tensorflow/core/lib/io/{table,block,format}.cc): data blocks of prefix-compressed entries with a
restart array; an index block mapping a key to each data block's handle; a metaindex block; a 48-byte
footer (two handles, padding, the magic number). Each block is followed by a compression byte and the
masked CRC32C of block + that byte.
"""

from __future__ import annotations

import struct
from pathlib import Path

import google_crc32c

MAGIC = 0xDB4775248B80FB57
FOOTER = 48
# BundleEntryProto's crc32c (field 6) is a fixed32; every other integer field of the protos we touch is a varint.
FIXED32_FIELDS = {6}


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def decode_proto(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field, wire type, value) in order: enough to re-encode the message unchanged."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            value, pos = bytes(buf[pos:pos + size]), pos + size
        else:
            raise ValueError(f"wire type {wire}")
        fields.append((number, wire, value))
    return fields


def encode_proto(fields: list[tuple[int, int, int | bytes]]) -> bytes:
    out = bytearray()
    for number, wire, value in fields:
        out += varint(number << 3 | wire)
        if wire == 0:
            out += varint(int(value))
        elif wire == 5:
            out += struct.pack("<I", int(value) & 0xFFFFFFFF)
        elif wire == 1:
            out += struct.pack("<Q", int(value) & ((1 << 64) - 1))
        else:
            out += varint(len(value)) + bytes(value)
    return bytes(out)


def shape_proto(dims: list[int]) -> bytes:
    """TensorShapeProto: one `dim` (field 2) per dimension, each a Dim with `size` (field 1)."""
    return encode_proto([(2, 2, encode_proto([(1, 0, d)])) for d in dims])


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    pos, key, entries = 0, b"", []
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        size, pos = read_varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + size]))
        pos += size
    return entries


def _handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def read_entries(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an uncompressed index, in order; the header's key is b""."""
    data = path.read_bytes()
    footer = data[-FOOTER:]
    _, _, pos = _handle(footer, 0)
    index_offset, index_size, _ = _handle(footer, pos)
    entries = []
    for _, handle in _block_entries(data[index_offset:index_offset + index_size]):
        offset, size, _ = _handle(handle, 0)
        entries += _block_entries(data[offset:offset + size])
    return entries


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for key, value in entries:  # no prefix sharing: one restart point is enough
        out += varint(0) + varint(len(key)) + varint(len(value)) + key + value
    return bytes(out + struct.pack("<II", 0, 1))


def index_bytes(entries: list[tuple[bytes, bytes]], block_bytes: int = 1 << 62) -> bytes:
    """A whole index file holding `entries` in the order given (a valid table needs them sorted), in data
    blocks of about `block_bytes`, with valid checksums; each block's last key separates it in the index."""
    out = bytearray()

    def add_block(contents: bytes) -> bytes:
        handle = varint(len(out)) + varint(len(contents))
        out.extend(contents + b"\x00" + struct.pack("<I", masked_crc(contents + b"\x00")))
        return handle

    index_entries, block, size = [], [], 0
    for key, value in entries:
        block.append((key, value))
        size += len(key) + len(value)
        if size >= block_bytes:
            index_entries.append((key, add_block(_block(block))))
            block, size = [], 0
    if block or not index_entries:
        index_entries.append((block[-1][0] if block else b"", add_block(_block(block))))
    meta_handle = add_block(_block([]))
    index_handle = add_block(_block(index_entries))
    footer = (meta_handle + index_handle).ljust(FOOTER - 8, b"\x00") + struct.pack("<Q", MAGIC)
    return bytes(out + footer)


def write_index(path: Path, entries: list[tuple[bytes, bytes]]) -> None:
    """An index file holding `entries` in one data block, with valid checksums."""
    path.write_bytes(index_bytes(entries))


def _footer_handles(data: bytes) -> tuple[tuple[int, int], tuple[int, int]]:
    footer = data[-FOOTER:]
    meta_offset, meta_size, pos = _handle(footer, 0)
    index_offset, index_size, _ = _handle(footer, pos)
    return (meta_offset, meta_size), (index_offset, index_size)


def _uncompressed_index_block(data: bytes) -> list[tuple[bytes, bytes]]:
    _, (offset, size) = _footer_handles(data)
    if data[offset + size] != 0:
        raise ValueError("the index block itself is compressed; this helper reads plain index blocks only")
    return _block_entries(data[offset:offset + size])


def data_block_compressions(path: Path) -> list[int]:
    """The compression byte of every data block (0 none, 1 snappy), read from the block trailers."""
    data = path.read_bytes()
    compressions = []
    for _, handle in _uncompressed_index_block(data):
        offset, size, _ = _handle(handle, 0)
        compressions.append(data[offset + size])
    return compressions


def compress_data_blocks(path: Path, compress) -> list[tuple[int, int]]:
    """Rewrite an uncompressed index with each data block replaced by `compress(block)` and marked snappy
    (compression byte 1), with valid checksums; the blocks' contents stay exactly as their writer made them.
    Returns (plain size, compressed size) per block."""
    data = path.read_bytes()
    (meta_offset, meta_size), _ = _footer_handles(data)
    out = bytearray()

    def add_block(contents: bytes, compression: int) -> bytes:
        handle = varint(len(out)) + varint(len(contents))
        trailer = bytes([compression])
        out.extend(contents + trailer + struct.pack("<I", masked_crc(contents + trailer)))
        return handle

    sizes, index_entries = [], []
    for key, handle in _uncompressed_index_block(data):
        offset, size, _ = _handle(handle, 0)
        if data[offset + size] != 0:
            raise ValueError("a data block is compressed already")
        packed = bytes(compress(data[offset:offset + size]))
        sizes.append((size, len(packed)))
        index_entries.append((key, add_block(packed, 1)))
    meta_handle = add_block(data[meta_offset:meta_offset + meta_size], data[meta_offset + meta_size])
    index_handle = add_block(_block(index_entries), 0)
    footer = (meta_handle + index_handle).ljust(FOOTER - 8, b"\x00") + struct.pack("<Q", MAGIC)
    path.write_bytes(bytes(out + footer))
    return sizes
