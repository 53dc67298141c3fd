"""Read-only git access to a target repository on the host: resolve refs, list trees, read blobs.

Only plumbing commands are used, with system and global config ignored, so
nothing here runs a hook, a filter or a pager. Contents are read from the
object database at a commit, never from a live checkout.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controller.errors import RepositoryError

GIT_TIMEOUT_SECONDS = 60

#: The environment every host-side git call runs with: no system or user
#: config, no prompts, no pager, no optional locks on the user's repository.
SAFE_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "GIT_OPTIONAL_LOCKS": "0",
    # Replace refs would let the object database say one thing and a tree listing another.
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_ATTR_NOSYSTEM": "1",
    "LC_ALL": "C",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.devnull,
}

MODE_FILE = "100644"
MODE_EXECUTABLE = "100755"
MODE_SYMLINK = "120000"
MODE_GITLINK = "160000"


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a recursive tree listing: a blob, a symlink or a submodule."""

    mode: str
    kind: str  # "blob" or "commit" (a gitlink)
    oid: str


def run_git(
    repo: Path,
    *args: str,
    input_bytes: bytes | None = None,
    extra_env: dict[str, str] | None = None,
) -> bytes:
    """Run one git command in ``repo`` with the safe environment; raise RepositoryError on failure."""
    env = {**SAFE_GIT_ENV, **(extra_env or {})}
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            input=input_bytes,
            capture_output=True,
            env=env,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RepositoryError(f"git {args[0]} timed out in {repo}") from exc
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RepositoryError(f"git {args[0]} failed in {repo}: {message[-1] if message else ''}")
    return done.stdout


def ensure_repository(repo: Path) -> Path:
    """The repository's top folder, or a RepositoryError that says what is wrong."""
    if not repo.is_dir():
        raise RepositoryError(f"{repo} is not a folder")
    try:
        top = run_git(repo, "rev-parse", "--show-toplevel").decode().strip()
    except RepositoryError as exc:
        raise RepositoryError(f"{repo} is not a git repository") from exc
    return Path(top)


def resolve_commit(repo: Path, ref: str) -> str:
    """The full commit id that ``ref`` names; refs starting with '-' are refused."""
    if not ref or ref.startswith("-") or "\x00" in ref:
        raise RepositoryError(f"{ref!r} is not a valid git ref")
    try:
        out = run_git(repo, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    except RepositoryError as exc:
        raise RepositoryError(f"base ref {ref!r} does not name a commit in {repo}") from exc
    return out.decode().strip()


def list_tree(repo: Path, commit: str) -> dict[str, TreeEntry]:
    """Every blob, symlink and submodule at ``commit``, keyed by repository-relative path."""
    out = run_git(repo, "ls-tree", "-r", "-z", "--full-tree", commit)
    entries: dict[str, TreeEntry] = {}
    for record in out.split(b"\x00"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, kind, oid = meta.decode().split(" ")
        # Paths that are not UTF-8 are kept with surrogate escapes so they can be refused by name.
        entries[raw_path.decode("utf-8", "surrogateescape")] = TreeEntry(mode, kind, oid)
    return entries


def read_blobs(repo: Path, oids: list[str]) -> dict[str, bytes]:
    """Contents of many blobs in one ``git cat-file --batch`` call."""
    unique = list(dict.fromkeys(oids))
    if not unique:
        return {}
    out = run_git(repo, "cat-file", "--batch", input_bytes=("\n".join(unique) + "\n").encode())
    blobs: dict[str, bytes] = {}
    pos = 0
    for oid in unique:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].decode().split(" ")
        if len(header) != 3 or header[1] != "blob":  # noqa: PLR2004 - "<oid> <type> <size>"
            raise RepositoryError(f"object {oid} is not a blob")
        size = int(header[2])
        blobs[oid] = out[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1  # content is followed by a newline
    return blobs
