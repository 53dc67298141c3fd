"""The path rules a changed path must pass to land: pure, readable alone by a security reviewer.

Only regular files under ``ownsPaths``, never a deny rule's match, never git metadata, a link,
a submodule, an odd mode, or a name another system cannot check out (``controller.pathnames``,
shared with the planner), never two names one checkout would merge.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.errors import RepositoryError
from controller.gitrepo import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_GITLINK,
    MODE_SYMLINK,
    TreeEntry,
)
from controller.pathnames import component_key, fold, unportable_reason
from controller.policy.planner import MAX_COMPONENT_BYTES, MAX_PATH_BYTES, MountPlanner

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy
from controller.ingest.refusals import IngestRefusal, refuse, shown

#: As many changed paths as ``files_created`` may list; more is refused, never truncated.
MAX_CHANGED_PATHS = 10_000


#: Control characters, C1 controls, zero-width and bidi characters (HFS+ ignores several
#: of them, so ``.g\u200cit`` would be ``.git`` there) and the backslash (a separator on Windows).
UNSAFE_PATH_CHARS = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\\]"
)


#: Names (case-folded, trailing dots and spaces dropped as Windows does, with their 8.3
#: short forms) that would make git treat a path as repository metadata.
GIT_DIR_NAMES = frozenset({".git", "git~1"})


GIT_CONTROL_FILES = frozenset({".gitmodules", ".gitattributes", "gitmod~1", "gitatt~1"})


@dataclass(frozen=True, slots=True)
class RawChange:
    """One line of ``git diff-tree --raw``; the path is still untrusted bytes."""

    status: str
    raw_path: bytes
    old_mode: str
    new_mode: str
    new_oid: str


@dataclass(frozen=True, slots=True)
class Change:
    """A checked change: its path is valid UTF-8 and passed every rule."""

    status: str  # A, M, T or D
    path: str
    old_mode: str
    new_mode: str
    new_oid: str

    @property
    def adds_content(self) -> bool:
        return self.status != "D"


def parse_raw_diff(out: bytes) -> list[RawChange]:
    fields = out.split(b"\0")
    if fields and not fields[-1]:
        fields.pop()
    if len(fields) % 2:
        raise RepositoryError("git diff-tree printed an unexpected record")
    changes: list[RawChange] = []
    for meta, raw_path in zip(fields[0::2], fields[1::2], strict=True):
        old_mode, new_mode, _old_oid, new_oid, status = meta.decode("ascii").lstrip(":").split(" ")
        changes.append(RawChange(status[:1], raw_path, old_mode, new_mode, new_oid))
    return changes


def ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def folders_of(paths: Iterable[str]) -> set[str]:
    """Every folder above ``paths``; each folder is walked once, however many files it holds."""
    folders: set[str] = set()
    for path in paths:
        cut = path.rfind("/")
        while cut > 0:
            folder = path[:cut]
            if folder in folders:
                break  # its own folders were added when it was
            folders.add(folder)
            cut = path.rfind("/", 0, cut)
    return folders


def decoded_path(raw: bytes) -> str:
    """The path as text, or a refusal if it could not be a sane file name everywhere."""
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(IngestRefusal.INVALID_PATH, f"{shown(raw)} is not valid UTF-8") from exc
    if len(raw) > MAX_PATH_BYTES:
        raise refuse(IngestRefusal.INVALID_PATH, f"{shown(raw)} is over {MAX_PATH_BYTES} bytes")
    if UNSAFE_PATH_CHARS.search(path):
        raise refuse(
            IngestRefusal.INVALID_PATH,
            f"{shown(raw)} contains a control, invisible, bidi or backslash character",
        )
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise refuse(IngestRefusal.INVALID_PATH, f"{shown(raw)} has an empty, '.' or '..' part")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise refuse(
                IngestRefusal.INVALID_PATH,
                f"{shown(raw)} has a part over {MAX_COMPONENT_BYTES} bytes",
            )
        key = component_key(part)
        if key in GIT_DIR_NAMES:
            raise refuse(IngestRefusal.GIT_METADATA, f"{shown(raw)} goes through a .git folder")
        if key in GIT_CONTROL_FILES:
            raise refuse(
                IngestRefusal.GIT_METADATA,
                f"{shown(raw)}: .gitmodules and .gitattributes steer git itself and may not change",
            )
    return path


class ChangeRules:
    """The plan and the policy, applied to each changed path and to the resulting tree."""

    def __init__(self, plan: MountPlan, policy: Policy, real_base: Mapping[str, TreeEntry]) -> None:
        self._owned = [(e.path, e.kind) for e in plan.read_write]
        self._owned_text = ", ".join(plan.owns_paths) or "nothing"
        # The planner's own matcher, so ingestion and planning can never disagree on a rule.
        self._deny = MountPlanner({}, policy)
        self._policy = policy
        self._real_base = real_base

    def check(self, raw_changes: Sequence[RawChange]) -> tuple[list[Change], dict[str, TreeEntry]]:
        """Every change checked, and the tree they make on the real base commit."""
        if len(raw_changes) > MAX_CHANGED_PATHS:
            raise refuse(
                IngestRefusal.TOO_MANY_CHANGES,
                f"{len(raw_changes)} changed paths; at most {MAX_CHANGED_PATHS} are accepted",
            )
        changes = [self._checked(raw) for raw in raw_changes]
        final = self._final_tree(changes)
        self._check_portable(changes)
        self._check_case(changes, final)
        return changes, final

    def _check_portable(self, changes: Sequence[Change]) -> None:
        """A name the sandbox adds must check out as itself on Windows and macOS too.

        One rule set with the planner (``controller.pathnames``). Names already at the base
        are the repository's own, as in :meth:`_check_case`: a task may still change them.
        """
        existing = self._real_base.keys() | folders_of(self._real_base)
        for change in changes:
            if change.status != "A":
                continue
            for name in [*ancestors(change.path), change.path]:
                if name in existing:
                    continue
                reason = unportable_reason(name.rsplit("/", 1)[-1])
                if reason is not None:
                    raise refuse(IngestRefusal.INVALID_PATH, f"{shown(change.path)}: {reason}")

    def _checked(self, raw: RawChange) -> Change:
        path = decoded_path(raw.raw_path)
        if not self._is_owned(path):
            raise refuse(
                IngestRefusal.OUTSIDE_OWNED,
                f"{shown(path)} is not under ownsPaths ({self._owned_text})",
            )
        # The planner's matcher also matches the form a Windows or macOS checkout gives
        # the path: 'SECRETS/x', 'SECRETS./x' and 'KEY.PEM ' are denied like 'secrets/x'.
        rule = self._deny.denied_by(path)
        if rule is not None:
            raise refuse(
                IngestRefusal.DENIED,
                f"{shown(path)} is denied by rule {rule!r} of policy {self._policy.name!r}",
            )
        change = Change(raw.status, path, raw.old_mode, raw.new_mode, raw.new_oid)
        if change.adds_content:
            self._check_mode(change)
        return change

    def _is_owned(self, path: str) -> bool:
        return any(
            path == owned if kind == "file" else path.startswith(owned + "/")
            for owned, kind in self._owned
        )

    def _check_mode(self, change: Change) -> None:
        mode, allowed = change.new_mode, self._policy.ingestion
        if mode == MODE_FILE:
            return
        if mode == MODE_GITLINK:
            raise refuse(IngestRefusal.SUBMODULE, f"{shown(change.path)} is a submodule (gitlink)")
        if mode == MODE_SYMLINK:
            if not allowed.allow_symlinks:
                raise refuse(
                    IngestRefusal.SYMLINK,
                    f"{shown(change.path)} is a symbolic link; policy {self._policy.name!r} allows none",
                )
            return
        if mode == MODE_EXECUTABLE:
            # A file that was executable at the base may stay so; adding the bit needs the policy.
            if allowed.allow_executable or change.old_mode == MODE_EXECUTABLE:
                return
            raise refuse(
                IngestRefusal.EXECUTABLE,
                f"{shown(change.path)} gains the executable bit; policy {self._policy.name!r} allows none",
            )
        raise refuse(IngestRefusal.ODD_MODE, f"{shown(change.path)} has mode {mode}")

    def _final_tree(self, changes: Sequence[Change]) -> dict[str, TreeEntry]:
        """The real base tree with the changes applied; refuses paths the sandbox never saw."""
        final = dict(self._real_base)
        for change in changes:
            if not change.adds_content:
                del final[change.path]  # present: the base tree equals the staged files
                continue
            if change.status == "A" and change.path in self._real_base:
                raise refuse(
                    IngestRefusal.HIDDEN_PATH,
                    f"{shown(change.path)} exists at the base commit but was not shown to the sandbox",
                )
            final[change.path] = TreeEntry(change.new_mode, "blob", change.new_oid)
        final_folders = folders_of(final)
        for change in changes:
            if change.status != "A":
                continue
            if change.path in final_folders:
                raise refuse(
                    IngestRefusal.HIDDEN_PATH,
                    f"{shown(change.path)} is a folder in the repository; a file cannot replace it",
                )
            for folder in ancestors(change.path):
                if folder in final:
                    raise refuse(
                        IngestRefusal.HIDDEN_PATH,
                        f"{shown(change.path)} needs folder {shown(folder)}, which is a file in the repository",
                    )
        return final

    def _check_case(self, changes: Sequence[Change], final: Mapping[str, TreeEntry]) -> None:
        """A name the sandbox adds may not differ only in case (or Unicode form) from another.

        Names that already exist at the base are skipped: a clash the repository already
        has is not the task's doing.
        """
        existing = self._real_base.keys() | folders_of(self._real_base)
        added = {
            name
            for change in changes
            if change.status == "A"
            for name in [*ancestors(change.path), change.path]
            if name not in existing
        }
        if not added:
            return
        wanted = {fold(name) for name in added}
        seen: dict[str, set[str]] = defaultdict(set)
        for name in final.keys() | folders_of(final):
            key = fold(name)
            if key in wanted:
                seen[key].add(name)
        for name in sorted(added):
            clash = seen[fold(name)] - {name}
            if clash:
                raise refuse(
                    IngestRefusal.CASE_COLLISION,
                    f"{shown(name)} differs only in case from {shown(min(clash))}",
                )


def check_link_target(path: str, raw_target: bytes) -> None:
    try:
        target = raw_target.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(IngestRefusal.SYMLINK, f"{shown(path)} points at a non-UTF-8 name") from exc
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if (
        not target
        or UNSAFE_PATH_CHARS.search(target)
        or target.startswith("/")
        or resolved == ".."
        or resolved.startswith("../")
        or any(component_key(p) in GIT_DIR_NAMES for p in resolved.split("/"))
    ):
        raise refuse(
            IngestRefusal.SYMLINK,
            f"{shown(path)} points at {shown(target)}, outside the repository",
        )
