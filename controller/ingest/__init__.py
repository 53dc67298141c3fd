"""Trusted ingestion: check a sandbox's ``result.json`` and git bundle, have the judge decide, land the commit on ``taskbox/<key>``.

Everything that arrives is hostile until checked. The bundle is only ever fetched into a bare
repository this module creates; the final commit is written with plumbing on the real base commit.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from controller.gitrepo import MODE_EXECUTABLE, MODE_FILE, list_tree
from controller.ingest.bundle import BUNDLE_REF, check_bundle
from controller.ingest.git import TargetRepo
from controller.ingest.landing import (
    BRANCH_PREFIX,
    CommitIdentity,
    checked_host_subject,
    git_date_of,
    set_branch,
    write_commit,
)
from controller.ingest.refusals import IngestRefusal, clean, refuse, shown
from controller.verdict import Verdict
from taskbox_wire.contract import TASK_KEY_PATTERN, AgentClaim, TaskResult, parse_untrusted_result

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from controller.gitrepo import TreeEntry
    from controller.ingest.paths import Change
    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy

__all__ = [
    "BRANCH_PREFIX",
    "BUNDLE_REF",
    "Candidate",
    "ChangedPath",
    "CommitIdentity",
    "IngestRefusal",
    "IngestedResult",
    "Judge",
    "LandingHook",
    "ingest",
]

log = logging.getLogger(__name__)


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


def _parse_result(raw: bytes, *, policy: Policy, task_key: str) -> TaskResult:
    try:
        result = parse_untrusted_result(raw, max_bytes=policy.ingestion.max_result_bytes)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        detail = f"result.json does not match the schema ({exc.error_count()} error(s); first at {clean(where, 100)}: {clean(first['msg'], 200)})"
        raise refuse(IngestRefusal.RESULT_INVALID, detail) from exc
    except ValueError as exc:
        raise refuse(IngestRefusal.RESULT_INVALID, clean(str(exc))) from exc
    if result.task_key != task_key:
        raise refuse(
            IngestRefusal.TASK_MISMATCH,
            f"result.json is for task {result.task_key!r}, not {task_key!r}",
        )
    return result


def _check_plan(plan: MountPlan, policy: Policy, task_key: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{40}", plan.base_commit):
        raise refuse(IngestRefusal.PLAN_MISMATCH, "the plan's base commit is not a full commit id")
    if not re.fullmatch(TASK_KEY_PATTERN, task_key) or plan.task_key != task_key:
        raise refuse(
            IngestRefusal.PLAN_MISMATCH,
            f"the mount plan is for task {plan.task_key!r}, not {shown(task_key)}",
        )
    if plan.policy_digest != policy.digest():
        raise refuse(
            IngestRefusal.PLAN_MISMATCH,
            f"the mount plan was made under policy {plan.policy_digest}, not {policy.digest()}",
        )


def _check_staged_against_base(plan: MountPlan, real_base: Mapping[str, TreeEntry]) -> None:
    """The plan's staged files must be what the base commit holds (a stale plan is a bug)."""
    for staged in plan.staged:
        entry = real_base.get(staged.path)
        mode = MODE_EXECUTABLE if staged.executable else MODE_FILE
        if entry is None or entry.oid != staged.oid or entry.mode != mode:
            raise refuse(
                IngestRefusal.PLAN_MISMATCH,
                f"staged file {staged.path} is not at base commit {plan.base_commit[:12]} as planned",
            )


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
        raise refuse(IngestRefusal.WORKSPACE, f"{workspace} is not a folder")
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
    git_date = git_date_of(commit_date)  # a naive date is a caller's bug: fail before any work
    checked_host_subject(subject)
    agent = _parse_result(result_bytes, policy=policy, task_key=task_key)
    _check_plan(plan, policy, task_key)
    target = TargetRepo(repo)
    target.require_sha1()
    real_base = list_tree(repo, plan.base_commit)
    _check_staged_against_base(plan, real_base)

    changes: list[Change] = []
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
            work = check_bundle(folder, bundle_bytes, plan=plan, policy=policy, real_base=real_base)
            changes, sandbox_commit = work.changes, work.sandbox_commit
            if changes:
                candidate_commit = write_commit(
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

    # A pass needs checks that passed: a verdict with none (or any failing) never lands.
    succeeded = (
        verdict.status == "succeeded"
        and bool(verdict.constraints)
        and all(c.passed for c in verdict.constraints)
        and candidate_commit is not None
    )
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
        branch = set_branch(target, task_key, candidate_commit)
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
