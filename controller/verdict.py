"""The verdict on a candidate commit: the judge's two reports merged, then settled with what the controller saw.

Pure decisions, no I/O. The judge runs the verifier in one fresh sandbox
(controller/judge.py): first the *static* checks, which never execute a file the
model wrote, and whose report is sealed on the container's output (one framed
line under a one-time key, :func:`open_sealed_report`) before any model code
runs; then the *dynamic* checks, which run the tests. Both reports are parsed as
untrusted bytes. The static report can only fail a constraint, never pass one
the dynamic report failed: each constraint passes only when both passed it. Then :func:`settle` lowers
the verdict with the facts the controller holds about the agent's sandbox (its
exit status, its own last verdict, the status it claimed): a task succeeds
only when the judge passed every check and nothing the controller saw says
otherwise. No status but ``succeeded`` or ``failed`` comes out of here; only
the controller itself sets ``timeout``, ``cancelled`` or ``error``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from taskbox_wire.contract import (
    ConstraintReport,
    SafeText,
    TaskResult,
    TestResults,
    parse_untrusted_json,
)
from taskbox_wire.paths import JUDGE_STATIC_PREFIX

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The ten constraints' names as the worker brief gives them (the judge's reports name them too).
CONSTRAINT_IDS = tuple(range(1, 11))
#: Evidence lines kept per constraint after merging the two phases.
MAX_EVIDENCE = 60
#: Warnings kept in the result.
MAX_WARNINGS = 100


class PhaseReport(BaseModel):
    """One judge phase's report as its sandbox wrote it (``verify.VerificationReport`` JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    framework: Annotated[str, StringConstraints(max_length=20)]
    test_results: TestResults
    constraints: list[ConstraintReport] = Field(min_length=10, max_length=10)
    warnings: list[SafeText] = Field(default_factory=list, max_length=500)


class Verdict(BaseModel):
    """What the controller concluded about a candidate; the result's status and checks come from here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["succeeded", "failed"]
    reason: SafeText | None = None
    test_results: TestResults = Field(default_factory=TestResults)
    constraints: list[ConstraintReport] = Field(default_factory=list, max_length=10)
    warnings: list[SafeText] = Field(default_factory=list, max_length=MAX_WARNINGS)

    @property
    def failed_constraints(self) -> list[ConstraintReport]:
        """The constraints that did not pass, in id order."""
        return [c for c in self.constraints if not c.passed]


class JudgeOutputError(ValueError):
    """A judge phase's output is missing, too large, or not a well-formed report."""


def parse_phase_report(raw: bytes, *, phase: str, max_bytes: int) -> PhaseReport:
    """Parse one phase's report bytes strictly; raise JudgeOutputError with a reason."""
    try:
        data = parse_untrusted_json(raw, max_bytes=max_bytes)
        report = PhaseReport.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise JudgeOutputError(
            f"the {phase} report does not match its schema (first at {where}: {first['msg']})"
        ) from exc
    except ValueError as exc:
        raise JudgeOutputError(f"the {phase} report is unusable: {exc}") from exc
    ids = [c.id for c in report.constraints]
    if ids != list(CONSTRAINT_IDS):
        raise JudgeOutputError(f"the {phase} report must give constraints 1..10 in order")
    return report


#: Hex characters of the HMAC-SHA256 that follows the static report's prefix.
MAC_HEX_CHARS = 64


def open_sealed_report(line: str, *, key: bytes, max_bytes: int) -> PhaseReport:
    """The static report from its framed line (``<prefix><mac> <json>``); raise JudgeOutputError.

    The MAC is HMAC-SHA256 of the JSON under the run's one-time key, which no model code
    can know: a line the judge did not write, or that other output was mixed into, fails.
    """
    if not line.startswith(JUDGE_STATIC_PREFIX):
        raise JudgeOutputError("the static report's line does not start with its prefix")
    mac, sep, payload = line[len(JUDGE_STATIC_PREFIX) :].partition(" ")
    if not sep or len(mac) != MAC_HEX_CHARS:
        raise JudgeOutputError("the static report's line is not framed as the judge frames it")
    try:
        data = payload.encode("ascii")
    except UnicodeEncodeError as exc:
        raise JudgeOutputError("the static report's line is not ASCII") from exc
    expected = hmac.new(key, data, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac):
        raise JudgeOutputError("the static report's seal does not match: it is not the judge's")
    return parse_phase_report(data, phase="static", max_bytes=max_bytes)


