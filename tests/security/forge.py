"""Forging what a compromised sandbox could hand the controller: bundles of any shape, hostile results.

A real runner makes its bundle from a scratch repository whose base commit holds
exactly the staged files; a hostile one can write any tree (names git itself
would refuse, odd modes, submodules), any history, any bundle header, from a
repository with any config and hooks. ``Forge`` does all of that with git
plumbing (trees are written with ``hash-object --literally``), so the suite can
feed each variant to ``controller.ingest.ingest``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from controller.gitrepo import MODE_EXECUTABLE, MODE_FILE, read_blobs
from controller.ingest import BUNDLE_REF, CommitIdentity, IngestedResult, ingest
from taskbox_wire.contract import commit_subject
from tests.claim_judge import claim_judge
from tests.security.conftest import GIT_ENV

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy

MODE_TREE = "40000"
MODE_SYMLINK = "120000"
MODE_GITLINK = "160000"
IDENTITY = CommitIdentity(name="Taskbox", email="taskbox@localhost")

Entries = dict[bytes, tuple[str, str]]
"""A flat tree: path bytes -> (mode, object id)."""


def subject(task_key: str, description: str = "add the endpoint") -> str:
    """A commit subject of the form ingestion accepts."""
    return f"feat(api): {description} [{task_key}]"


class Forge:
    """A bare repository of the attacker's: its objects, config and hooks are all hostile."""

    def __init__(self, root: Path, target: Path, plan: MountPlan) -> None:
        self.git_dir = root / f"forge-{secrets.token_hex(4)}.git"
        self.target = target
        self.plan = plan
        self.git("init", "-q", "--bare", str(self.git_dir), use_dir=False)
        blobs = read_blobs(target, [s.oid for s in plan.staged])
        self.base_entries: Entries = {
            s.path.encode(): (
                MODE_EXECUTABLE if s.executable else MODE_FILE,
                self.blob(blobs[s.oid]),
            )
            for s in plan.staged
        }

    def git(self, *args: str, input_bytes: bytes | None = None, use_dir: bool = True) -> bytes:
        """Run git on the forge repository (the attacker's own config applies here, not on the host)."""
        env = {**GIT_ENV, **({"GIT_DIR": str(self.git_dir)} if use_dir else {})}
        done = subprocess.run(
            ["git", *args], input=input_bytes, capture_output=True, env=env, check=False
        )
        if done.returncode != 0:
            raise AssertionError(
                f"forge: git {args[0]} failed: {done.stderr.decode(errors='replace')}"
            )
        return done.stdout

    def blob(self, data: bytes) -> str:
        """Store a blob; its id."""
        return self.git("hash-object", "-w", "--stdin", input_bytes=data).decode().strip()

    def tree(self, entries: Mapping[bytes, tuple[str, str]]) -> str:
        """Nested tree objects for flat ``entries``, written without any name or mode check."""
        leaves: list[tuple[bytes, str, str]] = []
        folders: dict[bytes, Entries] = {}
        for path, (mode, oid) in entries.items():
            head, sep, rest = path.partition(b"/")
            if sep:
                folders.setdefault(head, {})[rest] = (mode, oid)
            else:
                leaves.append((head, mode, oid))
        leaves += [(name, MODE_TREE, self.tree(sub)) for name, sub in folders.items()]
        # git's order: by name, a folder compared as if its name ended with '/'.
        leaves.sort(key=lambda leaf: leaf[0] + (b"/" if leaf[1] == MODE_TREE else b""))
        raw = b"".join(
            mode.encode() + b" " + name + b"\0" + bytes.fromhex(oid) for name, mode, oid in leaves
        )
        return (
            self.git("hash-object", "--literally", "-t", "tree", "-w", "--stdin", input_bytes=raw)
            .decode()
            .strip()
        )

    def commit(self, tree: str, *parents: str, message: str) -> str:
        """A commit object."""
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self.git(*args, input_bytes=message.encode()).decode().strip()

    def base_commit(self, extra: Mapping[bytes, tuple[str, str]] | None = None) -> str:
        """The root commit the runner would make: exactly the staged files (plus ``extra``)."""
        return self.commit(self.tree({**self.base_entries, **(extra or {})}), message="base\n")

    def work(
        self,
        files: Mapping[bytes | str, bytes | tuple[str, bytes] | None],
        *,
        message: str | None = None,
        base: str | None = None,
    ) -> str:
        """A work commit on the base: path -> content, (mode, content), or None to delete."""
        entries = dict(self.base_entries)
        for raw_path, change in files.items():
            path = raw_path.encode() if isinstance(raw_path, str) else raw_path
            if change is None:
                entries.pop(path, None)
                continue
            mode, data = change if isinstance(change, tuple) else (MODE_FILE, change)
            entries[path] = (mode, data.decode() if mode == MODE_GITLINK else self.blob(data))
        parent = base or self.base_commit()
        return self.commit(
            self.tree(entries), parent, message=(message or subject(self.plan.task_key)) + "\n"
        )

    def bundle(
        self, tip: str, *, refs: tuple[str, ...] = (BUNDLE_REF,), since: str | None = None
    ) -> bytes:
        """A bundle of ``tip`` under ``refs`` (``since``: a thin bundle with that prerequisite)."""
        for ref in refs:
            self.git("update-ref", ref, tip)
        path = self.git_dir / f"out-{secrets.token_hex(3)}.bundle"
        revs = [f"{since}..{refs[0]}", *refs[1:]] if since else list(refs)
        self.git("bundle", "create", "-q", str(path), *revs)
        return path.read_bytes()

    def hostile_config(self, marker: Path) -> None:
        """Config and hooks that run ``touch marker`` if any git on the host ever honoured them."""
        touch = f"touch {marker}"
        settings = {
            "core.fsmonitor": touch,
            "core.hooksPath": str(self.git_dir / "evil-hooks"),
            "core.pager": touch,
            "core.editor": touch,
            "core.sshCommand": touch,
            "diff.external": touch,
            "filter.evil.smudge": touch,
            "filter.evil.clean": touch,
            "filter.evil.process": touch,
            "include.path": str(self.git_dir / "included"),
            "uploadpack.packObjectsHook": touch,
        }
        for key, value in settings.items():
            self.git("config", key, value)
        (self.git_dir / "included").write_text(f"[core]\n\tfsmonitor = {touch}\n")
        for folder in (self.git_dir / "hooks", self.git_dir / "evil-hooks"):
            folder.mkdir(exist_ok=True)
            for hook in (
                "post-checkout",
                "post-merge",
                "reference-transaction",
                "pre-receive",
                "post-update",
                "fsmonitor-watchman",
            ):
                script = folder / hook
                script.write_text(f"#!/bin/sh\n{touch}\n")
                script.chmod(0o755)


