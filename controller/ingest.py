"""Trusted ingestion: check a sandbox's ``result.json`` and git bundle, have the judge decide, land the commit on ``taskbox/<key>``.

Everything that arrives is hostile until checked. The bundle is only ever fetched into a bare
repository this module creates; the final commit is written with plumbing on the real base commit.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from controller.contract import TASK_KEY_PATTERN, AgentClaim, TaskResult, parse_untrusted_result
from controller.errors import IngestionError, RepositoryError
from controller.gitrepo import (
    GIT_TIMEOUT_SECONDS,
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_GITLINK,
    MODE_SYMLINK,
    SAFE_GIT_ENV,
    TreeEntry,
    list_tree,
)
from controller.packcheck import BundleCaps, PackProblem, PackRefusedError, check_pack
from controller.pathnames import component_key, fold, unportable_reason
from controller.policy.planner import MAX_COMPONENT_BYTES, MAX_PATH_BYTES, MountPlanner
from controller.verdict import Verdict

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy

log = logging.getLogger(__name__)

#: The one ref a sandbox bundle may carry (the runner's scratch branch).
BUNDLE_REF = "refs/heads/taskbox"
#: Branches the controller writes in the target repository: ``taskbox/<taskKey>``.
BRANCH_PREFIX = "taskbox/"
#: The only commit type of the seed's message form ``feat(<scope>): <description> [<taskKey>]``.
COMMIT_TYPE = "feat"
ZERO_OID = "0" * 40
MAX_BUNDLE_HEADER_BYTES = 64 * 1024
#: As many changed paths as ``files_created`` may list; more is refused, never truncated.
MAX_CHANGED_PATHS = 10_000
MAX_SUBJECT_DESCRIPTION = 200
MIB = 1024 * 1024

#: Where the fetched work commit lives inside the ingest repository.
_WORK_REF = "refs/taskbox/work"
_BUNDLE_SIGNATURES = (b"# v2 git bundle\n", b"# v3 git bundle\n")
_REF_LINE = re.compile(rb"([0-9a-f]{40}) ([\x21-\x7e]{1,1024})")

#: Config of the ingest repository. fsck runs explicitly too: git before 2.46 does not
#: fsck objects fetched from a bundle, whatever ``fetch.fsckObjects`` says.
_INGEST_REPO_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
    ("core.logAllRefUpdates", "false"),
    ("transfer.fsckObjects", "true"),
    ("fetch.fsckObjects", "true"),
    ("receive.fsckObjects", "true"),
    # Odd modes (100664, ...) are only "info" for fsck; the sandbox gets no benefit of the doubt.
    ("fsck.badFilemode", "error"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    # One thread: git runs under an address-space limit, and each thread's stack counts.
    ("pack.threads", "1"),
)

#: ``-c`` settings on every command in the target repository: its own hooks, signing
#: and index tricks stay out of a commit written by plumbing, so a replay gives the same id.
_TARGET_REPO_OVERRIDES: tuple[str, ...] = (
    "core.hooksPath=" + os.devnull,
    "core.fsmonitor=false",
    "core.splitIndex=false",
    "commit.gpgSign=false",
    "i18n.commitEncoding=UTF-8",
)

#: Control characters, C1 controls, zero-width and bidi characters (HFS+ ignores several
#: of them, so ``.g\u200cit`` would be ``.git`` there) and the backslash (a separator on Windows).
_UNSAFE_PATH_CHARS = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\\]"
)
_UNSAFE_TEXT_CHARS = r"\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
_CONTROLS_IN_MESSAGES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

#: Names (case-folded, trailing dots and spaces dropped as Windows does, with their 8.3
#: short forms) that would make git treat a path as repository metadata.
_GIT_DIR_NAMES = frozenset({".git", "git~1"})
_GIT_CONTROL_FILES = frozenset({".gitmodules", ".gitattributes", "gitmod~1", "gitatt~1"})


class IngestRefusal(StrEnum):
    """Why ingestion refused; every IngestionError message starts with ``<reason>: ``."""

    RESULT_INVALID = "result_invalid"
    TASK_MISMATCH = "task_mismatch"
    PLAN_MISMATCH = "plan_mismatch"
    WORKSPACE = "workspace"
    BUNDLE_TOO_LARGE = "bundle_too_large"
    BUNDLE_INVALID = "bundle_invalid"
    BUNDLE_PREREQUISITES = "bundle_prerequisites"
    BUNDLE_REFS = "bundle_refs"
    OBJECTS_INVALID = "objects_invalid"
    HISTORY = "history"
    BASE_TREE = "base_tree_mismatch"
    TOO_MANY_CHANGES = "too_many_changes"
    INVALID_PATH = "invalid_path"
    GIT_METADATA = "git_metadata"
    OUTSIDE_OWNED = "outside_owned_paths"
    DENIED = "denied"
    SYMLINK = "symlink"
    SUBMODULE = "submodule"
    EXECUTABLE = "executable"
    ODD_MODE = "odd_mode"
    HIDDEN_PATH = "hidden_path"
    CASE_COLLISION = "case_collision"
    FILE_TOO_LARGE = "file_too_large"
    BRANCH_EXISTS = "branch_exists"
    TARGET = "target_repository"
    TIMEOUT = "timeout"


def _refuse(reason: IngestRefusal, detail: str) -> IngestionError:
    return IngestionError(f"{reason}: {detail}")


def _clean(text: str, limit: int = 300) -> str:
    """Text from git or the sandbox, made safe for a log line or an error message."""
    cleaned = _CONTROLS_IN_MESSAGES.sub("", text).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _shown(raw: bytes | str) -> str:
    """A hostile path as a quoted, escaped literal (newlines, CRs and invalid bytes visible)."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    shown = repr(text)
    return shown if len(shown) <= 200 else shown[:199] + "…"  # noqa: PLR2004 - display cap


