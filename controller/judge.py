"""The judge: the candidate commit verified in fresh sandboxes, with no gateway and no model.

The agent's own checks are feedback for the model and a claim for the record;
the status, the test results and the ten constraints a task reports come from
here. After ingestion has checked the bundle and written the candidate commit
into the target's objects (on no branch), :class:`CandidateJudge` stages that
commit's tree from objects the controller holds, never from the agent's
staging, and runs the verifier twice through the one sandbox lifecycle:

1. ``judge-static``: ruff and the AST checks; no model-written file is
   imported or executed, and the report is read after the container has ended,
   before any model code runs anywhere;
2. ``judge-tests``: tests, coverage, the contract run and fail-to-pass, in a
   second container with its own out folder.

The reports are untrusted bytes, merged by :func:`controller.verdict.merge_phases`.
Both containers get the agent's image (the repository's dependency layer) and
the same hardening; only the gateway mount is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.errors import SandboxError
from controller.events import RunEvent
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import PHASE_JUDGE_STATIC, PHASE_JUDGE_TESTS, build_container_spec
from controller.sandbox_log import SandboxLog
from controller.staging import JUDGE_TESTS_OUT, Tree, stage_judge
from controller.verdict import (
    JudgeOutputError,
    PhaseReport,
    Verdict,
    merge_phases,
    parse_phase_report,
)
from taskbox_wire.config import JudgeConfig
from taskbox_wire.paths import judge_command, judge_report

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from pathlib import Path

    from controller.events import EventSink
    from controller.ingest import Candidate
    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy
    from controller.sandbox.backend import SandboxBackend, SandboxRun
    from controller.sandbox.spec import StagingPaths

log = logging.getLogger(__name__)

#: Phase names as the in-sandbox judge knows them, by container phase.
_PHASES = {PHASE_JUDGE_STATIC: "static", PHASE_JUDGE_TESTS: "tests"}


def candidate_trees(plan: MountPlan, candidate: Candidate) -> tuple[Tree, Tree]:
    """(the candidate tree, the fail-to-pass tree) from the plan's base files and the checked change.

    Both are limited to what the plan staged plus what the change adds under the
    owned paths: the judge sees no more of the repository than the agent did.
    """
    base: Tree = {s.path: (s.oid, s.executable) for s in plan.staged}
    tree = dict(base)
    for change in candidate.changes:
        if change.oid is None:
            tree.pop(change.path, None)
        else:
            tree[change.path] = (change.oid, change.executable)
    fail_to_pass = dict(base)
    for path in candidate.test_files:
        # A test file may stand where the base had a file it replaces as a folder (or the
        # reverse): the base's entry in the way goes, so the tree stays a tree.
        for other in [
            p for p in fail_to_pass if path.startswith(f"{p}/") or p.startswith(f"{path}/")
        ]:
            del fail_to_pass[other]
        fail_to_pass[path] = tree[path]
    return tree, fail_to_pass


def judge_plan(plan: MountPlan, tree: Tree) -> MountPlan:
    """The plan with the owned files the candidate does not have left out of the writable mounts.

    A writable bind mount needs a source, and a placeholder would be an empty module the
    landed tree does not have: a test importing it must fail in the judge as it would there.
    """
    kept = [e for e in plan.read_write if e.kind == "dir" or e.path in tree]
    return plan.model_copy(update={"read_write": kept})


def judge_config(plan: MountPlan, policy: Policy, candidate: Candidate, run_id: str) -> JudgeConfig:
    """What the judge's sandbox is told (no token: there is no gateway)."""
    return JudgeConfig(
        run_id=run_id,
        owns_paths=plan.owns_paths,
        changed_files=sorted(c.path for c in candidate.changes if c.oid is not None),
        test_files=sorted(candidate.test_files),
        openapi_path=plan.contract,
        coverage_threshold=policy.verification.coverage_threshold,
        # Two pytest runs (the suite, then fail-to-pass) share the container's wall clock.
        test_timeout_seconds=max(1.0, policy.limits.wall_clock_seconds * 0.45),
    )


@dataclass(frozen=True)
class JudgeRecord:
    """Where the judge writes what it saw: the run record's folder, through these callables."""

    folder: Path
    """The run record's folder (``record/``): logs and inspected containers go here."""
    write_json: Callable[[str, object], None]


