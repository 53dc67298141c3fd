"""Staging: a fresh folder per run, filled from the base commit with exactly the planned files.

Files are read from git's object database (never a live checkout), written
with ``O_NOFOLLOW|O_EXCL`` into folders this process just made, and the
writable parts are handed to the sandbox uid (for Docker; a Pod's init container
unpacks them as that uid itself).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from controller.errors import SandboxError
from controller.gitrepo import read_blobs
from controller.removal import remove_tree
from controller.sandbox.spec import StagingPaths
from taskbox_wire.paths import BASE_DIR, F2P_DIR, JUDGE_KEY_FILE

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


def _hand_over_writable(
    paths: StagingPaths, plan: MountPlan, policy: Policy, *, hand_over: bool
) -> None:
    """Give the owned paths and the out folder to the sandbox uid (when ``hand_over``).

    Owned paths that do not exist yet get an empty placeholder, since a bind mount needs
    a source; the runner leaves placeholders out of its base commit. Without
    ``hand_over`` the files stay the controller's: the engine's own side makes them
    the sandbox uid's (a Pod's init container unpacks them as that uid).
    """
    for entry in plan.read_write:
        target = paths.work / entry.path
        if entry.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            _write_new_file(target, b"", 0o644)
        if hand_over:
            _hand_over(target, policy.uid, policy.gid)
    if hand_over:
        _hand_over(paths.out, policy.uid, policy.gid)


def _write_secret(path: Path, data: bytes, policy: Policy, *, hand_over: bool) -> None:
    """A file only its owner may read: the sandbox uid when ``hand_over``, else (for now) the controller."""
    _write_new_file(path, data, 0o400)
    if hand_over:
        os.chown(path, policy.uid, policy.gid, follow_symlinks=False)


def stage_run(
    *,
    repo: Path,
    plan: MountPlan,
    policy: Policy,
    root: Path,
    run_config_json: str,
    gateway: bool = True,
    hand_over: bool = True,
) -> StagingPaths:
    """Create ``root`` and fill it for one run; raises SandboxError if it already exists.

    ``gateway`` False stages no gateway folder (the sandbox dials its gateway over TCP);
    ``hand_over`` False leaves every file the controller's (no ``chown``, so no root
    needed), for an engine whose own side gives them to the sandbox uid
    (``controller.sandbox.engines.SandboxWiring``).
    """
    paths = StagingPaths.under(root)
    if not gateway:
        paths = paths.model_copy(update={"gateway": None})
    try:
        root.mkdir(parents=True, exist_ok=False, mode=0o755)
    except FileExistsError as exc:
        raise SandboxError(f"staging folder {root} already exists") from exc
    for folder in (paths.work, paths.out, paths.taskbox):
        folder.mkdir(mode=0o755)
    if paths.gateway is not None:
        paths.gateway.mkdir(mode=0o755)

    blobs = read_blobs(repo, [f.oid for f in plan.staged])
    for staged in plan.staged:
        mode = 0o755 if staged.executable else 0o644
        _write_new_file(paths.work / staged.path, blobs[staged.oid], mode)

    _hand_over_writable(paths, plan, policy, hand_over=hand_over)

    # run.json carries the per-run gateway token: readable by the sandbox user only.
    _write_secret(paths.taskbox / "run.json", run_config_json.encode(), policy, hand_over=hand_over)
    log.debug("staged %d files for %s in %s", len(plan.staged), plan.task_key, root)
    return paths


def remove_staging(root: Path) -> bool:
    """Remove a run's staging folder; True when it is gone. Never raises for what the sandbox made.

    The removal is iterative and by file descriptor (``controller.removal``): no depth of
    folders can make it fail, and links inside are removed, never followed. Anything else
    that stops it (permissions, a read-only file system) is logged and False returned, so
    a caller that cleans up after a run never loses the run's record or result to it.
    """
    try:
        remove_tree(root)
    except OSError as exc:
        log.warning("could not remove the staging folder %s: %s", root, exc)
        return False
    return True


#: A staged tree: repository-relative path -> (blob id, executable).
Tree = dict[str, tuple[str, bool]]


def _write_tree(repo: Path, folder: Path, tree: Tree) -> None:
    """Fill a fresh ``folder`` with ``tree``'s files, read from ``repo``'s objects."""
    folder.mkdir(mode=0o755)
    blobs = read_blobs(repo, [oid for oid, _ in tree.values()])
    for path, (oid, executable) in sorted(tree.items()):
        _write_new_file(folder / path, blobs[oid], 0o755 if executable else 0o644)


def stage_judge(
    *,
    repo: Path,
    plan: MountPlan,
    policy: Policy,
    root: Path,
    candidate: Tree,
    fail_to_pass: Tree,
    judge_config_json: str,
    judge_key: bytes,
    hand_over: bool = True,
) -> StagingPaths:
    """Stage the judge's sandbox from objects the controller holds; raises SandboxError if ``root`` exists.

    ``work/`` is the candidate tree (the planned base files with the checked change
    applied), its owned paths handed to the sandbox uid as in a run; ``base/`` is the
    planned base tree as it was, and ``f2p/`` the base with the change's test files
    laid over it (both mounted read-only). There is no gateway folder: the judge has
    no model. Nothing is ever read from the agent's staging folder. ``out/judge.key``
    holds ``judge_key`` (hex), readable by the sandbox user only: the judge reads and
    removes it before any model code runs, and seals its static report with it.
    ``hand_over`` as for :func:`stage_run`.
    """
    paths = StagingPaths.under(root).model_copy(
        update={
            "gateway": None,
            "extra_read_only": {BASE_DIR: root / "base", F2P_DIR: root / "f2p"},
        }
    )
    try:
        root.mkdir(parents=True, exist_ok=False, mode=0o755)
    except FileExistsError as exc:
        raise SandboxError(f"staging folder {root} already exists") from exc
    base: Tree = {s.path: (s.oid, s.executable) for s in plan.staged}
    _write_tree(repo, paths.work, candidate)
    _write_tree(repo, root / "base", base)
    _write_tree(repo, root / "f2p", fail_to_pass)
    for folder in (paths.out, paths.taskbox):
        folder.mkdir(mode=0o755)
    _hand_over_writable(paths, plan, policy, hand_over=hand_over)
    _write_secret(paths.out / JUDGE_KEY_FILE, judge_key.hex().encode(), policy, hand_over=hand_over)
    # No secret in the judge's config: world-readable, owned by the controller.
    _write_new_file(paths.taskbox / "judge.json", judge_config_json.encode(), 0o444)
    return paths
