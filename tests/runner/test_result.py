"""result.json: what the runner reports and how it writes it."""

from __future__ import annotations

from pathlib import Path

from taskbox_runner.loop import LoopOutcome, TokenUsage
from taskbox_runner.result import build_result, failure_result, merge_missing, write_result
from taskbox_runner.scratch_git import WorkCommit

from taskbox_wire.contract import ConstraintReport, parse_untrusted_result
from tests.runner.conftest import FakeReport, failing_report, passing_report

SHA = "a" * 40
COMMIT = WorkCommit(sha=SHA, files_created=["app/x.py"], files_modified=["app/main.py"])


def outcome(
    report: FakeReport | None, *, passed: bool, reason: str | None = None, stale: bool = False
) -> LoopOutcome:
    """A loop outcome with the given report."""
    return LoopOutcome(
        passed=passed,
        reason=reason,
        report=report,
        rounds=2,
        model_calls=5,
        usage=TokenUsage(input_tokens=100, output_tokens=50, cache_read_input_tokens=900),
        final_text="Implemented the\nroute.",
        stale_report=stale,
    )


def test_success_carries_commit_tests_and_constraints() -> None:
    """A passing loop with a commit gives status succeeded, the counts, ten constraints and no reason."""
    result = build_result(
        task_key="BE-1",
        outcome=outcome(passing_report(), passed=True),
        commit=COMMIT,
        missing_context=[],
    )
    assert result.status == "succeeded"
    assert result.reason is None
    assert result.git_commit == SHA
    assert result.files_created == ["app/x.py"]
    assert result.test_results.coverage_percent == 91.5
    assert len(result.constraints) == 10
    assert "Checks passed after 2 round(s) (fastapi)." in result.summary
    assert "Model's note: Implemented the route." in result.summary


def test_failure_keeps_the_work_and_says_why() -> None:
    """A failing loop still reports its commit, with status failed and the loop's reason."""
    result = build_result(
        task_key="BE-1",
        outcome=outcome(
            failing_report(), passed=False, reason="the token budget is spent", stale=True
        ),
        commit=COMMIT,
        missing_context=["a.py — needed"],
    )
    assert result.status == "failed"
    assert result.git_commit == SHA
    assert result.reason is not None
    assert result.reason.startswith("the token budget is spent (the test results predate")
    assert result.test_results.failed == 1
    assert result.missing_context == ["a.py — needed"]


def test_passing_checks_without_changes_is_a_failure() -> None:
    """Checks that pass on an untouched tree do not make a success."""
    result = build_result(
        task_key="BE-1",
        outcome=outcome(passing_report(), passed=True),
        commit=None,
        missing_context=[],
    )
    assert result.status == "failed"
    assert result.reason == "the checks passed but the model changed no file"
    assert result.git_commit is None


def test_a_report_that_breaks_the_schema_is_dropped_not_fatal() -> None:
    """Duplicate constraint ids fail TaskResult validation; the result keeps the commit and says so."""
    bad = FakeReport(passed=True, constraints=[ConstraintReport(id=1, name="a", passed=True)] * 2)
    result = build_result(
        task_key="BE-1", outcome=outcome(bad, passed=True), commit=COMMIT, missing_context=[]
    )
    assert result.status == "failed"
    assert result.constraints == []
    assert result.git_commit == SHA
    assert result.reason is not None
    assert "could not be recorded" in result.reason


def test_merge_missing_keeps_order_without_repeats() -> None:
    """The plan's gaps come first, then the model's, each once."""
    assert merge_missing(["a — x", "b — y"], ["b — y", "c — z"]) == ["a — x", "b — y", "c — z"]


def test_write_result_replaces_a_planted_symlink(tmp_path: Path) -> None:
    """result.json is written by rename: a symlink planted there is replaced, its target untouched."""
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "victim.txt"
    target.write_text("keep\n")
    (out / "result.json").symlink_to(target)

    path = write_result(
        out, failure_result("BE-1", "runner error: boom", missing_context=["x — y"])
    )

    assert not path.is_symlink()
    assert target.read_text() == "keep\n"
    parsed = parse_untrusted_result(path.read_bytes())
    assert parsed.status == "failed"
    assert parsed.reason == "runner error: boom"
    assert parsed.missing_context == ["x — y"]
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
