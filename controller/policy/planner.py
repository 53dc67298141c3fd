"""The mount planner: task + base tree + policy -> MountPlan. Pure: no I/O.

Read-only: the relevant files and the contract. Read-write: ``ownsPaths``.
Refused: anything absolute, with ``..``, behind a symlink or a submodule,
denied by a rule (also in the form Windows and macOS give a name: ``SECRETS./``
is ``secrets/`` there), or absent at the base commit, each with its reason; an
owned path also when other systems could not check it out under its name
(``controller.pathnames``). A refused relevant file becomes missing context; a
refused owned path makes the task invalid. Deny beats allow everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

import pathspec
from pydantic import BaseModel, ConfigDict, Field

from controller.gitrepo import MODE_EXECUTABLE, MODE_GITLINK, MODE_SYMLINK, TreeEntry
from controller.pathnames import fold, path_key, unportable_path_reason

if TYPE_CHECKING:
    from collections.abc import Mapping

    from controller.policy.schema import Policy
    from taskbox_wire.contract import Task

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255


class RefusalReason(StrEnum):
    """Why a path is not mounted."""

    ABSOLUTE = "absolute"
    OUTSIDE = "outside_repository"
    TRAVERSAL = "traversal"
    INVALID = "invalid_path"
    SYMLINK = "symlink"
    SUBMODULE = "submodule"
    DENIED = "denied"
    ABSENT = "absent"
    CONFLICT = "conflict"


class Role(StrEnum):
    """Why a path is in the plan."""

    RELEVANT = "relevant"
    CONTRACT = "contract"
    OWNS = "owns"
    EXCLUDED = "excluded"  # a file inside a planned directory that is left out


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MountEntry(_Plan):
    """One mount of the plan, relative to the repository root (``/work`` inside)."""

    path: str
    kind: Literal["file", "dir"]
    role: Role
    exists_at_base: bool


class StagedFile(_Plan):
    """A file copied into the staging folder from the base commit."""

    path: str
    oid: str
    executable: bool = False


class Refusal(_Plan):
    """A path that is not mounted, and why."""

    path: str
    role: Role
    reason: RefusalReason
    detail: str


class MountPlan(_Plan):
    """What one task's sandbox sees and may change; plain data, printed by ``policy explain``."""

    task_key: str
    base_commit: str
    policy: str
    policy_digest: str
    read_only: list[MountEntry] = Field(default_factory=list)
    read_write: list[MountEntry] = Field(default_factory=list)
    refused: list[Refusal] = Field(default_factory=list)
    staged: list[StagedFile] = Field(default_factory=list)
    contract: str | None = None
    """The planned contract file (read-only, or inside an owned path)."""

    @property
    def invalid_reasons(self) -> list[str]:
        """Refusals of owned paths: any one makes the task invalid."""
        return [f"{r.path}: {r.detail}" for r in self.refused if r.role is Role.OWNS]

    @property
    def missing_context(self) -> list[str]:
        """Refused relevant or contract files, in the result's ``missing_context`` form."""
        return [
            f"{r.path} — {r.detail}"
            for r in self.refused
            if r.role in (Role.RELEVANT, Role.CONTRACT)
        ]

    @property
    def owns_paths(self) -> list[str]:
        """Planned writable paths; directories end with '/'."""
        return [e.path + ("/" if e.kind == "dir" else "") for e in self.read_write]


@dataclass(frozen=True, slots=True)
class _Normalised:
    path: str
    is_dir_hint: bool