def _merged_evidence(static: ConstraintReport, dynamic: ConstraintReport) -> list[str]:
    """Static evidence first (it was sealed first); a line both phases gave appears once."""
    lines = list(dict.fromkeys([*static.evidence, *dynamic.evidence]))
    if len(lines) > MAX_EVIDENCE:
        lines = [*lines[: MAX_EVIDENCE - 1], f"... and {len(lines) - MAX_EVIDENCE + 1} more"]
    return lines


def merge_phases(static: PhaseReport, dynamic: PhaseReport | None) -> Verdict:
    """Both phases' reports as one verdict; a constraint passes only if every phase that ran passed it.

    ``dynamic`` is None when the dynamic phase produced no usable report: every
    constraint then fails, since the tests never ran where the controller could see.
    """
    constraints = []
    for s in static.constraints:
        d = dynamic.constraints[s.id - 1] if dynamic is not None else None
        passed = s.passed and d is not None and d.passed
        evidence = _merged_evidence(s, d) if d is not None else list(s.evidence)
        constraints.append(
            ConstraintReport(id=s.id, name=s.name, passed=passed, evidence=evidence[:MAX_EVIDENCE])
        )
    warnings = list(dict.fromkeys([*static.warnings, *(dynamic.warnings if dynamic else [])]))
    failed = [c for c in constraints if not c.passed]
    status: Literal["succeeded", "failed"] = "failed" if failed or dynamic is None else "succeeded"
    reason = None
    if dynamic is None:
        reason = "the judge's test phase gave no usable report"
    elif failed:
        reason = "the judge's checks failed: " + _describe_failures(failed)
    return Verdict(
        status=status,
        reason=reason,
        test_results=dynamic.test_results if dynamic is not None else TestResults(),
        constraints=constraints,
        warnings=warnings[:MAX_WARNINGS],
    )


def _describe_failures(failed: Sequence[ConstraintReport]) -> str:
    """``5 (All tests pass): <first evidence line>; 9 (...)``, short enough for one reason line."""
    parts = []
    for c in failed:
        first = next((line for line in c.evidence[1:2]), c.evidence[0] if c.evidence else "")
        parts.append(f"{c.id} ({c.name})" + (f": {first[:200]}" if first else ""))
    return "; ".join(parts)


def settle(
    verdict: Verdict,
    *,
    agent: TaskResult,
    agent_exit_code: int | None,
    agent_last_checks_failed: bool,
) -> Verdict:
    """Lower the judge's verdict with what the controller saw of the agent's sandbox.

    A passing verdict stays ``succeeded`` only if the agent's sandbox exited 0, its
    own last verification (from its progress events) did not report failing checks,
    and its result claimed ``succeeded``. A claim of ``cancelled``, ``error`` or
    ``timeout`` is reported as "reported by the sandbox: ...": only the controller
    sets those statuses. When the agent's checks passed but the judge's failed,
    the reason says so.
    """
    reasons: list[str] = []
    if agent_exit_code != 0:
        reasons.append(f"the agent's sandbox exited with status {agent_exit_code}")
    if agent_last_checks_failed:
        reasons.append("the agent's own last checks failed")
    if agent.status != "succeeded":
        said = f"{agent.status}" + (f": {agent.reason}" if agent.reason else "")
        reasons.append(f"reported by the sandbox: {said[:300]}")
    if verdict.status == "failed":
        agent_passed = agent.status == "succeeded" and all(c.passed for c in agent.constraints)
        prefix = "the agent's checks passed; " if agent_passed and not reasons else ""
        why = verdict.reason or "the judge's checks failed"
        return verdict.model_copy(update={"reason": (prefix + why)[:2000]})
    if reasons:
        return verdict.model_copy(
            update={
                "status": "failed",
                "reason": "the judge's checks passed, but " + "; ".join(reasons),
            }
        )
    return verdict
