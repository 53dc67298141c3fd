"""The scratch git dir in /tmp: a base commit of exactly the staged files, the work on top, a bundle.

The sandbox never sees the repository's history, so the runner builds its own:
the base commit holds exactly ``RunConfig.base_files`` (each blob id checked),
the work commit adds the files the model wrote under ``owns_paths``, and the
bundle carries both to the controller, which rebuilds the base tree itself and
re-commits the work on the real base commit.

Git runs with no system or global config, no hooks (empty template), no
filters (``--no-filters``), and a fixed identity and date: the same model
output then gives the same commit ids, so a replayed run can be compared
commit for commit with its recording.

What the controller receives in ``/out/result.bundle`` (only when the work
changed something; otherwise no bundle and ``git_commit`` is null):

- a v2 bundle with no prerequisites and exactly one ref, ``refs/heads/taskbox``;
- that ref is the work commit (``result.json``'s ``git_commit``), whose only
  parent is the scratch base commit, which has no parent;
- the base tree is exactly ``base_files`` (modes from ``base_modes``, else
  100644); the work tree differs from it only in regular files under
  ``owns_paths`` (new files 100644, changed files keep their base mode);
- both commits are by ``Taskbox Runner <runner@taskbox.invalid>`` at
  946684800 +0000; the work commit's message is one line,
  ``feat(<scope>): <description> [<taskKey>]``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from taskbox_runner.tools import is_junk_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class ScratchGitError(RuntimeError):
    """Git in the scratch repository failed, or was asked for something the plan forbids."""


logger = logging.getLogger(__name__)

#: The only ref in the bundle; it points at the work commit.
BUNDLE_REF = "refs/heads/taskbox"
GIT_NAME = "Taskbox Runner"
GIT_EMAIL = "runner@taskbox.invalid"
#: 2000-01-01T00:00:00Z in git's raw form: a constant, so commit ids depend only on content.
GIT_DATE = "946684800 +0000"
ALLOWED_MODES = frozenset({"100644", "100755"})
DEFAULT_MODE = "100644"

#: Base files copied for the verifier, so checks use the repository's settings as they
#: were, not as the model may have edited them (matched on the file name, at any depth).
BASE_CONFIG_PATTERNS = (
    "pyproject.toml",
    "ruff.toml",
    ".ruff.toml",
    "setup.cfg",
    "pytest.ini",
    "tox.ini",
    ".coveragerc",
    "requirements*.txt",
)

_GIT_TIMEOUT_SECONDS = 120
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class WorkCommit:
    """The work commit and what it changed relative to the base commit."""

    sha: str
    files_created: list[str]
    files_modified: list[str]


def _check_rel_path(rel: str) -> None:
    pure = PurePosixPath(rel)
    if (
        not rel
        or pure.is_absolute()
        or ".." in pure.parts
        or rel != pure.as_posix()
        or _UNSAFE_PATH.search(rel)
    ):
        raise ScratchGitError(f"refusing path {rel!r}: not a plain repository-relative path")


def _is_plain_file(workdir: Path, rel: str) -> bool:
    """True when every component is a real directory and the last a regular file (no symlinks)."""
    current = workdir
    parts = rel.split("/")
    for index, part in enumerate(parts):
        current /= part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return False
        last = index == len(parts) - 1
        if (last and not stat.S_ISREG(info.st_mode)) or (
            not last and not stat.S_ISDIR(info.st_mode)
        ):
            return False
    return True


class ScratchRepo:
    """A bare git dir outside the work tree, driven only with plumbing commands."""

    def __init__(self, git_dir: Path, workdir: Path) -> None:
        self.git_dir = git_dir
        self.workdir = workdir
        self.index_file = git_dir / "taskbox.index"
        self.base_commit: str | None = None
        self.base_tree: str | None = None
        self.work_commit: str | None = None

    @classmethod
    def init(cls, git_dir: Path, workdir: Path) -> ScratchRepo:
        """Make an empty bare repository at ``git_dir`` (never inside ``workdir``)."""
        resolved_dir, resolved_work = git_dir.resolve(), workdir.resolve()
        if resolved_dir == resolved_work or resolved_dir.is_relative_to(resolved_work):
            raise ScratchGitError("the scratch git dir must live outside the work tree")
        repo = cls(git_dir, workdir)
        # --template= leaves out sample hooks and info files: nothing in it can run.
        repo._run(["init", "--bare", "--quiet", "--template=", str(git_dir)], with_repo=False)
        return repo

    # ------------------------------------------------------------------ plumbing

    def _env(self, *, with_repo: bool) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.git_dir.parent),
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ATTR_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_AUTHOR_NAME": GIT_NAME,
            "GIT_AUTHOR_EMAIL": GIT_EMAIL,
            "GIT_AUTHOR_DATE": GIT_DATE,
            "GIT_COMMITTER_NAME": GIT_NAME,
            "GIT_COMMITTER_EMAIL": GIT_EMAIL,
            "GIT_COMMITTER_DATE": GIT_DATE,
        }
        if with_repo:
            env |= {
                "GIT_DIR": str(self.git_dir),
                "GIT_WORK_TREE": str(self.workdir),
                "GIT_INDEX_FILE": str(self.index_file),
            }
        return env

    def _run(self, args: list[str], *, stdin: bytes | None = None, with_repo: bool = True) -> bytes:
        try:
            done = subprocess.run(
                ["git", *args],
                input=stdin,
                capture_output=True,
                cwd=self.workdir,
                env=self._env(with_repo=with_repo),
                timeout=_GIT_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScratchGitError(f"git {args[0]} could not run: {exc}") from exc
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip()[:500]
            raise ScratchGitError(f"git {args[0]} failed ({done.returncode}): {detail}")
        return done.stdout

    def _text(self, args: list[str], stdin: bytes | None = None) -> str:
        return self._run(args, stdin=stdin).decode("utf-8", "replace").strip()

    def _hash_files(self, paths: list[str]) -> list[str]:
        """Write each file as a blob, byte for byte (no filters, no attributes); their ids in order."""
        if not paths:
            return []
        out = self._text(
            ["hash-object", "-w", "--no-filters", "--stdin-paths"],
            stdin="".join(f"{p}\n" for p in paths).encode(),
        )
        ids = out.split("\n")
        if len(ids) != len(paths):
            raise ScratchGitError("git hash-object returned an unexpected number of ids")
        return ids

    def _write_tree_and_commit(
        self, entries: Mapping[str, tuple[str, str]], message: str, parent: str | None
    ) -> tuple[str, str]:
        """Put ``entries`` (path → mode, blob id) in the index over its current content; commit it."""
        if entries:
            lines = "".join(
                f"{mode} {blob}\t{path}\0" for path, (mode, blob) in sorted(entries.items())
            )
            self._run(["update-index", "-z", "--add", "--index-info"], stdin=lines.encode())
        tree = self._text(["write-tree"])
        args = ["commit-tree", tree, "-m", message]
        if parent is not None:
            args += ["-p", parent]
        commit = self._text(args)
        return tree, commit

    # ------------------------------------------------------------------ commits

    def commit_base(
        self, base_files: Mapping[str, str], base_modes: Mapping[str, str], *, task_key: str
    ) -> str:
        """Commit exactly ``base_files``, checking each blob id against the file in the work tree."""
        paths = sorted(base_files)
        problems: list[str] = []
        for rel in paths:
            _check_rel_path(rel)
            if not _is_plain_file(self.workdir, rel):
                problems.append(f"{rel}: missing, or not a regular file")
        for rel, mode in base_modes.items():
            if rel not in base_files or mode not in ALLOWED_MODES:
                problems.append(f"{rel}: mode {mode!r} is not allowed or not for a base file")
        if not problems:
            for rel, blob in zip(paths, self._hash_files(paths), strict=True):
                if blob != base_files[rel]:
                    problems.append(
                        f"{rel}: blob {blob} differs from the planned {base_files[rel]}"
                    )
        if problems:
            shown = "; ".join(problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""  # noqa: PLR2004
            raise ScratchGitError(f"the staged files do not match the plan: {shown}{more}")
        self.index_file.unlink(missing_ok=True)
        entries = {rel: (base_modes.get(rel, DEFAULT_MODE), base_files[rel]) for rel in paths}
        tree, commit = self._write_tree_and_commit(
            entries, f"base: staged files [{task_key}]", None
        )
        self._run(["update-ref", BUNDLE_REF, commit])
        self.base_tree, self.base_commit = tree, commit
        logger.info("scratch base commit %s holds %d files", commit, len(paths))
        return commit

    def commit_work(self, paths: Iterable[str], *, message: str) -> WorkCommit | None:
        """Commit ``paths`` (as they are now in the work tree) on top of the base; None when nothing changed.

        The caller passes only owned paths; cache artefacts, vanished files and
        anything that is not a regular file are left out here too.
        """
        if self.base_commit is None or self.base_tree is None:
            raise ScratchGitError("commit_base must run before commit_work")
        kept: list[str] = []
        for rel in sorted(set(paths)):
            _check_rel_path(rel)
            if is_junk_path(rel):
                continue
            if not _is_plain_file(self.workdir, rel):
                logger.warning("not committing %s: it is gone or not a regular file", rel)
                continue
            kept.append(rel)
        base_modes = self._tree_modes(self.base_commit)
        self._run(["read-tree", self.base_commit])
        entries = {
            rel: (base_modes.get(rel, DEFAULT_MODE), blob)
            for rel, blob in zip(kept, self._hash_files(kept), strict=True)
        }
        tree, commit = self._write_tree_and_commit(entries, message, self.base_commit)
        if tree == self.base_tree:
            logger.info("the work changes nothing against the base; no work commit")
            return None
        self._run(["update-ref", BUNDLE_REF, commit])
        self.work_commit = commit
        created, modified = self.changed_paths(self.base_commit, commit)
        logger.info(
            "scratch work commit %s: %d created, %d modified", commit, len(created), len(modified)
        )
        return WorkCommit(sha=commit, files_created=created, files_modified=modified)

    def _tree_modes(self, commit: str) -> dict[str, str]:
        modes: dict[str, str] = {}
        for record in self._run(["ls-tree", "-r", "-z", "--full-tree", commit]).split(b"\0"):
            if record:
                meta, _, path = record.partition(b"\t")
                modes[path.decode("utf-8", "surrogateescape")] = meta.split(b" ")[0].decode()
        return modes

    def changed_paths(self, old: str, new: str) -> tuple[list[str], list[str]]:
        """(created, modified) between two commits, from ``git diff-tree`` without rename detection."""
        out = self._run(["diff-tree", "-r", "-z", "--no-renames", "--name-status", old, new])
        fields = [f.decode("utf-8", "surrogateescape") for f in out.split(b"\0") if f]
        created: list[str] = []
        modified: list[str] = []
        for status, path in zip(fields[::2], fields[1::2], strict=True):
            if status == "A":
                created.append(path)
            elif status in ("M", "T"):
                modified.append(path)
        return sorted(created), sorted(modified)

    # ------------------------------------------------------------------ outputs

    def write_bundle(self, dest: Path) -> None:
        """A self-contained bundle (no prerequisites) with the single ref ``refs/heads/taskbox``."""
        if self.work_commit is None:
            raise ScratchGitError("there is no work commit to bundle")
        dest.unlink(missing_ok=True)
        self._run(["bundle", "create", "--quiet", str(dest), BUNDLE_REF])
        self._run(["bundle", "verify", "--quiet", str(dest)])
        logger.info("wrote %s (%d bytes)", dest, dest.stat().st_size)

    def export_base_configs(self, dest: Path) -> list[str]:
        """Copy the base commit's configuration files (``BASE_CONFIG_PATTERNS``) under ``dest``."""
        if self.base_commit is None:
            raise ScratchGitError("commit_base must run before export_base_configs")
        copied: list[str] = []
        for record in self._run(["ls-tree", "-r", "-z", "--full-tree", self.base_commit]).split(
            b"\0"
        ):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            rel = raw_path.decode("utf-8", "surrogateescape")
            name = rel.rsplit("/", 1)[-1]
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in BASE_CONFIG_PATTERNS):
                continue
            blob = meta.split(b" ")[2].decode()
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._run(["cat-file", "blob", blob]))
            copied.append(rel)
        dest.mkdir(parents=True, exist_ok=True)
        return copied
