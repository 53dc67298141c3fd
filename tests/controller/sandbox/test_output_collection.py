"""Reading result files from a hostile out folder: no link, special file or huge file gets through."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from controller.errors import SandboxError
from controller.sandbox.output import read_output_files

CAPS = {"result.json": 100, "result.bundle": 1000}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_regular_files_within_their_caps_are_read(out: Path) -> None:
    """Regular files with one link are returned as bytes; an absent one is listed as missing."""
    (out / "result.json").write_bytes(b"x" * 100)
    collected = read_output_files(out, CAPS)
    assert collected.files == {"result.json": b"x" * 100}
    assert collected.missing == ["result.bundle"]
    assert collected.refused == {}


def test_symlink_to_a_host_file_is_refused(out: Path, tmp_path: Path) -> None:
    """A symlink is refused by name, and the host file it points at is never read."""
    secret = tmp_path / "host-secret"
    secret.write_text("do not read")
    (out / "result.json").symlink_to(secret)
    collected = read_output_files(out, CAPS)
    assert "result.json" not in collected.files
    assert "symbolic link" in collected.refused["result.json"]


def test_dangling_symlink_is_refused(out: Path) -> None:
    """A symlink to nowhere is refused, not reported missing."""
    (out / "result.bundle").symlink_to("/nonexistent/target")
    assert "symbolic link" in read_output_files(out, CAPS).refused["result.bundle"]


def test_hard_link_is_refused(out: Path, tmp_path: Path) -> None:
    """A file with a second link (which could be a host file) is refused."""
    other = out / "other"
    other.write_text("{}")
    os.link(other, out / "result.json")
    assert "hard links" in read_output_files(out, CAPS).refused["result.json"]


def test_fifo_is_refused_without_hanging(out: Path) -> None:
    """A FIFO named like a result is refused at once; nothing blocks on a missing writer."""
    os.mkfifo(out / "result.json")
    assert "FIFO" in read_output_files(out, CAPS).refused["result.json"]


def test_socket_is_refused(out: Path) -> None:
    """A Unix socket named like a result is refused."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(out / "result.json"))
        assert "socket" in read_output_files(out, CAPS).refused["result.json"]


def test_directory_is_refused(out: Path) -> None:
    """A directory named like a result is refused."""
    (out / "result.bundle").mkdir()
    assert "directory" in read_output_files(out, CAPS).refused["result.bundle"]


def test_oversized_file_is_refused(out: Path) -> None:
    """A file one byte over its cap is refused."""
    (out / "result.json").write_bytes(b"x" * 101)
    assert "over the cap" in read_output_files(out, CAPS).refused["result.json"]


def test_sparse_huge_file_is_refused_without_reading_it(out: Path) -> None:
    """A sparse 64 GiB file is refused from its size alone; collection returns at once."""
    with (out / "result.bundle").open("wb") as handle:
        handle.truncate(64 * 1024**3)
    collected = read_output_files(out, CAPS)
    assert "over the cap" in collected.refused["result.bundle"]
    assert collected.files == {}


def test_out_folder_that_is_a_symlink_is_refused(tmp_path: Path, out: Path) -> None:
    """The folder itself is opened with O_NOFOLLOW: a symlinked out folder is an error."""
    (out / "result.json").write_text("{}")
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(SandboxError, match="output folder"):
        read_output_files(link, CAPS)


def test_names_with_a_path_are_rejected(out: Path) -> None:
    """Only plain names may be asked for; a path is a programming error."""
    with pytest.raises(ValueError, match="plain file name"):
        read_output_files(out, {"../result.json": 10})
