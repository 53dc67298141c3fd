"""Read every object size of a git pack before git sees it: nothing over a cap is ever inflated.

A pack entry's header states its type and inflated size; a delta's data starts with the
size of the object it rebuilds. A 17 KB pack can hold a small blob plus a delta whose copy
instructions repeat it into 1.5 GiB, and ``git index-pack`` allocates that much before any
later size check could run. So each header is read here first, a delta's result size from
the first bytes of its data (inflated with ``max_length``), and the pack is refused when an
object, a delta result, the object count or the total is over its cap. Walking from one
entry to the next means inflating each entry's own data, in bounded chunks that are thrown
away, and only once its declared size is known to be within the cap.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.policy.schema import Policy

PACK_SIGNATURE = b"PACK"
_MIB = 1024 * 1024
_HEADER_BYTES = 12
_TRAILER_BYTES = 20  # SHA-1 of everything before it (the only object format accepted)
_OID_BYTES = 20
#: The smallest entry: a one-byte header and the 8-byte zlib stream of nothing.
_MIN_ENTRY_BYTES = 9
#: Bounded work per step while an entry's data is skipped.
_INPUT_CHUNK = 64 * 1024
_OUTPUT_CHUNK = 256 * 1024
#: A size varint longer than this is over any cap (10 x 7 bits > 2**64).
_MAX_VARINT_BYTES = 10

_COMMIT, _TREE, _BLOB, _TAG, _OFS_DELTA, _REF_DELTA = 1, 2, 3, 4, 6, 7
_TYPE_NAMES = {
    _COMMIT: "commit",
    _TREE: "tree",
    _BLOB: "blob",
    _TAG: "tag",
    _OFS_DELTA: "delta",
    _REF_DELTA: "delta",
}


class PackProblem(StrEnum):
    """What is wrong with a pack."""

    MALFORMED = "malformed"
    OBJECT_TOO_LARGE = "object_too_large"
    TOO_MANY_OBJECTS = "too_many_objects"
    TOO_MUCH_DATA = "too_much_data"


class PackRefusedError(ValueError):
    """The pack is refused; ``problem`` says why, the message says where."""

    def __init__(self, problem: PackProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class PackLimits:
    """The caps a pack must keep to."""

    max_object_bytes: int
    """Largest inflated object, or object a delta rebuilds."""
    max_objects: int
    """Most entries the pack may declare."""
    max_total_bytes: int
    """Most bytes all entries and delta results may add up to once inflated."""


@dataclass(frozen=True, slots=True)
class PackSummary:
    """What the walk saw in a pack that kept to its limits."""

    objects: int
    deltas: int
    largest_object: int
    total_bytes: int


#: Most entries a bundle's pack may declare: a sandbox's base commit, one work commit and
#: their trees and blobs; far more than any planned set of files needs.
MAX_PACK_OBJECTS = 1_000_000
#: The inflated total a pack may reach, as a multiple of its compressed cap (source text
#: compresses 3-10 times; deltas of near-identical files more), with a floor for small caps.
PACK_INFLATION_RATIO = 32
PACK_INFLATED_FLOOR = 1024**3
#: Host git's address-space limit while it reads a sandbox's pack: room for git itself
#: (measured under 32 MiB) and its delta base cache, plus three objects at the file limit
#: (a delta's base, its data and its result) and the pack.
GIT_MEMORY_BASE = 512 * 1024 * 1024
GIT_MEMORY_OBJECTS = 3


@dataclass(frozen=True, slots=True)
class BundleCaps:
    """A policy's file limit and bundle cap, and what follows from them for packs and host git."""

    max_object_bytes: int
    """The sandbox's own file-size limit (``limits.file_size_mb``): no object may be larger."""
    max_bundle_bytes: int
    """``ingestion.max_bundle_bytes``."""

    @classmethod
    def of(cls, policy: Policy) -> BundleCaps:
        """The caps of ``policy``."""
        return cls(policy.limits.file_size_mb * _MIB, policy.ingestion.max_bundle_bytes)

    def pack_limits(self) -> PackLimits:
        """The limits :func:`check_pack` applies to this bundle's pack."""
        return PackLimits(
            max_object_bytes=self.max_object_bytes,
            max_objects=MAX_PACK_OBJECTS,
            max_total_bytes=max(PACK_INFLATED_FLOOR, PACK_INFLATION_RATIO * self.max_bundle_bytes),
        )

    def git_memory_limit(self) -> int:
        """Bytes of address space host git gets while it reads a pack that passed the walk."""
        return GIT_MEMORY_BASE + GIT_MEMORY_OBJECTS * self.max_object_bytes + self.max_bundle_bytes


