"""Give a streamed pg_dump custom archive the data offsets a seekable one has.

pg_dump writes each table's data offset into the archive's table of contents only when its
output is a seekable file; written to a pipe (as we stream it), every offset is "not set", and
each parallel pg_restore worker has to scan the archive from the start to find its table. The
offsets are fixed-size fields, so once the archive is a local file again they can be filled in
place: walk the data blocks, note where each one starts, write those positions into the TOC.
This is what pg_dump itself does when it can seek (pg_backup_custom.c, _CloseArchive).

Only archive versions read here are patched (1.14 to 1.16: PostgreSQL 12 to 17); anything
unexpected leaves the file untouched, and pg_restore then scans as it would anyway.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
# pg_backup_archiver.h / pg_backup_custom.c
OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA = 1, 2, 3
BLK_DATA, BLK_BLOBS = 1, 3
VERSIONS = range((1 << 16) | (14 << 8), (1 << 16) | (17 << 8))  # 1.14.0 up to 1.16.255


class ArchiveFormatError(Exception):
    """The file is not a custom-format archive this module understands."""


@dataclass
class _Reader:
    handle: BinaryIO
    int_size: int = 4
    off_size: int = 8

    def read_byte(self) -> int:
        data = self.handle.read(1)
        if not data:
            raise ArchiveFormatError("unexpected end of archive")
        return data[0]

    def read_bytes(self, n: int) -> bytes:
        data = self.handle.read(n)
        if len(data) != n:
            raise ArchiveFormatError("unexpected end of archive")
        return data

    def read_int(self) -> int:
        sign = self.read_byte()
        value = int.from_bytes(self.read_bytes(self.int_size), "little")
        return -value if sign else value

    def read_str(self) -> bytes | None:
        length = self.read_int()
        return None if length < 0 else self.read_bytes(length)


@dataclass
class Toc:
    """Where each TOC entry's offset field sits, and what it says."""

    int_size: int
    off_size: int
    # dump id -> (file position of the offset field, flag, offset)
    offsets: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    data_start: int = 0


def read_toc(handle: BinaryIO) -> Toc:
    """Parse the header and table of contents of a custom-format archive."""
    r = _Reader(handle)
    if r.read_bytes(5) != MAGIC:
        raise ArchiveFormatError("not a pg_dump archive")
    version = (r.read_byte() << 16) | (r.read_byte() << 8) | r.read_byte()
    if version not in VERSIONS:
        raise ArchiveFormatError(f"archive version {version >> 16}.{(version >> 8) & 255}")
    r.int_size, r.off_size = r.read_byte(), r.read_byte()
    if r.read_byte() != FORMAT_CUSTOM:
        raise ArchiveFormatError("not a custom-format archive")
    if version >= 0x010F00:  # 1.15: compression algorithm byte
        r.read_byte()
    else:
        r.read_int()
    for _ in range(7):  # creation time
        r.read_int()
    for _ in range(3):  # database name, server version, pg_dump version
        r.read_str()
    toc = Toc(r.int_size, r.off_size)
    for _ in range(r.read_int()):
        dump_id = r.read_int()
        r.read_int()  # had dumper
        for _ in range(4):  # table oid, oid, tag, desc
            r.read_str()
        r.read_int()  # section
        for _ in range(6):  # defn, drop, copy, namespace, tablespace, table access method
            r.read_str()
        if version >= 0x011000:  # 1.16: relkind
            r.read_int()
        r.read_str()  # owner
        r.read_str()  # "with oids"
        while r.read_str() is not None:  # dependencies
            pass
        position = handle.tell()
        flag = r.read_byte()
        offset = int.from_bytes(r.read_bytes(r.off_size), "little")
        toc.offsets[dump_id] = (position, flag, offset)
    toc.data_start = handle.tell()
    return toc


def _block_starts(handle: BinaryIO, toc: Toc, int_size: int, wanted: set[int]) -> dict[int, int]:
    """dump id -> file position of its data block.

    Walking the blocks chunk by chunk costs a Python step per row (pg_dump writes one chunk
    per COPY row when it does not compress), so instead find the byte pattern that starts a
    block: the previous block's end marker (a zero int), the block type and the dump id. COPY
    text never contains a NUL byte and a chunk's length is never zero, so a run of int_size + 1
    zero bytes occurs only at a block's end.
    """
    end_marker = b"\x00" * (int_size + 1)
    starts: dict[int, int] = {}
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:

        def block_at(position: int) -> None:
            if data[position] in (BLK_DATA, BLK_BLOBS) and data[position + 1] == 0:
                dump_id = int.from_bytes(data[position + 2 : position + 2 + int_size], "little")
                if dump_id in wanted and dump_id not in starts:
                    starts[dump_id] = position

        if toc.data_start < len(data):
            block_at(toc.data_start)
        position = data.find(end_marker, toc.data_start)
        while position != -1 and len(starts) < len(wanted):
            # Skip to the last zero of the run: the block type follows it.
            while position + len(end_marker) < len(data) and data[position + len(end_marker)] == 0:
                position += 1
            following = position + len(end_marker)
            if following + 2 + int_size <= len(data):
                block_at(following)
            position = data.find(end_marker, following)
    return starts


def add_offsets(path: Path) -> int:
    """Fill in the data offsets of a streamed archive in place; return how many were set.
    Raises ArchiveFormatError (and changes nothing) when the file is not understood."""
    with path.open("r+b") as handle:
        toc = read_toc(handle)
        missing = [i for i, (_, flag, _o) in toc.offsets.items() if flag == OFFSET_NOT_SET]
        starts = _block_starts(handle, toc, toc.int_size, set(missing))
        if any(i not in starts for i in missing):
            raise ArchiveFormatError("a TOC entry's data block is missing")
        for dump_id in missing:
            position = toc.offsets[dump_id][0]
            handle.seek(position)
            handle.write(bytes([OFFSET_SET]) + starts[dump_id].to_bytes(toc.off_size, "little"))
    return len(missing)