class CandidateJudge:
    """Decides candidates of one run; the ``judge`` argument of ``controller.ingest.ingest``."""

    def __init__(
        self,
        *,
        backend: SandboxBackend,
        plan: MountPlan,
        policy: Policy,
        image: str,
        run_id: str,
        stage_root: Path,
        record: JudgeRecord,
        sink: EventSink,
        cancel: threading.Event,
        controller_id: str,
    ) -> None:
        self._backend = backend
        self._plan = plan
        self._policy = policy
        self._image = image
        self._run_id = run_id
        self._stage_root = stage_root
        self._record = record
        self._sink = sink
        self._cancel = cancel
        self._controller_id = controller_id

    def __call__(self, candidate: Candidate) -> Verdict:
        """Stage the candidate, run both phases, merge their reports."""
        tree, fail_to_pass = candidate_trees(self._plan, candidate)
        plan = judge_plan(self._plan, tree)
        config = judge_config(plan, self._policy, candidate, self._run_id)
        try:
            staging = stage_judge(
                repo=candidate.repo,
                plan=plan,
                policy=self._policy,
                root=self._stage_root,
                candidate=tree,
                fail_to_pass=fail_to_pass,
                judge_config_json=config.model_dump_json(indent=2),
            )
        except (OSError, SandboxError) as exc:
            # A tree the judge cannot lay out is not one to land.
            return Verdict(
                status="failed", reason=f"the judge could not stage the candidate: {exc}"
            )
        self._record.write_json("judge-config.json", config.model_dump(mode="json"))
        self._sink(
            RunEvent(
                stage="judging",
                message=f"judging {candidate.commit[:12]}: {len(tree)} files, "
                f"{len(config.test_files)} changed test file(s)",
                data={"candidate_commit": candidate.commit},
            )
        )
        static = self._phase(PHASE_JUDGE_STATIC, plan, staging)
        if isinstance(static, str):
            return Verdict(status="failed", reason=f"the judge's static phase {static}")
        # The test phase writes to an out folder of its own: nothing it runs can reach
        # the static report, which was read before it started anyway.
        tests_staging = staging.model_copy(update={"out": staging.root / JUDGE_TESTS_OUT})
        dynamic = self._phase(PHASE_JUDGE_TESTS, plan, tests_staging)
        if isinstance(dynamic, str):
            verdict = merge_phases(static, None)
            return verdict.model_copy(update={"reason": f"the judge's test phase {dynamic}"})
        verdict = merge_phases(static, dynamic)
        self._record.write_json("verdict.json", verdict.model_dump(mode="json"))
        self._sink(
            RunEvent(
                stage="judged",
                message=f"{verdict.status}"
                + (f": {verdict.reason}" if verdict.reason else ": all checks passed"),
                data={"status": verdict.status},
            )
        )
        return verdict

    def _phase(self, phase: str, plan: MountPlan, staging: StagingPaths) -> PhaseReport | str:
        """One judge container from create to remove; its report, or what went wrong."""
        name = _PHASES[phase]
        spec = build_container_spec(
            policy=self._policy,
            plan=plan,
            staging=staging,
            image=self._image,
            run_id=self._run_id,
            command=judge_command(name),
            controller_id=self._controller_id,
            phase=phase,
            owned_writable=phase != PHASE_JUDGE_STATIC,
        )
        report_file = judge_report(name)
        log_sink = SandboxLog(self._record.folder / f"{phase}.log", lambda _event: None)
        try:
            run: SandboxRun = run_sandbox(
                self._backend,
                spec,
                collect={report_file: self._policy.ingestion.max_result_bytes},
                on_log=log_sink,
                cancel=self._cancel,
                on_created=lambda inspected: self._record.write_json(
                    f"container-{phase}.json", inspected
                ),
            )
        finally:
            log_sink.close()
        outcome = run.outcome
        self._sink(RunEvent(stage=phase, message=outcome.describe()))
        if run.cancelled:
            return "was cancelled"
        if outcome.timed_out:
            return f"{outcome.describe()}"
        if outcome.exit_code != 0:
            return f"ended with {outcome.describe()}"
        raw = run.output.files.get(report_file)
        if raw is None:
            why = run.output.refused.get(report_file, "it was not written")
            return f"gave no report: {why}"
        try:
            report = parse_phase_report(
                raw, phase=name, max_bytes=self._policy.ingestion.max_result_bytes
            )
        except JudgeOutputError as exc:
            return f"gave an unusable report: {exc}"
        self._record.write_json(f"{phase}.json", report.model_dump(mode="json"))
        return report