def _normalise(raw: str) -> _Normalised | tuple[RefusalReason, str]:  # noqa: PLR0911 - one return per refusal reads best
    """Check a caller's path string; return the clean form or the refusal."""
    if "\x00" in raw or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):  # noqa: PLR2004
        return RefusalReason.INVALID, "contains a control character"
    if "\\" in raw:
        return RefusalReason.INVALID, "contains a backslash"
    if raw.startswith(("/", "~")):
        return RefusalReason.ABSOLUTE, "is absolute; paths are relative to the repository root"
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return RefusalReason.INVALID, f"is longer than {MAX_PATH_BYTES} bytes"
    is_dir = raw.endswith("/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        return RefusalReason.OUTSIDE, "names the repository root itself"
    if ".." in parts:
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                return RefusalReason.OUTSIDE, "leaves the repository through '..'"
        return RefusalReason.TRAVERSAL, "uses '..'; write the path without it"
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for p in parts):
        return RefusalReason.INVALID, f"has a component longer than {MAX_COMPONENT_BYTES} bytes"
    return _Normalised(path="/".join(parts), is_dir_hint=is_dir)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class MountPlanner:
    """Plans one task against one base tree under one policy."""

    def __init__(self, tree: Mapping[str, TreeEntry], policy: Policy) -> None:
        self._tree = tree
        self._policy = policy
        self._rules = [
            (rule, pathspec.PathSpec.from_lines("gitignore", [rule])) for rule in policy.deny
        ]
        # The same rules as a case-insensitive checkout reads them, for the folded paths.
        self._folded_rules = [
            (rule, pathspec.PathSpec.from_lines("gitignore", [fold(rule)])) for rule in policy.deny
        ]
        self._dirs = {a for p in tree for a in _ancestors(p)}

    def denied_by(self, path: str, *, is_dir: bool = False) -> str | None:
        """The first deny rule that matches ``path`` or one of its folders, or None."""
        candidates = [*(a + "/" for a in _ancestors(path)), path + ("/" if is_dir else "")]
        for candidate in candidates:
            for rule, spec in self._rules:
                if spec.match_file(candidate):
                    return rule
        # Rules match case-sensitively, but checkouts on Windows and macOS do not: there
        # '.ENV', 'SECRETS./' and 'secrets /' are the '.env' and 'secrets/' a rule denies.
        # So the checkout key of each candidate is matched against the folded rules too.
        for candidate in candidates:
            key = path_key(candidate)
            for rule, spec in self._folded_rules:
                if spec.match_file(key):
                    return rule
        return None

    def blocked(self, path: str, *, is_dir: bool) -> tuple[RefusalReason, str] | None:
        """Symlink, submodule or deny-rule refusal for a clean path, checked on every ancestor."""
        for prefix in [*_ancestors(path), path]:
            entry = self._tree.get(prefix)
            if entry is not None and entry.mode == MODE_SYMLINK:
                return RefusalReason.SYMLINK, f"{prefix} is a symbolic link in the repository"
            if entry is not None and entry.mode == MODE_GITLINK:
                return RefusalReason.SUBMODULE, f"{prefix} is a submodule"
        rule = self.denied_by(path, is_dir=is_dir)
        if rule is not None:
            return RefusalReason.DENIED, f"denied by rule {rule!r} of policy {self._policy.name!r}"
        return None

    def plan(self, task: Task, base_commit: str) -> MountPlan:
        """Compute the plan; never raises for a bad path, it records the refusal instead."""
        build = _PlanBuilder(self, base_commit)
        # Owned paths first: a relevant file inside an owned folder is then simply writable.
        for raw in task.owns_paths:
            build.add_owned(raw)
        for raw in task.ctx.relevant_files:
            build.add_readable(raw, Role.RELEVANT)
        if task.contract is not None:
            build.add_readable(task.contract.openapi_path, Role.CONTRACT)
        return MountPlan(
            task_key=task.task_key,
            base_commit=base_commit,
            policy=self._policy.name,
            policy_digest=self._policy.digest(),
            read_only=sorted(build.read_only.values(), key=lambda e: e.path),
            read_write=sorted(build.read_write.values(), key=lambda e: e.path),
            refused=build.refused,
            staged=sorted(build.staged.values(), key=lambda s: s.path),
            contract=build.contract,
        )

    def entry(self, path: str) -> TreeEntry | None:
        """The tree entry at ``path``, if it is a blob, symlink or submodule."""
        return self._tree.get(path)

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a folder at the base commit."""
        return path in self._dirs

    def files_under(self, directory: str) -> list[str]:
        """Every tree entry below ``directory``."""
        prefix = directory + "/"
        return sorted(p for p in self._tree if p.startswith(prefix))


class _PlanBuilder:
    """Accumulates one plan; each ``add_*`` either plans a path or records why not."""

    def __init__(self, planner: MountPlanner, base_commit: str) -> None:
        self._planner = planner
        self._base = base_commit
        self.read_only: dict[str, MountEntry] = {}
        self.read_write: dict[str, MountEntry] = {}
        self.refused: list[Refusal] = []
        self.staged: dict[str, StagedFile] = {}
        self.contract: str | None = None

    def _refuse(self, path: str, role: Role, reason: RefusalReason, detail: str) -> None:
        self.refused.append(Refusal(path=path, role=role, reason=reason, detail=detail))

    def _stage(self, path: str) -> None:
        entry = self._planner.entry(path)
        if entry is not None:
            self.staged[path] = StagedFile(
                path=path, oid=entry.oid, executable=entry.mode == MODE_EXECUTABLE
            )

    def _stage_dir(self, directory: str) -> None:
        """Stage every file under a planned folder; leave out (and report) what may not be seen."""
        for child in self._planner.files_under(directory):
            blocked = self._planner.blocked(child, is_dir=False)
            if blocked is not None:
                self._refuse(child, Role.EXCLUDED, *blocked)
            else:
                self._stage(child)

    def _owned_conflict(self, path: str) -> str | None:
        file_parent = next((a for a in _ancestors(path) if self._planner.entry(a)), None)
        if file_parent is not None:
            return f"{file_parent} is a file at the base commit"
        for other in self.read_write:
            if path.startswith(other + "/") or other.startswith(path + "/"):
                return f"overlaps owned path {other}"
        return None

    def add_owned(self, raw: str) -> None:
        clean = _normalise(raw)
        if not isinstance(clean, _Normalised):
            self._refuse(raw, Role.OWNS, *clean)
            return
        path = clean.path
        blocked = self._planner.blocked(path, is_dir=True)
        if blocked is not None:
            self._refuse(raw, Role.OWNS, *blocked)
            return
        # Whatever the sandbox writes here lands in a commit that Windows and macOS users
        # check out: a name they cannot (or that means another file there) is refused.
        unportable = unportable_path_reason(path)
        if unportable is not None:
            self._refuse(raw, Role.OWNS, RefusalReason.INVALID, unportable)
            return
        conflict = self._owned_conflict(path)
        if conflict is not None:
            self._refuse(raw, Role.OWNS, RefusalReason.CONFLICT, conflict)
            return
        in_tree = self._planner.entry(path) is not None
        is_dir = self._planner.is_dir(path) or (clean.is_dir_hint and not in_tree)
        self.read_write[path] = MountEntry(
            path=path,
            kind="dir" if is_dir else "file",
            role=Role.OWNS,
            exists_at_base=in_tree or self._planner.is_dir(path),
        )
        if is_dir:
            self._stage_dir(path)
        else:
            self._stage(path)

    def _under_owned(self, path: str) -> bool:
        return any(path == o or path.startswith(o + "/") for o in self.read_write)

    def add_readable(self, raw: str, role: Role) -> None:
        clean = _normalise(raw)
        if not isinstance(clean, _Normalised):
            self._refuse(raw, role, *clean)
            return
        path = clean.path
        is_dir = self._planner.is_dir(path)
        blocked = self._planner.blocked(path, is_dir=is_dir)
        if blocked is not None:
            self._refuse(raw, role, *blocked)
            return
        if self._planner.entry(path) is None and not is_dir:
            self._refuse(raw, role, RefusalReason.ABSENT, f"does not exist at {self._base[:12]}")
            return
        if role is Role.CONTRACT and is_dir:
            self._refuse(raw, role, RefusalReason.CONFLICT, "the contract must be a file")
            return
        if role is Role.CONTRACT:
            self.contract = path
        if self._under_owned(path):
            return  # already staged, and writable
        self.read_only[path] = MountEntry(
            path=path, kind="dir" if is_dir else "file", role=role, exists_at_base=True
        )
        if is_dir:
            self._stage_dir(path)
        else:
            self._stage(path)


def plan_mounts(
    task: Task, tree: Mapping[str, TreeEntry], policy: Policy, base_commit: str
) -> MountPlan:
    """Convenience wrapper: the plan for ``task`` at ``base_commit``."""
    return MountPlanner(tree, policy).plan(task, base_commit)
