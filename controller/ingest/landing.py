"""Landing a candidate: its commit written with plumbing on the real base, then its branch.

The commit's message is the subject the controller built from the task; its tree is the
checked one, re-read after writing. A branch that exists is never moved.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from controller.gitrepo import (
    list_tree,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from controller.ingest.bundle import CheckedWork
    from controller.ingest.git import TargetRepo
    from controller.ingest.paths import Change
from controller.ingest.refusals import UNSAFE_TEXT_CHARS, IngestRefusal, refuse

log = logging.getLogger(__name__)


class CommitIdentity(BaseModel):
    """Author and committer of the commits Taskbox writes in the target repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[^<>\x00-\x1f\x7f]{1,100}$")]
    email: Annotated[str, StringConstraints(pattern=r"^[^<>\s\x00-\x1f\x7f]{1,254}$")]


#: Branches the controller writes in the target repository: ``taskbox/<taskKey>``.
BRANCH_PREFIX = "taskbox/"


#: The only commit type of the seed's message form ``feat(<scope>): <description> [<taskKey>]``.
COMMIT_TYPE = "feat"


ZERO_OID = "0" * 40


MAX_SUBJECT_DESCRIPTION = 200


def git_date_of(when: datetime) -> str:
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("commit_date must carry a time zone")
    minutes = int(offset / timedelta(minutes=1))
    sign = "-" if minutes < 0 else "+"
    return f"@{int(when.timestamp())} {sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def index_lines(changes: Sequence[Change]) -> bytes:
    lines = [
        (f"{c.new_mode} {c.new_oid}\t" if c.adds_content else f"0 {ZERO_OID}\t").encode()
        + c.path.encode()
        + b"\0"
        # Removals first, so a file replaced by a folder of the same name frees its place.
        for c in sorted(changes, key=lambda c: c.adds_content)
    ]
    return b"".join(lines)


def write_commit(
    target: TargetRepo,
    folder: Path,
    work: CheckedWork,
    *,
    base_commit: str,
    subject: str,
    identity: CommitIdentity,
    git_date: str,
) -> str:
    """Copy the new blobs, build the tree on the real base with a temporary index, commit.

    The commit is written into the target's object database only: no ref names it
    until :func:`set_branch`, so a candidate the judge fails is on no branch.
    """
    blobs = sorted({c.new_oid for c in work.changes if c.adds_content})
    if blobs:
        # Only the changed blobs travel, and the target re-hashes and checks each one.
        pack = work.ingest.git(
            "pack-objects", "--stdout", "-q", input_bytes="\n".join(blobs).encode() + b"\n"
        )
        target.git("unpack-objects", "-q", "--strict", input_bytes=pack)
    index_env = {"GIT_INDEX_FILE": str(folder / "final.index")}
    target.git("read-tree", base_commit, extra_env=index_env)
    target.git(
        "update-index",
        "--add",
        "-z",
        "--index-info",
        input_bytes=index_lines(work.changes),
        extra_env=index_env,
    )
    tree = target.git("write-tree", extra_env=index_env).decode().strip()
    if list_tree(target.path, tree) != work.final_tree:
        raise refuse(IngestRefusal.TARGET, "the written tree is not the checked one")
    identity_env = {
        "GIT_AUTHOR_NAME": identity.name,
        "GIT_AUTHOR_EMAIL": identity.email,
        "GIT_AUTHOR_DATE": git_date,
        "GIT_COMMITTER_NAME": identity.name,
        "GIT_COMMITTER_EMAIL": identity.email,
        "GIT_COMMITTER_DATE": git_date,
    }
    out = target.git(
        "commit-tree",
        tree,
        "-p",
        base_commit,
        "--no-gpg-sign",
        "-F",
        "-",
        input_bytes=f"{checked_host_subject(subject)}\n".encode(),
        extra_env=identity_env,
    )
    return out.decode().strip()


def checked_host_subject(subject: str) -> str:
    """The subject the controller built: one line, no control character (a caller's bug otherwise)."""
    if not subject or "\n" in subject or re.search(f"[{UNSAFE_TEXT_CHARS}]", subject):
        raise ValueError(f"commit subject {subject!r} is not one clean line")
    return subject


def set_branch(target: TargetRepo, task_key: str, commit: str) -> str:
    """Create ``taskbox/<key>``; an existing branch is accepted only if it already is ``commit``."""
    branch = BRANCH_PREFIX + task_key
    ref = f"refs/heads/{branch}"
    current = target.run("rev-parse", "--verify", "--quiet", "--end-of-options", ref)
    if current.returncode == 0:
        existing = current.stdout.decode().strip()
        if existing == commit:
            log.info("branch %s already holds %s (a replay); left as it is", branch, commit)
            return branch
        raise refuse(
            IngestRefusal.BRANCH_EXISTS,
            f"branch {branch} already exists at {existing[:12]}; remove it or use another task key",
        )
    # The zero old value makes git refuse if the branch appeared since the check above.
    target.git(
        "update-ref", "--no-deref", "-m", f"taskbox: ingest {task_key}", ref, commit, ZERO_OID
    )
    return branch
