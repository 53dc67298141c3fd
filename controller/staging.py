"""Staging: a fresh folder per run, filled from the base commit with exactly the planned files.

Files are read from git's object database (never a live checkout), written
with ``O_NOFOLLOW|O_EXCL`` into folders this process just made, and the
writable parts are handed to the sandbox uid.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from controller.errors import SandboxError
from controller.gitrepo import read_blobs
from controller.sandbox.spec import StagingPaths

if TYPE_CHECKING:
    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy

log = logging.getLogger(__name__)


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _hand_over(path: Path, uid: int, gid: int) -> None:
    """Make ``path`` and everything below it belong to the sandbox user (no link is followed)."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for parent, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(Path(parent, name), uid, gid, follow_symlinks=False)


def stage_run(
    *, repo: Path, plan: MountPlan, policy: Policy, root: Path, run_config_json: str
) -> StagingPaths:
    """Create ``root`` and fill it for one run; raises SandboxError if it already exists."""
    paths = StagingPaths.under(root)
    try:
        root.mkdir(parents=True, exist_ok=False, mode=0o755)
    except FileExistsError as exc:
        raise SandboxError(f"staging folder {root} already exists") from exc
    for folder in (paths.work, paths.out, paths.taskbox, paths.gateway):
        folder.mkdir(mode=0o755)

    blobs = read_blobs(repo, [f.oid for f in plan.staged])
    for staged in plan.staged:
        mode = 0o755 if staged.executable else 0o644
        _write_new_file(paths.work / staged.path, blobs[staged.oid], mode)

    # Owned paths that do not exist yet get an empty placeholder, since a bind
    # mount needs a source; the runner leaves placeholders out of its base commit.
    for entry in plan.read_write:
        target = paths.work / entry.path
        if entry.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            _write_new_file(target, b"", 0o644)
        _hand_over(target, policy.uid, policy.gid)
    _hand_over(paths.out, policy.uid, policy.gid)

    # run.json carries the per-run gateway token: readable by the sandbox user only.
    run_json = paths.taskbox / "run.json"
    _write_new_file(run_json, run_config_json.encode(), 0o400)
    os.chown(run_json, policy.uid, policy.gid, follow_symlinks=False)
    log.debug("staged %d files for %s in %s", len(plan.staged), plan.task_key, root)
    return paths


def remove_staging(root: Path) -> None:
    """Remove a run's staging folder; links inside are removed, never followed."""
    if root.exists():
        shutil.rmtree(root)
