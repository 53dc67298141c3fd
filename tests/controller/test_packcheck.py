"""The pack walk: sizes read from headers before anything is inflated, real git packs accepted."""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from typing import TYPE_CHECKING, Any

import pytest

from controller.gitrepo import SAFE_GIT_ENV
from controller.packcheck import PackLimits, PackProblem, PackRefusedError, check_pack
from tests.packforge import (
    GIB,
    REF_DELTA,
    TYPE_CODES,
    Entry,
    copy_instruction,
    delta_bomb_entries,
    delta_varint,
    entry_header,
    ofs_distance,
    pack,
    whole_object,
)

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1024 * 1024
LIMITS = PackLimits(max_object_bytes=8 * MIB, max_objects=100_000, max_total_bytes=256 * MIB)
GIT_ENV = {
    **SAFE_GIT_ENV,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(repo: Path, *args: str) -> bytes:
    """Run git in ``repo``."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, env=GIT_ENV, check=True
    ).stdout


def git_bundle_pack(tmp_path: Path, files: dict[str, list[bytes]]) -> tuple[bytes, int]:
    """(pack, object count) of a bundle git makes of one commit per version of ``files``."""
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    versions = max(len(v) for v in files.values())
    for i in range(versions):
        for name, contents in files.items():
            (repo / name).write_bytes(contents[min(i, len(contents) - 1)])
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", f"v{i}")
    git(repo, "repack", "-adq")  # deltas between versions, as a real history has
    bundle = (tmp_path / "b.bundle").resolve()
    git(repo, "bundle", "create", "-q", str(bundle), "main")
    data = bundle.read_bytes()
    count = int(git(repo, "rev-list", "--objects", "--count", "main").strip() or b"0")
    return data[data.index(b"\n\nPACK") + 2 :], count


class InflateMeter:
    """Wraps zlib.decompressobj (the pack walk's only way to inflate) and counts every byte it gives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inflated = 0
        meter = self
        original = zlib.decompressobj  # packcheck.zlib is this very module

        class Metered:
            def __init__(self) -> None:
                self._inner = original()

            def decompress(self, data: Any, max_length: int = 0) -> bytes:
                out = self._inner.decompress(data, max_length)
                meter.inflated += len(out)
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        monkeypatch.setattr(zlib, "decompressobj", Metered)


def refused(problem: PackProblem, data: bytes, limits: PackLimits = LIMITS) -> str:
    """``data`` is refused for ``problem``; the message."""
    with pytest.raises(PackRefusedError) as caught:
        check_pack(data, limits)
    assert caught.value.problem is problem, str(caught.value)
    return str(caught.value)


# --------------------------------------------------------------------------- real packs


def test_a_pack_git_made_with_deltas_is_accepted(tmp_path: Path) -> None:
    """A bundle git wrote, whose pack holds OFS_DELTA entries, passes and every object is counted."""
    big = bytes(range(256)) * 4096  # 1 MiB that deltas well against its next version
    data, count = git_bundle_pack(
        tmp_path,
        {"big.bin": [big, big[:500_000] + b"changed" + big[500_000:]], "a.txt": [b"a\n", b"b\n"]},
    )
    summary = check_pack(data, LIMITS)
    assert summary.objects == count
    assert summary.deltas >= 1
    assert summary.largest_object == len(big) + len(b"changed")


def test_the_walk_inflates_nothing_past_a_whole_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a normal pack the walk inflates exactly the entries' own data, no delta result."""
    data, _count = git_bundle_pack(tmp_path, {"x.txt": [b"x" * 100_000, b"x" * 100_001]})
    meter = InflateMeter(monkeypatch)
    summary = check_pack(data, LIMITS)
    assert 0 < meter.inflated <= summary.total_bytes


# --------------------------------------------------------------------------- bombs


def test_a_delta_bomb_is_refused_before_anything_is_inflated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 4 KiB blob and a delta that rebuilds 1.5 GiB from it: refused on the delta's header; under 64 KiB inflated."""
    bomb = pack(delta_bomb_entries(result_size=3 * GIB // 2))
    assert len(bomb) < 20_000
    meter = InflateMeter(monkeypatch)
    message = refused(PackProblem.OBJECT_TOO_LARGE, bomb)
    assert "delta rebuilds" in message
    assert str(3 * GIB // 2) in message
    assert meter.inflated < 64 * 1024


def test_a_ref_delta_bomb_is_refused() -> None:
    """The same bomb with its base named by object id (REF_DELTA) is refused the same way."""
    base = b"y" * 1024
    oid = hashlib.sha1(b"blob %d\0" % len(base) + base).digest()  # noqa: S324 - git's object id
    delta = delta_varint(len(base)) + delta_varint(GIB) + copy_instruction(0, 1024) * (GIB // 1024)
    entry = Entry(entry_header(REF_DELTA, len(delta)) + oid + zlib.compress(delta, 9))
    message = refused(PackProblem.OBJECT_TOO_LARGE, pack([("blob", base), entry]))
    assert "delta rebuilds" in message


def test_a_header_declaring_a_huge_object_is_refused_before_it_is_inflated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blob whose header says 2 GiB is refused on the header: none of its data is inflated."""
    entry = Entry(entry_header(TYPE_CODES["blob"], 2 * GIB) + zlib.compress(b"\0" * MIB))
    meter = InflateMeter(monkeypatch)
    refused(PackProblem.OBJECT_TOO_LARGE, pack([entry]))
    assert meter.inflated == 0


def test_an_object_just_over_the_file_limit_is_refused() -> None:
    """The cap is exact: one byte over the policy's file limit is refused, the limit itself passes."""
    limits = PackLimits(max_object_bytes=1000, max_objects=10, max_total_bytes=10_000)
    assert check_pack(pack([("blob", b"a" * 1000)]), limits).largest_object == 1000
    refused(PackProblem.OBJECT_TOO_LARGE, pack([("blob", b"a" * 1001)]), limits)
    small_delta = delta_bomb_entries(result_size=1001, base_size=10)
    refused(PackProblem.OBJECT_TOO_LARGE, pack(small_delta), limits)


def test_an_absurd_object_count_is_refused_before_any_entry_is_read() -> None:
    """A header claiming 4 billion objects (git would size its tables by it) is refused at once."""
    message = refused(PackProblem.TOO_MANY_OBJECTS, pack([("blob", b"x")], count=2**32 - 1))
    assert "4294967295" in message


def test_a_count_the_pack_is_too_short_to_hold_is_refused() -> None:
    """A count within the cap that the bytes cannot hold is malformed."""
    refused(PackProblem.MALFORMED, pack([("blob", b"x")], count=50_000))


def test_many_objects_over_the_total_are_refused() -> None:
    """Objects each under the limit that add up to over the total are refused as they are met."""
    limits = PackLimits(max_object_bytes=MIB, max_objects=100, max_total_bytes=3 * MIB)
    blobs = [("blob", bytes([i]) * MIB) for i in range(5)]
    refused(PackProblem.TOO_MUCH_DATA, pack(blobs), limits)


# --------------------------------------------------------------------------- malformed packs


def _corrupt_checksum(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _rechecksummed(body: bytes) -> bytes:
    return body + hashlib.sha1(body).digest()  # noqa: S324 - git's pack checksum


def _lying_size() -> bytes:
    entry = Entry(entry_header(TYPE_CODES["blob"], 3) + zlib.compress(b"four"))
    return pack([entry])


def _short_stream() -> bytes:
    entry = Entry(entry_header(TYPE_CODES["blob"], 100) + zlib.compress(b"z" * 100)[:-6])
    return pack([entry])


def _dangling_ofs_delta() -> bytes:
    delta = delta_varint(4) + delta_varint(4) + copy_instruction(0, 4)
    entry = Entry(entry_header(6, len(delta)) + ofs_distance(1000) + zlib.compress(delta))
    return pack([("blob", b"abcd"), entry])


def _wrong_base_size() -> bytes:
    base = whole_object("blob", b"abcd")
    delta = delta_varint(5) + delta_varint(4) + copy_instruction(0, 4)
    entry = Entry(entry_header(6, len(delta)) + ofs_distance(len(base.data)) + zlib.compress(delta))
    return pack([base, entry])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PACK",
        _corrupt_checksum(pack([("blob", b"x")])),
        _rechecksummed(b"PACK" + (4).to_bytes(4, "big") + (0).to_bytes(4, "big")),
        _rechecksummed(pack([("blob", b"x")])[:-20] + b"trailing"),
        _rechecksummed(
            b"PACK" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x50" + b"\0" * 9
        ),
        _lying_size(),
        _short_stream(),
        _rechecksummed(pack([("blob", b"x" * 50)])[:-20][:-5] + b"\xff" * 5),
        _dangling_ofs_delta(),
        _wrong_base_size(),
    ],
    ids=[
        "empty",
        "signature-only",
        "bad-checksum",
        "version-4",
        "trailing-bytes",
        "type-5",
        "inflates-past-header",
        "truncated-stream",
        "corrupt-zlib",
        "ofs-delta-to-nothing",
        "base-size-mismatch",
    ],
)
def test_malformed_packs_are_refused(data: bytes) -> None:
    """Anything the walk cannot read exactly as git's format says is refused as malformed."""
    refused(PackProblem.MALFORMED, data)