def plant_target_hooks(repo: Path, marker: Path) -> None:
    """Hooks in the target repository that would show any hook run by ingestion."""
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in (
        "reference-transaction",
        "post-commit",
        "pre-commit",
        "post-checkout",
        "post-rewrite",
        "pre-auto-gc",
    ):
        script = hooks / hook
        script.write_text(f"#!/bin/sh\ntouch {marker}\n")
        script.chmod(0o755)


def runner_result(task_key: str, **overrides: Any) -> bytes:
    """A runner's result.json claiming success; ``overrides`` replace fields."""
    data: dict[str, Any] = {
        "task_key": task_key,
        "status": "succeeded",
        "files_created": ["app/api/made_up.py"],
        "files_modified": [],
        "git_commit": None,
        "summary": "Implemented the endpoint.",
        "test_results": {
            "total": 3,
            "passed": 3,
            "failed": 0,
            "skipped": 0,
            "coverage_percent": 95.0,
        },
        "missing_context": [],
        "constraints": [
            {"id": n, "name": f"constraint {n}", "passed": True, "evidence": []}
            for n in range(1, 11)
        ],
        "reason": None,
    }
    data.update(overrides)
    return json.dumps(data).encode()


def ingest_bundle(
    *,
    repo: Path,
    plan: MountPlan,
    policy: Policy,
    workspace: Path,
    result: bytes,
    bundle: bytes | None,
) -> IngestedResult:
    """``controller.ingest.ingest`` as TaskRunner calls it."""
    workspace.mkdir(parents=True, exist_ok=True)
    return ingest(
        repo=repo,
        plan=plan,
        policy=policy,
        task_key=plan.task_key,
        subject=commit_subject(plan.task_key, "Add the users endpoint", plan.owns_paths),
        result_bytes=result,
        bundle_bytes=bundle,
        workspace=workspace,
        identity=IDENTITY,
        commit_date=datetime.now(UTC).replace(microsecond=0),
        judge=claim_judge,
    )


def host_has_no_marker(marker: Path) -> bool:
    """The marker file a hostile command would create does not exist."""
    return not os.path.lexists(marker)
