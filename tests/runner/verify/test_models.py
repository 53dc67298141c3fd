"""The report's boundary: ten constraints from outcomes, and the feedback text the model reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from taskbox_runner.verify.models import (
    CheckOutcome,
    Finding,
    VerificationReport,
    VerifyContext,
    scrub_text,
)

from taskbox_wire.contract import TestResults


def _report(
    failing: dict[int, list[Finding]], warnings: tuple[str, ...] = ()
) -> VerificationReport:
    outcomes = [CheckOutcome(n, f"verdict {n}", failing.get(n, [])) for n in range(1, 11)]
    return VerificationReport(
        framework="fastapi",
        test_results=TestResults(total=3, passed=2, failed=1, skipped=0, coverage_percent=81.25),
        constraints=[o.to_report(("/tmp/scratch", "/work")) for o in outcomes],
        warnings=list(warnings),
    )


def test_feedback_has_a_summary_per_check_then_failed_details() -> None:
    """Ten summary lines in id order, then the failed checks' findings, then warnings."""
    report = _report(
        {5: [Finding("tests/test_a.py", 4, "TB0501", "test_a failed: /work/app/x.py boom")]},
        ("w1",),
    )
    assert not report.passed
    assert report.feedback().splitlines() == [
        "Verification (fastapi): 9/10 checks passed. Tests: 2 passed, 1 failed, 0 skipped of 3; coverage 81.25%.",
        "[PASS] 1. No SQL injection: verdict 1",
        "[PASS] 2. No hardcoded secrets: verdict 2",
        "[PASS] 3. Type hints everywhere: verdict 3",
        "[PASS] 4. Test coverage: verdict 4",
        "[FAIL] 5. All tests pass: verdict 5",
        "[PASS] 6. Contract compliance: verdict 6",
        "[PASS] 7. Pydantic validation: verdict 7",
        "[PASS] 8. No print() in production: verdict 8",
        "[PASS] 9. PEP 8 compliance (ruff check): verdict 9",
        "[PASS] 10. Async consistency: verdict 10",
        "--- 5. All tests pass",
        "tests/test_a.py:4: TB0501 test_a failed: app/x.py boom",
        "--- Warnings",
        "- w1",
    ]


def test_findings_are_sorted_deduplicated_and_capped() -> None:
    """Evidence is the verdict then sorted unique findings, with a count past the cap."""
    findings = [Finding("a.py", n, "R1", "m") for n in range(100, 0, -1)] + [
        Finding("a.py", 1, "R1", "m")
    ]
    evidence = CheckOutcome(9, "v", findings).to_report().evidence
    assert evidence[0] == "v"
    assert evidence[1] == "a.py:1: R1 m"
    assert evidence[-1] == "... and 40 more findings"
    assert len(evidence) == 62


def test_feedback_is_cut_at_the_limit() -> None:
    """A long report keeps whole lines and says how many were left out."""
    report = _report({9: [Finding("a.py", n, "E501", "x" * 50) for n in range(1, 60)]})
    text = report.feedback(limit=1500)
    assert len(text) <= 1500
    assert text.splitlines()[-1].endswith("more lines not shown")


def test_report_needs_exactly_ten_constraints() -> None:
    """Fewer than ten constraints is refused."""
    with pytest.raises(ValidationError):
        VerificationReport(framework="unknown", test_results=TestResults(), constraints=[])


def test_context_refuses_unknown_fields(tmp_path: Path) -> None:
    """The context is a strict boundary model."""
    with pytest.raises(ValidationError):
        VerifyContext(workdir=tmp_path, owns_paths=[], scratch_dir=tmp_path, surprise=1)  # type: ignore[call-arg]


def test_tmp_paths_are_scrubbed() -> None:
    """Workdir and scratch become relative, and any other /tmp path becomes <tmp>."""
    text = (
        "/work/app/x.py:3 vs /tmp/pytest-of-u/pytest-7/test_a0/out.txt and /tmp/scratch/junit.xml"
    )
    assert scrub_text(text, ("/tmp/scratch", "/work")) == "app/x.py:3 vs <tmp> and junit.xml"


def test_notes_follow_the_findings_and_do_not_fail_the_check() -> None:
    """Notes (an ignored pragma) are evidence after the findings, once each, and never a failure."""
    note = "app/x.py:3: '# pragma: no cover' ignored: the harness counts the line anyway"
    clean = CheckOutcome(4, "90% >= 80%", notes=[note, note])
    assert clean.passed
    assert clean.to_report().evidence == ["90% >= 80%", note]
    failing = CheckOutcome(
        4, "50% < 80%", [Finding("app/x.py", 3, "TB0401", "lines")], notes=[note]
    )
    assert failing.to_report().evidence == ["50% < 80%", "app/x.py:3: TB0401 lines", note]
