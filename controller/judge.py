"""The judge: the candidate commit verified in one fresh sandbox, with no gateway and no model.

The agent's own checks are feedback for the model and a claim for the record;
the status, the test results and the ten constraints a task reports come from
here. After ingestion has checked the bundle and written the candidate commit
into the target's objects (on no branch), :class:`CandidateJudge` stages that
commit's tree from objects the controller holds, never from the agent's
staging, and runs the in-sandbox judge once, in one container (``judge``):

1. the static checks (ruff and the AST checks) run first, before any model-written
   file is imported or executed; their report is *sealed* on the container's
   output: one line, ``TASKBOX-JUDGE-STATIC <mac> <json>``, the MAC being
   HMAC-SHA256 under a one-time key the controller left in the out folder and the
   judge removed before any model code ran. :class:`SealedReportReader` takes the
   first such line of the stream and ignores every later one; a missing, cut or
   unsealed first line fails the verdict (:meth:`CandidateJudge.__call__`);
2. then, in the same container, the tests (coverage, the contract run) and,
   concurrently, fail-to-pass; that report is read from ``/out/tests.json`` after
   the container ended.

Both reports are untrusted bytes, merged by :func:`controller.verdict.merge_phases`.
The container gets the agent's image (the repository's dependency layer) and the
same hardening; the gateway mount is missing, and the CPU quota is raised to
:data:`JUDGE_CPUS` (within the policy's maximum) so the two pytest processes overlap.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.errors import SandboxError
from controller.events import RunEvent
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import PHASE_JUDGE, build_container_spec
from controller.sandbox_log import SandboxLog
from controller.staging import Tree, stage_judge
from controller.verdict import (
    MAC_HEX_CHARS,
    JudgeOutputError,
    PhaseReport,
    Verdict,
    merge_phases,
    open_sealed_report,
    parse_phase_report,
)
from taskbox_wire.config import JudgeConfig
from taskbox_wire.paths import JUDGE_STATIC_PREFIX, JUDGE_TESTS_REPORT, judge_command

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from pathlib import Path

    from controller.events import EventSink
    from controller.ingest import Candidate
    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy
    from controller.sandbox.backend import SandboxBackend, SandboxRun

log = logging.getLogger(__name__)

#: CPUs the judge's container asks for (capped by the policy's ``max.cpus``, never below its
#: ``limits.cpus``): the suite and the fail-to-pass run are two pytest processes at once.
JUDGE_CPUS = 2.0
#: Bytes of the one-time key that seals the static report.
KEY_BYTES = 32
#: Share of the wall clock each pytest run may take. The two run at the same time; the static
#: checks before them and the contract run after the suite get the rest.
TEST_SHARE_OF_WALL_CLOCK = 0.6


class SealedReportReader:
    """Reads the judge's output as it streams: the first framed line is the static report.

    Every chunk goes on to ``forward`` (the record's log) unchanged. Lines are
    scanned only until the first one that starts with the prefix has ended; that
    line is checked against the key and everything after it is ignored, since model
    code ran only after the judge had written it. Memory is bounded: a line that
    does not start with the prefix is skipped as soon as that is clear, and a framed
    line longer than the report's cap is refused.
    """

    def __init__(self, *, key: bytes, max_bytes: int, forward: Callable[[str], None]) -> None:
        self._key = key
        self._max_bytes = max_bytes
        self._forward = forward
        self._limit = len(JUDGE_STATIC_PREFIX) + MAC_HEX_CHARS + 1 + max_bytes
        self._parts: list[str] = []
        self._chars = 0
        self._framed = False
        self._skip = False
        self._done = False
        self.report: PhaseReport | None = None
        """The static report, once its line has been read and its seal checked."""
        self.problem: str | None = None
        """Why there is no static report, once that is decided."""

    @property
    def buffered_chars(self) -> int:
        """Characters of the current line held in memory (never over the report's cap)."""
        return self._chars if self._parts else 0

    def __call__(self, chunk: str) -> None:
        """Take one chunk of the container's output, as the engine delivers it."""
        self._forward(chunk)
        start = 0
        while not self._done and start <= len(chunk):
            end = chunk.find("\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            self._take(piece)
            if end < 0 or self._done:
                return
            self._end_line()
            start = end + 1

    def _take(self, piece: str) -> None:
        if self._skip or not piece:
            return
        self._parts.append(piece)
        self._chars += len(piece)
        if not self._framed and self._chars >= len(JUDGE_STATIC_PREFIX):
            joined = "".join(self._parts)
            self._framed = joined.startswith(JUDGE_STATIC_PREFIX)
            self._skip = not self._framed
            self._parts = [joined] if self._framed else []
        if self._chars > self._limit:
            self._decide(None, f"its line is over {self._limit} characters")

    def _end_line(self) -> None:
        if self._framed:
            self._decide("".join(self._parts), None)
        self._parts, self._chars, self._framed, self._skip = [], 0, False, False

    def _decide(self, line: str | None, problem: str | None) -> None:
        self._done = True
        self._parts = []
        if line is not None:
            try:
                self.report = open_sealed_report(line, key=self._key, max_bytes=self._max_bytes)
            except JudgeOutputError as exc:
                problem = str(exc)
        self.problem = problem

    def finish(self) -> None:
        """The output has ended: a framed line still open was cut off; none at all was never written."""
        if self._done:
            return
        self._decide(
            None,
            "its line was cut off before its end" if self._framed else "it was never written",
        )


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
        test_timeout_seconds=max(1.0, policy.limits.wall_clock_seconds * TEST_SHARE_OF_WALL_CLOCK),
    )


def judge_policy(policy: Policy) -> Policy:
    """The run's policy with the CPU quota the judge gets: :data:`JUDGE_CPUS`, within ``max.cpus``.

    Memory, pids and the wall clock stay the run's.
    """
    cpus = max(policy.limits.cpus, min(JUDGE_CPUS, policy.max.cpus))
    return policy.model_copy(update={"limits": policy.limits.model_copy(update={"cpus": cpus})})


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
        hand_over: bool = True,
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
        # False where the engine gives the staged files to the sandbox uid itself (a Pod).
        self._hand_over = hand_over

    def __call__(self, candidate: Candidate) -> Verdict:
        """Stage the candidate, run the judge's container, merge its two reports."""
        verdict = self._judge(candidate)
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

    def _judge(self, candidate: Candidate) -> Verdict:
        tree, fail_to_pass = candidate_trees(self._plan, candidate)
        plan = judge_plan(self._plan, tree)
        config = judge_config(plan, self._policy, candidate, self._run_id)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            staging = stage_judge(
                repo=candidate.repo,
                plan=plan,
                policy=self._policy,
                root=self._stage_root,
                candidate=tree,
                fail_to_pass=fail_to_pass,
                judge_config_json=config.model_dump_json(indent=2),
                judge_key=key,
                hand_over=self._hand_over,
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
        cap = self._policy.ingestion.max_result_bytes
        spec = build_container_spec(
            policy=judge_policy(self._policy),
            plan=plan,
            staging=staging,
            image=self._image,
            run_id=self._run_id,
            command=judge_command(),
            controller_id=self._controller_id,
            phase=PHASE_JUDGE,
        )
        log_sink = SandboxLog(self._record.folder / f"{PHASE_JUDGE}.log", lambda _event: None)
        sealed = SealedReportReader(key=key, max_bytes=cap, forward=log_sink)
        try:
            run: SandboxRun = run_sandbox(
                self._backend,
                spec,
                collect={JUDGE_TESTS_REPORT: cap},
                on_log=sealed,
                cancel=self._cancel,
                on_created=lambda inspected: self._record.write_json(
                    f"container-{PHASE_JUDGE}.json", inspected
                ),
            )
        finally:
            log_sink.close()
        sealed.finish()
        outcome = run.outcome
        self._sink(RunEvent(stage=PHASE_JUDGE, message=outcome.describe()))
        static = sealed.report
        if run.cancelled:
            return Verdict(status="failed", reason="the judge was cancelled")
        if static is None:
            # Fail closed: without the sealed report nothing the container said is believed.
            why = sealed.problem or "it was never written"
            return Verdict(
                status="failed",
                reason=f"the judge's static report is missing or unusable ({why}); "
                f"the judge's container: {outcome.describe()}",
            )
        self._record.write_json(f"{PHASE_JUDGE}-static.json", static.model_dump(mode="json"))
        dynamic = self._tests_report(run)
        if isinstance(dynamic, str):
            verdict = merge_phases(static, None)
            return verdict.model_copy(update={"reason": f"the judge's tests {dynamic}"})
        self._record.write_json(f"{PHASE_JUDGE}-tests.json", dynamic.model_dump(mode="json"))
        return merge_phases(static, dynamic)

    def _tests_report(self, run: SandboxRun) -> PhaseReport | str:
        """The tests report the container left in its out folder, or what went wrong."""
        outcome = run.outcome
        if outcome.timed_out:
            return f"{outcome.describe()}"
        if outcome.exit_code != 0:
            return f"ended with {outcome.describe()}"
        raw = run.output.files.get(JUDGE_TESTS_REPORT)
        if raw is None:
            why = run.output.refused.get(JUDGE_TESTS_REPORT, "it was not written")
            return f"gave no report: {why}"
        try:
            return parse_phase_report(
                raw, phase="tests", max_bytes=self._policy.ingestion.max_result_bytes
            )
        except JudgeOutputError as exc:
            return f"gave an unusable report: {exc}"
