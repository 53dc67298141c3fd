"""The verdict: two judge reports merged, then settled with what the controller saw (pure logic)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.verdict import (
    JudgeOutputError,
    PhaseReport,
    Verdict,
    merge_phases,
    parse_phase_report,
    settle,
)
from taskbox_wire.contract import ConstraintReport, TaskResult, TestResults

NAMES = [f"check {i}" for i in range(1, 11)]


def report(failing: dict[int, str] | None = None, **tests: int) -> PhaseReport:
    """A phase report where the constraints in ``failing`` fail with that evidence line."""
    failing = failing or {}
    return PhaseReport(
        framework="fastapi",
        test_results=TestResults(**({"total": 3, "passed": 3} | tests)),
        constraints=[
            ConstraintReport(
                id=i,
                name=NAMES[i - 1],
                passed=i not in failing,
                evidence=["verdict line", failing[i]] if i in failing else ["verdict line"],
            )
            for i in range(1, 11)
        ],
        warnings=[],
    )


def agent(status: str = "succeeded", **extra: Any) -> TaskResult:
    """The agent's claim as ingestion parsed it."""
    return TaskResult.model_validate({"task_key": "BE-1", "status": status, **extra})


def test_a_constraint_passes_only_when_both_phases_pass_it() -> None:
    """The static phase's failure cannot be undone by a passing test phase, and the reverse."""
    verdict = merge_phases(report({2: "app/a.py:3: TB0201 secret"}), report({5: "t.py:1: TB0501"}))

    assert verdict.status == "failed"
    assert [c.id for c in verdict.failed_constraints] == [2, 5]
    assert "app/a.py:3: TB0201 secret" in verdict.constraints[1].evidence
    assert verdict.reason is not None
    assert verdict.reason.startswith("the judge's checks failed: 2 (check 2)")


def test_all_passing_phases_succeed_with_the_test_phases_counts() -> None:
    """Test counts come from the test phase; the static phase never ran a test."""
    verdict = merge_phases(report(total=0, passed=0), report(total=7, passed=7))

    assert verdict.status == "succeeded"
    assert verdict.reason is None
    assert verdict.test_results.total == 7


def test_no_test_phase_report_fails_every_constraint() -> None:
    """Without a usable test report nothing passes: the tests never ran where the controller saw."""
    verdict = merge_phases(report(), None)

    assert verdict.status == "failed"
    assert all(not c.passed for c in verdict.constraints)


def test_evidence_is_merged_without_repeats() -> None:
    """A line both phases report appears once, the static one first."""
    verdict = merge_phases(report({9: "a.py:1: F401 unused"}), report({9: "a.py:1: F401 unused"}))

    assert verdict.constraints[8].evidence == ["verdict line", "a.py:1: F401 unused"]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not valid JSON"),
        (b'{"framework": "x", "framework": "y"}', "duplicate key"),
        (json.dumps({"framework": "fastapi"}).encode(), "does not match its schema"),
        (b"[" * 100 + b"]" * 100, "nested"),
        (b"x" * 2000, "over the"),
    ],
    ids=["garbage", "duplicate-key", "missing-fields", "deep", "too-large"],
)
def test_a_bad_phase_report_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    """Report bytes come from a sandbox: parsed strictly, every refusal says why."""
    with pytest.raises(JudgeOutputError, match=why):
        parse_phase_report(raw, phase="tests", max_bytes=1000)


def test_constraints_out_of_order_are_refused() -> None:
    """A report must give constraints 1..10 in order (the merge pairs them by position)."""
    data = report().model_dump(mode="json")
    data["constraints"] = list(reversed(data["constraints"]))

    with pytest.raises(JudgeOutputError, match=r"1\.\.10 in order"):
        parse_phase_report(json.dumps(data).encode(), phase="static", max_bytes=100_000)


PASSING = Verdict(status="succeeded", test_results=TestResults(total=1, passed=1))


@pytest.mark.parametrize(
    ("exit_code", "checks_failed", "claim", "expected"),
    [
        (2, False, agent(), "the agent's sandbox exited with status 2"),
        (None, False, agent(), "the agent's sandbox exited with status None"),
        (0, True, agent(), "the agent's own last checks failed"),
        (0, False, agent("error", reason="boom"), "reported by the sandbox: error: boom"),
        (0, False, agent("cancelled"), "reported by the sandbox: cancelled"),
    ],
    ids=["exit-2", "exit-unknown", "checks-event", "claims-error", "claims-cancelled"],
)
def test_settle_lowers_a_passing_verdict_with_what_the_controller_saw(
    exit_code: int | None, checks_failed: bool, claim: TaskResult, expected: str
) -> None:
    """A pass survives only a clean exit, no failing checks event and a succeeded claim."""
    settled = settle(
        PASSING, agent=claim, agent_exit_code=exit_code, agent_last_checks_failed=checks_failed
    )

    assert settled.status == "failed"
    assert settled.reason is not None
    assert expected in settled.reason


def test_settle_keeps_a_clean_pass() -> None:
    """Nothing the controller saw contradicts the judge: the verdict stands."""
    assert settle(PASSING, agent=agent(), agent_exit_code=0, agent_last_checks_failed=False) == (
        PASSING
    )


def test_settle_says_when_the_agent_and_the_judge_disagree() -> None:
    """The agent's checks passed, the judge's failed: the reason says both."""
    failed = merge_phases(report(), report({5: "t.py:1: TB0501 test failed"}))
    claim = agent(constraints=[{"id": 5, "name": "tests", "passed": True, "evidence": []}])

    settled = settle(failed, agent=claim, agent_exit_code=0, agent_last_checks_failed=False)

    assert settled.status == "failed"
    assert settled.reason is not None
    assert settled.reason.startswith("the agent's checks passed; the judge's checks failed: 5")