def _malformed(message: str) -> PackRefusedError:
    return PackRefusedError(PackProblem.MALFORMED, message)


def _too_large(what: str, offset: int, size: int, cap: int) -> PackRefusedError:
    return PackRefusedError(
        PackProblem.OBJECT_TOO_LARGE,
        f"the {what} at pack offset {offset} is {size} bytes once inflated, over the {cap}-byte cap",
    )


class _PackWalk:
    """One pass over a pack held in memory; ``check`` either returns a summary or raises."""

    def __init__(self, pack: memoryview, limits: PackLimits) -> None:
        self._pack = pack
        self._end = len(pack) - _TRAILER_BYTES
        self._limits = limits
        #: Object size by entry offset, for OFS_DELTA bases (must point at an earlier entry).
        self._sizes: dict[int, int] = {}
        self._total = 0
        self._largest = 0
        self._deltas = 0

    def check(self) -> PackSummary:
        count = self._header()
        pos = _HEADER_BYTES
        for _ in range(count):
            pos = self._entry(pos)
        if pos != self._end:
            raise _malformed(
                f"{self._end - pos} bytes follow the {count} objects the pack header declares"
            )
        return PackSummary(count, self._deltas, self._largest, self._total)

    def _header(self) -> int:
        pack = self._pack
        if len(pack) < _HEADER_BYTES + _TRAILER_BYTES or pack[:4] != PACK_SIGNATURE:
            raise _malformed("not a git pack")
        version = int.from_bytes(pack[4:8], "big")
        if version not in (2, 3):
            raise _malformed(f"pack version {version} is not 2 or 3")
        # Checked first: git sizes its tables by the declared count before reading an entry.
        count = int.from_bytes(pack[8:12], "big")
        if count > self._limits.max_objects:
            raise PackRefusedError(
                PackProblem.TOO_MANY_OBJECTS,
                f"the pack declares {count} objects; at most {self._limits.max_objects} are accepted",
            )
        if count * _MIN_ENTRY_BYTES > self._end - _HEADER_BYTES:
            raise _malformed(f"the pack declares {count} objects but is too short to hold them")
        if hashlib.sha1(pack[: self._end]).digest() != pack[self._end :]:  # noqa: S324 - git's pack checksum, not security
            raise _malformed("the pack checksum does not match its content")
        return count

    def _entry(self, offset: int) -> int:
        kind, size, pos = self._entry_header(offset)
        cap = self._limits.max_object_bytes
        if size > cap:
            raise _too_large(_TYPE_NAMES[kind], offset, size, cap)
        if kind == _OFS_DELTA:
            base_offset, pos = self._base_offset(offset, pos)
            base_size: int | None = self._sizes[base_offset]
        elif kind == _REF_DELTA:
            pos += _OID_BYTES
            base_size = None  # named by id: its size is not known without resolving
        else:
            self._count(size, offset)
            self._sizes[offset] = size
            return self._skip_data(pos, size, offset)
        self._deltas += 1
        # The delta data itself is inflated by git too, so it counts, then what it rebuilds.
        self._count(size, offset)
        decompressor = zlib.decompressobj()
        head, pos = self._delta_sizes(decompressor, pos, size, offset)
        declared_base, result, used = head
        if result > cap:
            raise _too_large("object a delta rebuilds", offset, result, cap)
        if base_size is not None and declared_base != base_size:
            raise _malformed(
                f"the delta at pack offset {offset} expects a {declared_base}-byte base; its base has {base_size}"
            )
        self._count(result, offset)
        self._sizes[offset] = result
        return self._finish(decompressor, pos, size - used, offset)

    def _entry_header(self, offset: int) -> tuple[int, int, int]:
        """(type, inflated size, position after the header) of the entry at ``offset``."""
        pack, pos = self._pack, offset
        if pos >= self._end:
            raise _malformed(f"the pack ends before the object at offset {offset}")
        byte = pack[pos]
        kind = (byte >> 4) & 0x7
        if kind not in _TYPE_NAMES:
            raise _malformed(f"the object at pack offset {offset} has unknown type {kind}")
        size, shift = byte & 0x0F, 4
        while byte & 0x80:
            pos += 1
            if pos >= self._end or shift > 7 * _MAX_VARINT_BYTES:
                raise _malformed(f"the header of the object at pack offset {offset} is malformed")
            byte = pack[pos]
            size |= (byte & 0x7F) << shift
            shift += 7
        return kind, size, pos + 1

    def _base_offset(self, offset: int, pos: int) -> tuple[int, int]:
        """The OFS_DELTA base's entry offset (git's big-endian varint with its +1 per byte)."""
        pack = self._pack
        if pos >= self._end:
            raise _malformed(f"the delta at pack offset {offset} is truncated")
        byte = pack[pos]
        distance = byte & 0x7F
        for _ in range(_MAX_VARINT_BYTES):
            if not byte & 0x80:
                break
            pos += 1
            if pos >= self._end:
                raise _malformed(f"the delta at pack offset {offset} is truncated")
            byte = pack[pos]
            distance = ((distance + 1) << 7) | (byte & 0x7F)
        else:
            raise _malformed(f"the delta at pack offset {offset} has a malformed base offset")
        base = offset - distance
        if distance <= 0 or base not in self._sizes:
            raise _malformed(f"the delta at pack offset {offset} names no earlier object as base")
        return base, pos + 1

    def _delta_sizes(
        self, decompressor: zlib._Decompress, pos: int, size: int, offset: int
    ) -> tuple[tuple[int, int, int], int]:
        """((base size, result size, bytes used), input position) from the first bytes of a delta.

        Only 2 x 10 bytes are inflated, with ``max_length``, so a delta is judged before
        anything it holds (let alone what it rebuilds) is inflated.
        """
        wanted = min(size, 2 * _MAX_VARINT_BYTES)
        head = b""
        while len(head) < wanted:
            chunk, pos = self._feed(decompressor, pos, wanted - len(head))
            if not chunk:
                if decompressor.eof or pos >= self._end:
                    break
                continue
            head += chunk
        values: list[int] = []
        at = 0
        for _ in range(2):
            value, shift = 0, 0
            while True:
                if at >= len(head) or shift >= 7 * _MAX_VARINT_BYTES:
                    raise _malformed(f"the delta at pack offset {offset} has a malformed header")
                byte = head[at]
                at += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            values.append(value)
        # What was inflated beyond the two varints is part of the delta's instructions.
        return (values[0], values[1], len(head)), pos

    def _feed(self, decompressor: zlib._Decompress, pos: int, limit: int) -> tuple[bytes, int]:
        """Inflate at most ``limit`` bytes more; returns them and the next input position."""
        if decompressor.unconsumed_tail:
            return decompressor.decompress(decompressor.unconsumed_tail, limit), pos
        data = self._pack[pos : min(pos + _INPUT_CHUNK, self._end)]
        return decompressor.decompress(data, limit), pos + len(data)

    def _skip_data(self, pos: int, size: int, offset: int) -> int:
        return self._finish(zlib.decompressobj(), pos, size, offset)

    def _finish(self, decompressor: zlib._Decompress, pos: int, remaining: int, offset: int) -> int:
        """Inflate the rest of an entry's stream, throwing the bytes away; the entry's end."""
        try:
            while not decompressor.eof:
                if pos >= self._end and not decompressor.unconsumed_tail:
                    # Input is used up: what zlib still holds comes out with no more input.
                    chunk = decompressor.decompress(b"", _OUTPUT_CHUNK)
                    if not chunk and not decompressor.eof:
                        raise _malformed(f"the object at pack offset {offset} is truncated")
                else:
                    chunk, pos = self._feed(decompressor, pos, _OUTPUT_CHUNK)
                remaining -= len(chunk)
                if remaining < 0:
                    raise _malformed(
                        f"the object at pack offset {offset} inflates to more than its header says"
                    )
        except zlib.error as exc:
            raise _malformed(f"the object at pack offset {offset} is not valid zlib data") from exc
        if remaining:
            raise _malformed(
                f"the object at pack offset {offset} inflates to less than its header says"
            )
        return pos - len(decompressor.unused_data)

    def _count(self, size: int, offset: int) -> None:
        self._largest = max(self._largest, size)
        self._total += size
        if self._total > self._limits.max_total_bytes:
            raise PackRefusedError(
                PackProblem.TOO_MUCH_DATA,
                f"the objects up to pack offset {offset} inflate to over "
                f"{self._limits.max_total_bytes} bytes in all",
            )


def check_pack(pack: bytes | memoryview, limits: PackLimits) -> PackSummary:
    """Walk a whole pack (``PACK`` to its trailing checksum); raise PackRefusedError if it breaks a limit.

    Refused: a pack that is not version 2 or 3, declares more objects than
    ``limits.max_objects`` (or than its length can hold), holds an object or a delta
    result over ``limits.max_object_bytes``, inflates to over ``limits.max_total_bytes``
    in all, or is malformed in any way this walk can see (bad checksum, truncated or
    overlong data, a delta base that is not an earlier entry, bytes after the last entry).
    """
    view = memoryview(pack)
    try:
        return _PackWalk(view, limits).check()
    except zlib.error as exc:
        raise _malformed(f"the pack holds invalid zlib data: {exc}") from exc
