"""Packs and bundles written by hand, as a hostile sandbox could: delta bombs and odd headers.

Independent of the controller's own pack reader: entries are encoded here from git's pack
format (Documentation/gitformat-pack.txt), so a test can build any pack git itself
would never write, and wrap it in a v2 bundle header.
"""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

TYPE_CODES = {"commit": 1, "tree": 2, "blob": 3, "tag": 4}
OFS_DELTA = 6
REF_DELTA = 7
GIB = 1024**3


def entry_header(type_code: int, size: int) -> bytes:
    """A pack entry's type and inflated size (4 bits, then 7 bits a byte, little-endian)."""
    out = bytearray()
    byte = (type_code << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def ofs_distance(distance: int) -> bytes:
    """git's OFS_DELTA base distance: big-endian 7-bit groups, each but the last minus one."""
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


def delta_varint(value: int) -> bytes:
    """A delta header size: 7 bits a byte, little-endian."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def copy_instruction(offset: int, size: int) -> bytes:
    """A delta 'copy from base' instruction (offset and size bytes present only when non-zero)."""
    flags, tail = 0x80, bytearray()
    for i in range(4):
        if (offset >> (8 * i)) & 0xFF:
            flags |= 1 << i
            tail.append((offset >> (8 * i)) & 0xFF)
    for i in range(3):
        if (size >> (8 * i)) & 0xFF:
            flags |= 1 << (4 + i)
            tail.append((size >> (8 * i)) & 0xFF)
    return bytes([flags]) + bytes(tail)


@dataclass(frozen=True)
class Entry:
    """One pack entry: raw bytes of its header and compressed data."""

    data: bytes


def whole_object(kind: str, content: bytes) -> Entry:
    """An undeltified entry."""
    return Entry(entry_header(TYPE_CODES[kind], len(content)) + zlib.compress(content))


def pack(entries: Sequence[Entry | tuple[str, bytes]], *, count: int | None = None) -> bytes:
    """A version 2 pack of ``entries`` with its SHA-1 trailer (``count`` overrides the header)."""
    raw = [e.data if isinstance(e, Entry) else whole_object(*e).data for e in entries]
    body = (
        b"PACK" + (2).to_bytes(4, "big") + (len(raw) if count is None else count).to_bytes(4, "big")
    )
    body += b"".join(raw)
    return body + hashlib.sha1(body).digest()  # noqa: S324 - git's pack checksum


def delta_bomb_entries(*, result_size: int = 3 * GIB // 2, base_size: int = 4096) -> list[Entry]:
    """A small blob plus an OFS_DELTA right after it whose copy instructions repeat it to ``result_size`` bytes."""
    base = whole_object("blob", b"x" * base_size)
    copies, rest = divmod(result_size, base_size)
    instructions = copy_instruction(0, base_size) * copies
    if rest:
        instructions += copy_instruction(0, rest)
    delta = delta_varint(base_size) + delta_varint(result_size) + instructions
    compressed = zlib.compress(delta, 9)
    bomb = Entry(entry_header(OFS_DELTA, len(delta)) + ofs_distance(len(base.data)) + compressed)
    return [base, bomb]


def repository_objects(git_dir: Path, env: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Every object of a repository as (type, content), commits last so bases come first."""
    out = subprocess.run(
        ["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        env=dict(env),
        check=True,
    ).stdout
    objects: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(out):
        header_end = out.index(b"\n", pos)
        _oid, kind, size = out[pos:header_end].decode().split(" ")
        start = header_end + 1
        objects.append((kind, out[start : start + int(size)]))
        pos = start + int(size) + 1
    return objects


def bundle(tip: str, packed: bytes, ref: str = "refs/heads/taskbox") -> bytes:
    """A v2 bundle: the header naming ``tip`` as ``ref``, then the pack."""
    return f"# v2 git bundle\n{tip} {ref}\n\n".encode() + packed
