"""A sandbox's output: its log as it streams (capped, a tail kept), and its files as checked bytes.

Backend-neutral. Every engine's log reader feeds a :class:`CappedLog`; any engine
whose out folder is a host folder (Docker's bind mount, the fake engine's folder)
reads its files with :func:`read_output_files`.
"""

from __future__ import annotations

import codecs
import logging
import os
import stat
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.errors import SandboxError
from controller.sandbox.backend import LOG_TAIL_BYTES, CollectedOutput

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

log = logging.getLogger(__name__)


class CappedLog:
    """A sandbox's log as it streams: forwarded to a callback up to a cap, its last 64 KiB kept.

    A backend's reader thread starts before the callback is known (output is read
    from the moment the sandbox starts, so nothing is lost and the sandbox never
    blocks on a full pipe) and calls :meth:`feed` with each chunk; what arrives
    before :meth:`set_callback` is held (within the cap) and handed over then.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._on_log: Callable[[str], None] | None = None
        self._pending: list[str] = []
        self._callback_lock = threading.Lock()
        # Incremental: a UTF-8 character split across two chunks still decodes whole.
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.forwarded = 0
        """Bytes handed to the callback (or held for it) so far."""
        self.truncated = False
        """The log went past the cap: the callback saw only the first part."""

    def set_callback(self, on_log: Callable[[str], None] | None) -> None:
        """Hand over what was held, then forward every later chunk to ``on_log``."""
        with self._callback_lock:
            self._on_log = on_log
            pending, self._pending = self._pending, []
        if on_log is not None:
            for text in pending:
                on_log(text)

    def tail(self) -> str:
        """The last 64 KiB of the whole log (past the cap too), decoded with replacement."""
        return b"".join(self._tail)[-LOG_TAIL_BYTES:].decode("utf-8", "replace")

    def feed(self, chunk: bytes) -> None:
        """One chunk of the stream, in order."""
        self._keep(chunk)
        self._forward(chunk)

    def _keep(self, chunk: bytes) -> None:
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= LOG_TAIL_BYTES:
            self._tail_size -= len(self._tail.popleft())

    def _forward(self, chunk: bytes) -> None:
        room = self._cap - self.forwarded
        if room <= 0:
            self.truncated = True
            return
        if len(chunk) > room:
            chunk = chunk[:room]
            self.truncated = True
        self.forwarded += len(chunk)
        text = self._decoder.decode(chunk)
        with self._callback_lock:
            on_log = self._on_log
            if on_log is None:
                self._pending.append(text)
        if on_log is not None and text:
            on_log(text)


@dataclass(frozen=True, slots=True)
class _Refused:
    reason: str


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def _check_regular(st: os.stat_result, cap: int) -> _Refused | None:
    if not stat.S_ISREG(st.st_mode):
        return _Refused(f"is {_kind(st.st_mode)}, not a regular file")
    if st.st_nlink != 1:
        return _Refused(f"has {st.st_nlink} hard links; only a file with one link is accepted")
    if st.st_size > cap:
        return _Refused(f"is {st.st_size} bytes, over the cap of {cap}")
    return None


def _read_one(dir_fd: int, name: str, cap: int) -> bytes | _Refused | None:  # noqa: PLR0911 - one return per refusal reads best
    """One file of the out folder: its bytes, a refusal, or None when absent."""
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    refused = _check_regular(before, cap)
    if refused is not None:
        return refused
    # O_NOFOLLOW: a link swapped in after the lstat fails with ELOOP; O_NONBLOCK: a FIFO
    # swapped in cannot block the open; the fstat below then refuses it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        return _Refused(f"cannot be opened without following links: {exc.strerror}")
    try:
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            return _Refused("was replaced while being opened")
        refused = _check_regular(after, cap)
        if refused is not None:
            return refused
        chunks: list[bytes] = []
        remaining = cap + 1  # one byte more than allowed tells a file that grew
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:
            return _Refused(f"grew past the cap of {cap} bytes while being read")
        return data
    finally:
        os.close(fd)


def read_output_files(out_dir: Path, caps: Mapping[str, int]) -> CollectedOutput:
    """Read ``caps``' files (name -> size cap) from ``out_dir`` without following any link.

    The folder is opened with ``O_DIRECTORY|O_NOFOLLOW`` and each file relative to it,
    so neither the folder nor a file can redirect the read. Only regular files with
    one link and within their cap are accepted; everything else is refused with a
    reason. Call it only after the sandbox has stopped.
    """
    for name in caps:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a plain file name")
    files: dict[str, bytes] = {}
    refused: dict[str, str] = {}
    missing: list[str] = []
    try:
        dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"cannot open the output folder {out_dir}: {exc.strerror}") from exc
    try:
        for name, cap in caps.items():
            result = _read_one(dir_fd, name, cap)
            if result is None:
                missing.append(name)
            elif isinstance(result, _Refused):
                refused[name] = result.reason
                log.warning("output file %s refused: %s", name, result.reason)
            else:
                files[name] = result
    finally:
        os.close(dir_fd)
    return CollectedOutput(files=files, refused=refused, missing=missing)