# --------------------------------------------------------------------------- public models


class CommitIdentity(BaseModel):
    """Author and committer of the commits Taskbox writes in the target repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[^<>\x00-\x1f\x7f]{1,100}$")]
    email: Annotated[str, StringConstraints(pattern=r"^[^<>\s\x00-\x1f\x7f]{1,254}$")]


class IngestedResult(BaseModel):
    """The controller's own result after ingestion, and where the commit went."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    result: TaskResult
    """The runner's result rewritten: file lists, ``git_commit``, status and reason are the controller's."""
    branch: str | None
    """``taskbox/<taskKey>`` when a commit was written, else None."""
    base_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
    files_deleted: list[str] = Field(default_factory=list)
    """Paths the sandbox removed (the seed's result has no field for them)."""
    sandbox_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")] | None = None
    """The runner's work commit inside the bundle, for the run record; never written to the target."""
    candidate_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")] | None = None
    """The commit the judge verified (on the target's objects); it is ``result.git_commit``
    only when it landed."""


# --------------------------------------------------------------------------- git runners


def _run_git(
    prefix: Sequence[str],
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    input_bytes: bytes | None,
    memory_limit: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    command = ["git", *prefix, *args]
    if memory_limit is not None:
        # A hard RLIMIT_AS, set by the shell right before it execs git: the kernel refuses
        # git's allocations past it. No preexec_fn (unsafe in a threaded controller); the
        # script is a constant and every argument is passed to it as data.
        limit_kib = str(memory_limit // 1024)
        command = ["/bin/sh", "-c", 'ulimit -v "$0" && exec "$@"', limit_kib, *command]
    try:
        return subprocess.run(
            command,
            input=input_bytes,
            capture_output=True,
            env=dict(env),
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _refuse(
            IngestRefusal.TIMEOUT, f"git {args[0]} took longer than {GIT_TIMEOUT_SECONDS}s"
        ) from exc


def _git_message(stderr: bytes) -> str:
    """The most telling line of git's stderr: the first error, else the last line."""
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error", "fatal"))]
    chosen = errors[0] if errors else (lines[-1] if lines else "no message")
    return _clean(chosen)


class _IngestRepo:
    """The bare repository made for one bundle: the only place the sandbox's objects ever land."""

    def __init__(self, git_dir: Path, memory_limit: int) -> None:
        self.git_dir = git_dir
        self.memory_limit = memory_limit
        # GIT_DIR pins the repository: git never searches upwards from here.
        self._env = {**SAFE_GIT_ENV, "GIT_DIR": str(git_dir), "GIT_NO_REPLACE_OBJECTS": "1"}

    @classmethod
    def create(cls, git_dir: Path, policy: Policy) -> _IngestRepo:
        """A fresh bare repository whose git runs under the address-space limit for ``policy``."""
        git_dir.mkdir(mode=0o700)
        repo = cls(git_dir, BundleCaps.of(policy).git_memory_limit())
        # An empty --template: no sample hooks, nothing copied from the host's templates.
        repo.git("init", "--quiet", "--bare", "--template=", "--object-format=sha1")
        # The config file is ours (just made); one append replaces a git process per key.
        sections: dict[str, list[str]] = defaultdict(list)
        for key, value in _INGEST_REPO_CONFIG:
            section, _, name = key.partition(".")
            sections[section].append(f"\t{name} = {value}\n")
        with (git_dir / "config").open("a", encoding="utf-8") as config:
            config.writelines(
                f"[{section}]\n{''.join(lines)}" for section, lines in sections.items()
            )
        return repo

    def run(
        self, *args: str, input_bytes: bytes | None = None, index: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        env = self._env if index is None else {**self._env, "GIT_INDEX_FILE": str(index)}
        return _run_git(
            ["-C", str(self.git_dir)],
            args,
            env=env,
            input_bytes=input_bytes,
            memory_limit=self.memory_limit,
        )

    def git(
        self,
        *args: str,
        input_bytes: bytes | None = None,
        index: Path | None = None,
        refusal: IngestRefusal | None = None,
    ) -> bytes:
        """Run git; a failure is a refusal when ``refusal`` is given, else a RepositoryError."""
        done = self.run(*args, input_bytes=input_bytes, index=index)
        if done.returncode != 0:
            message = _git_message(done.stderr)
            if refusal is not None:
                raise _refuse(refusal, f"git {args[0]}: {message}")
            raise RepositoryError(f"git {args[0]} failed in the ingest repository: {message}")
        return done.stdout


class _TargetRepo:
    """The user's repository: read freely, written only once every check has passed."""

    def __init__(self, repo: Path) -> None:
        self.path = repo
        self._prefix = ["-C", str(repo)]
        for setting in _TARGET_REPO_OVERRIDES:
            self._prefix += ["-c", setting]
        self._env = {**SAFE_GIT_ENV, "GIT_NO_REPLACE_OBJECTS": "1"}

    def run(
        self,
        *args: str,
        input_bytes: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**self._env, **(extra_env or {})}
        return _run_git(self._prefix, args, env=env, input_bytes=input_bytes)

    def git(
        self,
        *args: str,
        input_bytes: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> bytes:
        done = self.run(*args, input_bytes=input_bytes, extra_env=extra_env)
        if done.returncode != 0:
            message = _git_message(done.stderr)
            raise _refuse(IngestRefusal.TARGET, f"git {args[0]} failed in {self.path}: {message}")
        return done.stdout

    def require_sha1(self) -> None:
        """TaskResult.git_commit is a 40-hex id, so a SHA-256 repository cannot be served."""
        done = self.run("rev-parse", "--show-object-format")
        if done.returncode != 0:
            raise RepositoryError(f"{self.path} is not a git repository")
        if done.stdout.strip() != b"sha1":
            raise RepositoryError(f"{self.path} uses {_clean(done.stdout.decode())} object ids")


# --------------------------------------------------------------------------- result.json


def _parse_result(raw: bytes, *, policy: Policy, task_key: str) -> TaskResult:
    try:
        result = parse_untrusted_result(raw, max_bytes=policy.ingestion.max_result_bytes)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        detail = f"result.json does not match the schema ({exc.error_count()} error(s); first at {_clean(where, 100)}: {_clean(first['msg'], 200)})"
        raise _refuse(IngestRefusal.RESULT_INVALID, detail) from exc
    except ValueError as exc:
        raise _refuse(IngestRefusal.RESULT_INVALID, _clean(str(exc))) from exc
    if result.task_key != task_key:
        raise _refuse(
            IngestRefusal.TASK_MISMATCH,
            f"result.json is for task {result.task_key!r}, not {task_key!r}",
        )
    return result


# --------------------------------------------------------------------------- plan sanity


def _check_plan(plan: MountPlan, policy: Policy, task_key: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{40}", plan.base_commit):
        raise _refuse(IngestRefusal.PLAN_MISMATCH, "the plan's base commit is not a full commit id")
    if not re.fullmatch(TASK_KEY_PATTERN, task_key) or plan.task_key != task_key:
        raise _refuse(
            IngestRefusal.PLAN_MISMATCH,
            f"the mount plan is for task {plan.task_key!r}, not {_shown(task_key)}",
        )
    if plan.policy_digest != policy.digest():
        raise _refuse(
            IngestRefusal.PLAN_MISMATCH,
            f"the mount plan was made under policy {plan.policy_digest}, not {policy.digest()}",
        )


def _check_staged_against_base(plan: MountPlan, real_base: Mapping[str, TreeEntry]) -> None:
    """The plan's staged files must be what the base commit holds (a stale plan is a bug)."""
    for staged in plan.staged:
        entry = real_base.get(staged.path)
        mode = MODE_EXECUTABLE if staged.executable else MODE_FILE
        if entry is None or entry.oid != staged.oid or entry.mode != mode:
            raise _refuse(
                IngestRefusal.PLAN_MISMATCH,
                f"staged file {staged.path} is not at base commit {plan.base_commit[:12]} as planned",
            )


# --------------------------------------------------------------------------- bundle


def _bundle_tip(data: bytes, policy: Policy) -> str:
    """Parse the bundle header strictly and walk its pack; return the commit id of BUNDLE_REF.

    Every object's size is read from the pack before git sees a byte of it: an object
    or a delta result over ``policy``'s file limit, an absurd object count or total, or a
    pack that is not exactly git's format is refused here.
    """
    signature = next((s for s in _BUNDLE_SIGNATURES if data.startswith(s)), None)
    if signature is None:
        raise _refuse(IngestRefusal.BUNDLE_INVALID, "not a git bundle (no v2 or v3 signature)")
    end = data.find(b"\n\n", 0, MAX_BUNDLE_HEADER_BYTES)
    if end < 0:
        raise _refuse(
            IngestRefusal.BUNDLE_INVALID,
            f"the bundle header does not end within {MAX_BUNDLE_HEADER_BYTES} bytes",
        )
    if data[end + 2 : end + 6] != b"PACK":
        raise _refuse(IngestRefusal.BUNDLE_INVALID, "no pack data follows the bundle header")
    body = data[len(signature) : end]
    refs: list[tuple[bytes, bytes]] = []
    for line in body.split(b"\n") if body else []:
        if line.startswith(b"@"):
            # v3 capabilities: only the default hash; "@filter" (a partial bundle) is refused.
            if signature.startswith(b"# v2") or line != b"@object-format=sha1":
                raise _refuse(
                    IngestRefusal.BUNDLE_INVALID,
                    f"bundle capability {_shown(line)} is not accepted",
                )
        elif line.startswith(b"-"):
            raise _refuse(
                IngestRefusal.BUNDLE_PREREQUISITES,
                "the bundle needs commits it does not carry; it must hold the whole history",
            )
        else:
            match = _REF_LINE.fullmatch(line)
            if match is None:
                raise _refuse(
                    IngestRefusal.BUNDLE_INVALID, f"malformed bundle header line {_shown(line)}"
                )
            refs.append((match.group(1), match.group(2)))
    names = [name for _, name in refs]
    if names != [BUNDLE_REF.encode()]:
        carried = ", ".join(_shown(n) for n in names[:5]) or "none"
        raise _refuse(
            IngestRefusal.BUNDLE_REFS,
            f"the bundle must carry exactly one ref, {BUNDLE_REF}; it carries {carried}",
        )
    _check_pack_sizes(memoryview(data)[end + 2 :], policy)
    return refs[0][0].decode()


#: How a pack refusal reads as an ingestion refusal.
_PACK_REFUSALS = {
    PackProblem.OBJECT_TOO_LARGE: IngestRefusal.FILE_TOO_LARGE,
    PackProblem.TOO_MANY_OBJECTS: IngestRefusal.BUNDLE_TOO_LARGE,
    PackProblem.TOO_MUCH_DATA: IngestRefusal.BUNDLE_TOO_LARGE,
    PackProblem.MALFORMED: IngestRefusal.BUNDLE_INVALID,
}


def _check_pack_sizes(pack: memoryview, policy: Policy) -> None:
    """Walk the bundle's pack (controller.packcheck): nothing over the caps reaches git."""
    caps = BundleCaps.of(policy)
    try:
        check_pack(pack, caps.pack_limits())
    except PackRefusedError as exc:
        reason = _PACK_REFUSALS[exc.problem]
        limit = f" (the policy's file limit, {caps.max_object_bytes // MIB} MiB)"
        detail = f"{exc}{limit}" if reason is IngestRefusal.FILE_TOO_LARGE else str(exc)
        raise _refuse(reason, detail) from exc


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _fetch_bundle(ingest: _IngestRepo, bundle: Path, tip: str) -> None:
    """Verify, fetch and fsck the bundle inside the ingest repository."""
    ingest.git("bundle", "verify", "--quiet", str(bundle), refusal=IngestRefusal.BUNDLE_INVALID)
    heads = ingest.git("bundle", "list-heads", str(bundle), refusal=IngestRefusal.BUNDLE_INVALID)
    if heads.splitlines() != [f"{tip} {BUNDLE_REF}".encode()]:
        raise _refuse(
            IngestRefusal.BUNDLE_REFS, "git reads other refs from the bundle than its header"
        )
    ingest.git(
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        "--no-write-fetch-head",
        "--no-auto-maintenance",
        "--end-of-options",
        str(bundle),
        f"{BUNDLE_REF}:{_WORK_REF}",
        refusal=IngestRefusal.BUNDLE_INVALID,
    )
    ingest.git(
        "fsck",
        "--strict",
        "--no-dangling",
        "--no-progress",
        "--no-reflogs",
        refusal=IngestRefusal.OBJECTS_INVALID,
    )
    fetched = ingest.git(
        "rev-parse", "--verify", "--quiet", f"{_WORK_REF}^{{commit}}", refusal=IngestRefusal.HISTORY
    )
    if fetched.decode().strip() != tip:
        raise _refuse(IngestRefusal.HISTORY, f"{BUNDLE_REF} does not name commit {tip}")


def _history(ingest: _IngestRepo, tip: str) -> tuple[str, str | None]:
    """(base, work) for a base commit plus one work commit, or (base, None) for a base alone."""
    out = ingest.git("rev-list", "--parents", "--max-count=3", tip, refusal=IngestRefusal.HISTORY)
    rows = [line.split(" ") for line in out.decode().splitlines() if line]
    if len(rows) == 1 and len(rows[0]) == 1:
        return tip, None
    if len(rows) == 2 and len(rows[0]) == 2 and len(rows[1]) == 1 and rows[0][1] == rows[1][0]:  # noqa: PLR2004 - work + base
        return rows[1][0], tip
    shape = ", ".join(f"{row[0][:12]} with {len(row) - 1} parent(s)" for row in rows)
    more = " (and more)" if len(rows) >= 3 else ""  # noqa: PLR2004 - the --max-count above
    raise _refuse(
        IngestRefusal.HISTORY,
        f"the bundle must hold a root base commit and at most one work commit on it; found {shape}{more}",
    )


def _planned_tree(ingest: _IngestRepo, plan: MountPlan, index: Path) -> str:
    """The tree of exactly the staged files, built with a temporary index (blobs need not exist)."""
    lines = b"".join(
        f"{MODE_EXECUTABLE if s.executable else MODE_FILE} {s.oid}\t".encode()
        + s.path.encode("utf-8", "surrogateescape")
        + b"\0"
        for s in plan.staged
    )
    if lines:
        ingest.git("update-index", "--add", "-z", "--index-info", input_bytes=lines, index=index)
    return ingest.git("write-tree", "--missing-ok", index=index).decode().strip()


def _check_base_tree(ingest: _IngestRepo, plan: MountPlan, base: str, index: Path) -> None:
    planned = _planned_tree(ingest, plan, index)
    actual = ingest.git("rev-parse", f"{base}^{{tree}}").decode().strip()
    if actual == planned:
        return
    diff = ingest.git("diff-tree", "-r", "-z", "--no-renames", "--no-abbrev", planned, actual)
    changes = _parse_raw_diff(diff)
    words = {"A": "extra", "D": "missing", "M": "different", "T": "different"}
    listed = "; ".join(f"{words.get(c.status, c.status)} {_shown(c.raw_path)}" for c in changes[:5])
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""  # noqa: PLR2004 - listed above
    raise _refuse(
        IngestRefusal.BASE_TREE,
        f"the bundle's base commit is not exactly the staged files: {listed}{more}",
    )


# --------------------------------------------------------------------------- changes


@dataclass(frozen=True, slots=True)
class _RawChange:
    """One line of ``git diff-tree --raw``; the path is still untrusted bytes."""

    status: str
    raw_path: bytes
    old_mode: str
    new_mode: str
    new_oid: str


@dataclass(frozen=True, slots=True)
class _Change:
    """A checked change: its path is valid UTF-8 and passed every rule."""

    status: str  # A, M, T or D
    path: str
    old_mode: str
    new_mode: str
    new_oid: str

    @property
    def adds_content(self) -> bool:
        return self.status != "D"


def _parse_raw_diff(out: bytes) -> list[_RawChange]:
    fields = out.split(b"\0")
    if fields and not fields[-1]:
        fields.pop()
    if len(fields) % 2:
        raise RepositoryError("git diff-tree printed an unexpected record")
    changes: list[_RawChange] = []
    for meta, raw_path in zip(fields[0::2], fields[1::2], strict=True):
        old_mode, new_mode, _old_oid, new_oid, status = meta.decode("ascii").lstrip(":").split(" ")
        changes.append(_RawChange(status[:1], raw_path, old_mode, new_mode, new_oid))
    return changes


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _folders(paths: Iterable[str]) -> set[str]:
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


def _fold(name: str) -> str:
    """A name as a case-insensitive, normalising filesystem (Windows, macOS) compares it."""
    return fold(name)


def _component_key(component: str) -> str:
    """How Windows or macOS sees a name (``controller.pathnames``, shared with the planner)."""
    return component_key(component)


def _decoded_path(raw: bytes) -> str:
    """The path as text, or a refusal if it could not be a sane file name everywhere."""
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(IngestRefusal.INVALID_PATH, f"{_shown(raw)} is not valid UTF-8") from exc
    if len(raw) > MAX_PATH_BYTES:
        raise _refuse(IngestRefusal.INVALID_PATH, f"{_shown(raw)} is over {MAX_PATH_BYTES} bytes")
    if _UNSAFE_PATH_CHARS.search(path):
        raise _refuse(
            IngestRefusal.INVALID_PATH,
            f"{_shown(raw)} contains a control, invisible, bidi or backslash character",
        )
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise _refuse(
                IngestRefusal.INVALID_PATH, f"{_shown(raw)} has an empty, '.' or '..' part"
            )
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise _refuse(
                IngestRefusal.INVALID_PATH,
                f"{_shown(raw)} has a part over {MAX_COMPONENT_BYTES} bytes",
            )
        key = _component_key(part)
        if key in _GIT_DIR_NAMES:
            raise _refuse(IngestRefusal.GIT_METADATA, f"{_shown(raw)} goes through a .git folder")
        if key in _GIT_CONTROL_FILES:
            raise _refuse(
                IngestRefusal.GIT_METADATA,
                f"{_shown(raw)}: .gitmodules and .gitattributes steer git itself and may not change",
            )
    return path


class _ChangeRules:
    """The plan and the policy, applied to each changed path and to the resulting tree."""

    def __init__(self, plan: MountPlan, policy: Policy, real_base: Mapping[str, TreeEntry]) -> None:
        self._owned = [(e.path, e.kind) for e in plan.read_write]
        self._owned_text = ", ".join(plan.owns_paths) or "nothing"
        # The planner's own matcher, so ingestion and planning can never disagree on a rule.
        self._deny = MountPlanner({}, policy)
        self._policy = policy
        self._real_base = real_base

    def check(
        self, raw_changes: Sequence[_RawChange]
    ) -> tuple[list[_Change], dict[str, TreeEntry]]:
        """Every change checked, and the tree they make on the real base commit."""
        if len(raw_changes) > MAX_CHANGED_PATHS:
            raise _refuse(
                IngestRefusal.TOO_MANY_CHANGES,
                f"{len(raw_changes)} changed paths; at most {MAX_CHANGED_PATHS} are accepted",
            )
        changes = [self._checked(raw) for raw in raw_changes]
        final = self._final_tree(changes)
        self._check_portable(changes)
        self._check_case(changes, final)
        return changes, final

    def _check_portable(self, changes: Sequence[_Change]) -> None:
        """A name the sandbox adds must check out as itself on Windows and macOS too.

        One rule set with the planner (``controller.pathnames``). Names already at the base
        are the repository's own, as in :meth:`_check_case`: a task may still change them.
        """
        existing = self._real_base.keys() | _folders(self._real_base)
        for change in changes:
            if change.status != "A":
                continue
            for name in [*_ancestors(change.path), change.path]:
                if name in existing:
                    continue
                reason = unportable_reason(name.rsplit("/", 1)[-1])
                if reason is not None:
                    raise _refuse(IngestRefusal.INVALID_PATH, f"{_shown(change.path)}: {reason}")

    def _checked(self, raw: _RawChange) -> _Change:
        path = _decoded_path(raw.raw_path)
        if not self._is_owned(path):
            raise _refuse(
                IngestRefusal.OUTSIDE_OWNED,
                f"{_shown(path)} is not under ownsPaths ({self._owned_text})",
            )
        # The planner's matcher also matches the form a Windows or macOS checkout gives
        # the path: 'SECRETS/x', 'SECRETS./x' and 'KEY.PEM ' are denied like 'secrets/x'.
        rule = self._deny.denied_by(path)
        if rule is not None:
            raise _refuse(
                IngestRefusal.DENIED,
                f"{_shown(path)} is denied by rule {rule!r} of policy {self._policy.name!r}",
            )
        change = _Change(raw.status, path, raw.old_mode, raw.new_mode, raw.new_oid)
        if change.adds_content:
            self._check_mode(change)
        return change

    def _is_owned(self, path: str) -> bool:
        return any(
            path == owned if kind == "file" else path.startswith(owned + "/")
            for owned, kind in self._owned
        )

    def _check_mode(self, change: _Change) -> None:
        mode, allowed = change.new_mode, self._policy.ingestion
        if mode == MODE_FILE:
            return
        if mode == MODE_GITLINK:
            raise _refuse(
                IngestRefusal.SUBMODULE, f"{_shown(change.path)} is a submodule (gitlink)"
            )
        if mode == MODE_SYMLINK:
            if not allowed.allow_symlinks:
                raise _refuse(
                    IngestRefusal.SYMLINK,
                    f"{_shown(change.path)} is a symbolic link; policy {self._policy.name!r} allows none",
                )
            return
        if mode == MODE_EXECUTABLE:
            # A file that was executable at the base may stay so; adding the bit needs the policy.
            if allowed.allow_executable or change.old_mode == MODE_EXECUTABLE:
                return
            raise _refuse(
                IngestRefusal.EXECUTABLE,
                f"{_shown(change.path)} gains the executable bit; policy {self._policy.name!r} allows none",
            )
        raise _refuse(IngestRefusal.ODD_MODE, f"{_shown(change.path)} has mode {mode}")

    def _final_tree(self, changes: Sequence[_Change]) -> dict[str, TreeEntry]:
        """The real base tree with the changes applied; refuses paths the sandbox never saw."""
        final = dict(self._real_base)
        for change in changes:
            if not change.adds_content:
                del final[change.path]  # present: the base tree equals the staged files
                continue
            if change.status == "A" and change.path in self._real_base:
                raise _refuse(
                    IngestRefusal.HIDDEN_PATH,
                    f"{_shown(change.path)} exists at the base commit but was not shown to the sandbox",
                )
            final[change.path] = TreeEntry(change.new_mode, "blob", change.new_oid)
        folders = _folders(final)
        for change in changes:
            if change.status != "A":
                continue
            if change.path in folders:
                raise _refuse(
                    IngestRefusal.HIDDEN_PATH,
                    f"{_shown(change.path)} is a folder in the repository; a file cannot replace it",
                )
            for folder in _ancestors(change.path):
                if folder in final:
                    raise _refuse(
                        IngestRefusal.HIDDEN_PATH,
                        f"{_shown(change.path)} needs folder {_shown(folder)}, which is a file in the repository",
                    )
        return final

    def _check_case(self, changes: Sequence[_Change], final: Mapping[str, TreeEntry]) -> None:
        """A name the sandbox adds may not differ only in case (or Unicode form) from another.

        Names that already exist at the base are skipped: a clash the repository already
        has is not the task's doing.
        """
        existing = self._real_base.keys() | _folders(self._real_base)
        added = {
            name
            for change in changes
            if change.status == "A"
            for name in [*_ancestors(change.path), change.path]
            if name not in existing
        }
        if not added:
            return
        wanted = {_fold(name) for name in added}
        seen: dict[str, set[str]] = defaultdict(set)
        for name in final.keys() | _folders(final):
            key = _fold(name)
            if key in wanted:
                seen[key].add(name)
        for name in sorted(added):
            clash = seen[_fold(name)] - {name}
            if clash:
                raise _refuse(
                    IngestRefusal.CASE_COLLISION,
                    f"{_shown(name)} differs only in case from {_shown(min(clash))}",
                )


def _check_blobs(ingest: _IngestRepo, changes: Sequence[_Change], policy: Policy) -> None:
    """Sizes within the sandbox's own file-size limit; symlinks (when allowed) stay inside."""
    written = [c for c in changes if c.adds_content]
    if not written:
        return
    request = "".join(f"{c.new_oid}\n" for c in written).encode()
    out = ingest.git("cat-file", "--batch-check", input_bytes=request)
    cap = policy.limits.file_size_mb * MIB
    for change, line in zip(written, out.decode().splitlines(), strict=True):
        _oid, kind, size = line.split(" ")
        if kind != "blob":
            raise _refuse(IngestRefusal.OBJECTS_INVALID, f"{_shown(change.path)} is a {kind}")
        if int(size) > cap:
            raise _refuse(
                IngestRefusal.FILE_TOO_LARGE,
                f"{_shown(change.path)} is {size} bytes, over the {policy.limits.file_size_mb} MiB file limit",
            )
        if change.new_mode == MODE_SYMLINK:
            _check_link_target(change.path, ingest.git("cat-file", "blob", change.new_oid))


def _check_link_target(path: str, raw_target: bytes) -> None:
    try:
        target = raw_target.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(IngestRefusal.SYMLINK, f"{_shown(path)} points at a non-UTF-8 name") from exc
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if (
        not target
        or _UNSAFE_PATH_CHARS.search(target)
        or target.startswith("/")
        or resolved == ".."
        or resolved.startswith("../")
        or any(_component_key(p) in _GIT_DIR_NAMES for p in resolved.split("/"))
    ):
        raise _refuse(
            IngestRefusal.SYMLINK,
            f"{_shown(path)} points at {_shown(target)}, outside the repository",
        )


# --------------------------------------------------------------------------- the checked bundle


@dataclass(frozen=True, slots=True)
class _CheckedWork:
    """A bundle that passed every check, still only inside the ingest repository."""

    ingest: _IngestRepo
    sandbox_commit: str | None
    changes: list[_Change]
    final_tree: dict[str, TreeEntry]


def _check_bundle(
    folder: Path,
    bundle_bytes: bytes,
    *,
    plan: MountPlan,
    policy: Policy,
    real_base: Mapping[str, TreeEntry],
) -> _CheckedWork:
    cap = policy.ingestion.max_bundle_bytes
    if len(bundle_bytes) > cap:
        raise _refuse(
            IngestRefusal.BUNDLE_TOO_LARGE,
            f"the bundle is {len(bundle_bytes)} bytes, over the {cap}-byte cap",
        )
    tip = _bundle_tip(bundle_bytes, policy)
    bundle = folder / "result.bundle"
    _write_private(bundle, bundle_bytes)
    ingest = _IngestRepo.create(folder / "ingest.git", policy)
    _fetch_bundle(ingest, bundle, tip)
    base, work = _history(ingest, tip)
    _check_base_tree(ingest, plan, base, folder / "planned.index")
    if work is None:
        return _CheckedWork(ingest, None, [], dict(real_base))
    # The work commit's message is the sandbox's text: it is never read. The subject of
    # the commit that lands is built on the host from the task (contract.commit_subject).
    diff = ingest.git("diff-tree", "-r", "-z", "--no-renames", "--no-abbrev", base, work)
    changes, final = _ChangeRules(plan, policy, real_base).check(_parse_raw_diff(diff))
    _check_blobs(ingest, changes, policy)
    return _CheckedWork(ingest, work, changes, final)


# --------------------------------------------------------------------------- writing the commit


def _git_date(when: datetime) -> str:
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("commit_date must carry a time zone")
    minutes = int(offset / timedelta(minutes=1))
    sign = "-" if minutes < 0 else "+"
    return f"@{int(when.timestamp())} {sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _index_lines(changes: Sequence[_Change]) -> bytes:
    lines = [
        (f"{c.new_mode} {c.new_oid}\t" if c.adds_content else f"0 {ZERO_OID}\t").encode()
        + c.path.encode()
        + b"\0"
        # Removals first, so a file replaced by a folder of the same name frees its place.
        for c in sorted(changes, key=lambda c: c.adds_content)
    ]
    return b"".join(lines)


def _write_commit(
    target: _TargetRepo,
    folder: Path,
    work: _CheckedWork,
    *,
    base_commit: str,
    subject: str,
    identity: CommitIdentity,
    git_date: str,
) -> str:
    """Copy the new blobs, build the tree on the real base with a temporary index, commit.

    The commit is written into the target's object database only: no ref names it
    until :func:`_set_branch`, so a candidate the judge fails is on no branch.
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
        input_bytes=_index_lines(work.changes),
        extra_env=index_env,
    )
    tree = target.git("write-tree", extra_env=index_env).decode().strip()
    if list_tree(target.path, tree) != work.final_tree:
        raise _refuse(IngestRefusal.TARGET, "the written tree is not the checked one")
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
        input_bytes=f"{_checked_host_subject(subject)}\n".encode(),
        extra_env=identity_env,
    )
    return out.decode().strip()


def _checked_host_subject(subject: str) -> str:
    """The subject the controller built: one line, no control character (a caller's bug otherwise)."""
    if not subject or "\n" in subject or re.search(f"[{_UNSAFE_TEXT_CHARS}]", subject):
        raise ValueError(f"commit subject {subject!r} is not one clean line")
    return subject


def _set_branch(target: _TargetRepo, task_key: str, commit: str) -> str:
    """Create ``taskbox/<key>``; an existing branch is accepted only if it already is ``commit``."""
    branch = BRANCH_PREFIX + task_key
    ref = f"refs/heads/{branch}"
    current = target.run("rev-parse", "--verify", "--quiet", "--end-of-options", ref)
    if current.returncode == 0:
        existing = current.stdout.decode().strip()
        if existing == commit:
            log.info("branch %s already holds %s (a replay); left as it is", branch, commit)
            return branch
        raise _refuse(
            IngestRefusal.BRANCH_EXISTS,
            f"branch {branch} already exists at {existing[:12]}; remove it or use another task key",
        )
    # The zero old value makes git refuse if the branch appeared since the check above.
    target.git(
        "update-ref", "--no-deref", "-m", f"taskbox: ingest {task_key}", ref, commit, ZERO_OID
    )
    return branch


# --------------------------------------------------------------------------- the candidate


@dataclass(frozen=True, slots=True)
class Candidate:
    """A change set that passed every check, committed in the target's objects on no branch.

    This is what the judge stages and verifies: the commit that lands if it passes.
    """

    repo: Path
    base_commit: str
    commit: str
    """The candidate commit (subject built on the host), in the target repository's objects."""
    changes: tuple[ChangedPath, ...]
    agent: TaskResult
    """The agent's result.json, parsed: a claim, used for nothing but the record and its note."""

    @property
    def test_files(self) -> list[str]:
        """Python test modules the change adds or modifies (what fail-to-pass runs on the base)."""
        return [c.path for c in self.changes if c.status != "D" and _is_test_module(c.path)]


@dataclass(frozen=True, slots=True)
class ChangedPath:
    """One path the candidate changes: ``A`` added, ``M``/``T`` modified, ``D`` deleted."""

    path: str
    status: str
    oid: str | None
    """The new blob id (None for a deletion)."""
    executable: bool


def _is_test_module(path: str) -> bool:
    name = posixpath.basename(path)
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


#: Decides a candidate: the judge in a real run (controller/judge.py), a stand-in in unit tests.
Judge = Callable[[Candidate], Verdict]
#: Called with the branch, the commit and the final result right before the branch is written,
#: so a crash between the ref update and the record can be recognised by recovery.
LandingHook = Callable[[str, str, TaskResult], None]


def _agent_claim(agent: TaskResult, exit_code: int | None) -> AgentClaim:
    return AgentClaim(
        status=agent.status,
        summary=agent.summary,
        reason=agent.reason,
        test_results=agent.test_results,
        failed_constraints=[c.id for c in agent.constraints if not c.passed],
        exit_code=exit_code,
    )


def _summary(verdict: Verdict) -> str:
    """One line of the controller's own, from the judge's verdict."""
    tests = verdict.test_results
    coverage = (
        "coverage not measured"
        if tests.coverage_percent is None
        else f"coverage {tests.coverage_percent:.1f}%"
    )
    passed = sum(c.passed for c in verdict.constraints)
    return (
        f"judge: {passed}/{len(verdict.constraints)} checks passed; tests {tests.passed} passed, "
        f"{tests.failed} failed, {tests.skipped} skipped of {tests.total}; {coverage}"
    )


def _fresh_folder(workspace: Path) -> Path:
    if workspace.is_symlink() or not workspace.is_dir():
        raise _refuse(IngestRefusal.WORKSPACE, f"{workspace} is not a folder")
    return Path(tempfile.mkdtemp(prefix="ingest-", dir=workspace))


def ingest(
    *,
    repo: Path,
    plan: MountPlan,
    policy: Policy,
    task_key: str,
    subject: str,
    result_bytes: bytes,
    bundle_bytes: bytes | None,
    workspace: Path,
    identity: CommitIdentity,
    commit_date: datetime,
    judge: Judge,
    agent_exit_code: int | None = 0,
    on_landing: LandingHook | None = None,
) -> IngestedResult:
    """Check a sandbox's output, have ``judge`` decide the candidate, and land it if it passed.

    ``result_bytes`` and ``bundle_bytes`` are the files' bytes as the backend read them
    (``bundle_bytes`` None when the runner wrote no bundle). ``workspace`` is a folder the
    controller owns; a fresh subfolder is made in it and removed afterwards. ``subject`` is
    the commit subject the controller built from the task; nothing the sandbox wrote goes
    into the commit's message. ``commit_date`` must be time-zone aware; passing the run's
    recorded date makes a replay give the same commit id. The status, test results and
    constraints of the result are the judge's verdict; the agent's result is kept in
    ``result.agent`` as its claim. Raises IngestionError (message ``<reason>: <detail>``,
    reasons in IngestRefusal) for anything refused, and leaves the target repository's refs
    untouched then; RepositoryError if ``repo`` or the plan's base commit is unusable;
    ValueError for a naive ``commit_date`` or a subject that is not one clean line.
    """
    git_date = _git_date(commit_date)  # a naive date is a caller's bug: fail before any work
    _checked_host_subject(subject)
    agent = _parse_result(result_bytes, policy=policy, task_key=task_key)
    _check_plan(plan, policy, task_key)
    target = _TargetRepo(repo)
    target.require_sha1()
    real_base = list_tree(repo, plan.base_commit)
    _check_staged_against_base(plan, real_base)

    changes: list[_Change] = []
    sandbox_commit: str | None = None
    candidate_commit: str | None = None
    # With no change there is nothing to judge; the agent's own account says why, as its claim.
    said = f"{agent.status}" + (f": {agent.reason}" if agent.reason else "")
    verdict = Verdict(
        status="failed",
        reason="the sandbox committed no change"
        + ("" if agent.status == "succeeded" else f"; reported by the sandbox: {said[:300]}"),
    )
    branch: str | None = None
    if bundle_bytes is not None:
        folder = _fresh_folder(workspace)
        try:
            work = _check_bundle(
                folder, bundle_bytes, plan=plan, policy=policy, real_base=real_base
            )
            changes, sandbox_commit = work.changes, work.sandbox_commit
            if changes:
                candidate_commit = _write_commit(
                    target,
                    folder,
                    work,
                    base_commit=plan.base_commit,
                    subject=subject,
                    identity=identity,
                    git_date=git_date,
                )
                verdict = judge(
                    Candidate(
                        repo=repo,
                        base_commit=plan.base_commit,
                        commit=candidate_commit,
                        changes=tuple(
                            ChangedPath(
                                c.path,
                                c.status,
                                c.new_oid if c.adds_content else None,
                                c.new_mode == MODE_EXECUTABLE,
                            )
                            for c in changes
                        ),
                        agent=agent,
                    )
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    succeeded = verdict.status == "succeeded" and candidate_commit is not None
    result = TaskResult(
        task_key=task_key,
        status="succeeded" if succeeded else "failed",
        reason=None if succeeded else (verdict.reason or "the judge did not pass the change"),
        files_created=[c.path for c in changes if c.status == "A"],
        files_modified=[c.path for c in changes if c.status in ("M", "T")],
        # Only a landed commit is reported: a failed candidate stays on no branch.
        git_commit=candidate_commit if succeeded else None,
        summary=_summary(verdict) if verdict.constraints else "",
        test_results=verdict.test_results,
        # The plan's refusals are the controller's own facts: reported whatever the agent says.
        missing_context=list(dict.fromkeys([*plan.missing_context, *agent.missing_context]))[:2000],
        constraints=verdict.constraints,
        rounds=agent.rounds,
        warnings=verdict.warnings,
        agent=_agent_claim(agent, agent_exit_code),
    )
    if succeeded and candidate_commit is not None:
        if on_landing is not None:
            on_landing(BRANCH_PREFIX + task_key, candidate_commit, result)
        branch = _set_branch(target, task_key, candidate_commit)
    log.info(
        "ingested %s: %s, %d created, %d modified, %d deleted, commit %s",
        task_key,
        result.status,
        len(result.files_created),
        len(result.files_modified),
        sum(1 for c in changes if c.status == "D"),
        result.git_commit or "none",
    )
    return IngestedResult(
        result=result,
        branch=branch,
        base_commit=plan.base_commit,
        files_deleted=[c.path for c in changes if c.status == "D"],
        sandbox_commit=sandbox_commit,
        candidate_commit=candidate_commit,
    )
