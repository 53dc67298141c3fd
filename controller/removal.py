"""Remove a folder tree a sandbox wrote into: iterative, by file descriptor, never following a link.

``shutil.rmtree`` on Python 3.11 recurses once per level, so a sandbox that makes a
1,200-deep folder chain makes it raise RecursionError; any walk that keeps one open file
per level runs out of descriptors the same way. Here the depth is a list of (device,
inode) pairs, at most two descriptors are open at a time, and going back up opens ``..``
and checks it is the folder we came from, so a folder moved meanwhile stops the removal
instead of sending it elsewhere. Symbolic links are removed as links; special files are
unlinked; nothing is ever opened through a link.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path
log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    """One folder on the way down: who it is, its name in its parent, what is left below it."""

    dev: int
    ino: int
    name: str
    pending: list[str] = field(default_factory=list)


def _open_dir(name: str, dir_fd: int | None) -> int | None:
    """A descriptor of folder ``name``, or None when it is not a folder (a link is not one)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        # ELOOP: a symbolic link; ENOTDIR: a file. Either is unlinked by the caller.
        if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
            return None
        raise


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except PermissionError:
        # A folder the sandbox made read-only: make it writable (we are its owner or root), retry.
        os.chmod(dir_fd, stat.S_IRWXU)
        os.unlink(name, dir_fd=dir_fd)


def _rmdir(name: str, dir_fd: int) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(dir_fd, stat.S_IRWXU)
        os.rmdir(name, dir_fd=dir_fd)


def _scan(fd: int) -> list[str]:
    """Unlink everything in the folder that is not a folder; return the names of its folders."""
    folders: list[str] = []
    with os.scandir(fd) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        if is_dir:
            folders.append(name)
        else:
            _unlink(name, fd)
    return folders


def remove_tree(root: Path) -> None:
    """Remove ``root`` and everything below it, whatever its depth; a link at ``root`` is removed, not followed.

    Raises OSError when something cannot be removed (permissions, a read-only file system,
    a folder moved during the removal); FileNotFoundError is never raised for ``root`` itself.
    """
    try:
        fd = _open_dir(str(root), None)
    except FileNotFoundError:
        return
    if fd is None:
        with contextlib.suppress(FileNotFoundError):
            root.unlink()
        return
    try:
        info = os.fstat(fd)
        path: list[_Level] = [_Level(info.st_dev, info.st_ino, str(root), _scan(fd))]
        while True:
            level = path[-1]
            if level.pending:
                name = level.pending.pop()
                child = _open_dir(name, fd)
                if child is None:
                    _unlink(name, fd)  # swapped for a link or a file since the scan
                    continue
                os.close(fd)
                fd = child
                info = os.fstat(fd)
                path.append(_Level(info.st_dev, info.st_ino, name, _scan(fd)))
                continue
            if len(path) == 1:
                break
            # Empty: back up to the parent through '..', which must be the folder we left.
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            info = os.fstat(parent)
            os.close(fd)
            fd = parent
            path.pop()
            if (info.st_dev, info.st_ino) != (path[-1].dev, path[-1].ino):
                raise OSError(f"a folder below {root} was moved during its removal; stopped")
            _rmdir(level.name, fd)
    finally:
        os.close(fd)
    root.rmdir()
    log.debug("removed %s", root)
