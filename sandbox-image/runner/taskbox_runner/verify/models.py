"""The verifier's boundary: what the loop passes in, what comes back, and the feedback text.

A check produces :class:`CheckOutcome` (a verdict line plus located findings);
the report turns each into a ``ConstraintReport`` whose evidence is that verdict
line followed by ``path:line: RULE message`` strings, and the model's feedback
is rendered from those same strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from taskbox_wire.contract import ConstraintReport, TestResults

Framework = Literal["fastapi", "django", "flask", "unknown"]

#: Findings listed per constraint in the report; the rest are counted in one line.
MAX_FINDINGS_PER_CHECK = 60

#: The ten constraints of the worker brief, by id.
CONSTRAINT_NAMES: dict[int, str] = {
    1: "No SQL injection",
    2: "No hardcoded secrets",
    3: "Type hints everywhere",
    4: "Test coverage",
    5: "All tests pass",
    6: "Contract compliance",
    7: "Pydantic validation",
    8: "No print() in production",
    9: "PEP 8 compliance (ruff check)",
    10: "Async consistency",
}


class VerifyContext(BaseModel):
    """Everything one verification needs; the loop builds it once per round."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workdir: Path
    """The repository root (``/work`` in the sandbox)."""
    owns_paths: list[str]
    """Repository-relative paths the task owns; directories end with ``/``."""
    openapi_path: str | None = None
    """The task's OpenAPI contract file, repository-relative; ``None`` when the task has none."""
    coverage_threshold: float = Field(default=80.0, ge=0, le=100)
    """Minimum line coverage (percent) of the owned, non-test code."""
    base_config_dir: Path | None = None
    """A folder with the base versions of pyproject.toml, ruff.toml, setup.cfg, pytest.ini and
    requirements.txt (those that existed). Tool settings come from here, never from the
    files the model may have changed."""
    scratch_dir: Path
    """A writable folder for the harness's own files (ini, rcfile, junit, coverage JSON)."""
    changed_files: list[str] = Field(default_factory=list)
    """Repository-relative files the model created or modified."""
    base_tests: dict[str, list[str]] | None = None
    """Test ids per test file at the base commit, from :func:`index_tests` run before the model
    wrote anything. ``None``: removed tests cannot be detected (a warning says so)."""
    test_timeout_seconds: float = Field(default=600.0, gt=0)
    """Deadline for the one pytest run (its process group is killed at the deadline)."""


@dataclass(frozen=True, order=True)
class Finding:
    """One located problem: rendered as ``path:line: RULE message``."""

    path: str
    line: int
    rule: str
    message: str

    def render(self) -> str:
        """The evidence string for reports and feedback."""
        return f"{self.path}:{self.line}: {self.rule} {self.message}"


@dataclass
class CheckOutcome:
    """A check's verdict before it becomes a ``ConstraintReport``: it passed when it found nothing."""

    id: int
    verdict: str
    """One line saying what was checked and the result (first evidence entry)."""
    findings: list[Finding] = field(default_factory=list)
    name: str = ""
    notes: list[str] = field(default_factory=list)
    """Evidence that is not a failure (e.g. a pragma that was ignored), shown after the findings."""
    warnings: list[str] = field(default_factory=list)
    """What a reviewer should know that is not a finding; the report's ``warnings`` collects them."""

    @property
    def passed(self) -> bool:
        """No finding, no failure: every way to fail leaves located evidence."""
        return not self.findings

    def to_report(self, scrub: tuple[str, ...] = ()) -> ConstraintReport:
        """The contract model: verdict first, then the findings in order, capped."""
        ordered = sorted(set(self.findings))
        lines = [self.verdict] + [f.render() for f in ordered[:MAX_FINDINGS_PER_CHECK]]
        if len(ordered) > MAX_FINDINGS_PER_CHECK:
            lines.append(f"... and {len(ordered) - MAX_FINDINGS_PER_CHECK} more findings")
        notes = list(dict.fromkeys(self.notes))
        lines += notes[:MAX_FINDINGS_PER_CHECK]
        if len(notes) > MAX_FINDINGS_PER_CHECK:
            lines.append(f"... and {len(notes) - MAX_FINDINGS_PER_CHECK} more notes")
        return ConstraintReport(
            id=self.id,
            name=self.name or CONSTRAINT_NAMES[self.id],
            passed=self.passed,
            evidence=[scrub_text(line, scrub) for line in lines],
        )


_TMP_PATH = re.compile(r"/tmp/[\w.+-]+(?:/[\w.+-]+)*")  # noqa: S108 - matched to be removed


def scrub_text(text: str, prefixes: tuple[str, ...]) -> str:
    """Drop absolute harness paths (workdir, scratch), then any other /tmp path (pytest's tmp_path
    in a failure message), so the feedback is stable from run to run."""
    for prefix in prefixes:
        if prefix:
            text = text.replace(prefix.rstrip("/") + "/", "").replace(prefix, ".")
    return _TMP_PATH.sub("<tmp>", text)


class VerificationReport(BaseModel):
    """The verdict on the ten constraints, the test counts, and warnings for the reviewer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    framework: Framework
    test_results: TestResults
    constraints: list[ConstraintReport] = Field(min_length=10, max_length=10)
    """Exactly ten, ids 1..10 in order; evidence[0] is the verdict line of each."""
    warnings: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether all ten constraints passed."""
        return all(c.passed for c in self.constraints)

    def feedback(self, limit: int = 6000) -> str:
        """One deterministic report for the model: a summary line per check, then details.

        Built only from ``constraints``, ``test_results`` and ``warnings``, so it carries
        no timings and no harness paths; cut at ``limit`` characters with a note.
        """
        results = self.test_results
        coverage = (
            "not measured"
            if results.coverage_percent is None
            else f"{results.coverage_percent:.2f}%"
        )
        ok = sum(c.passed for c in self.constraints)
        summary = (
            f"Verification ({self.framework}): {ok}/10 checks passed. Tests: "
            f"{results.passed} passed, {results.failed} failed, {results.skipped} skipped "
            f"of {results.total}; coverage {coverage}."
        )
        head = [summary]
        head += [
            f"[{'PASS' if c.passed else 'FAIL'}] {c.id}. {c.name}: {c.evidence[0] if c.evidence else ''}"
            for c in self.constraints
        ]
        details: list[str] = []
        for c in self.constraints:
            if not c.passed and len(c.evidence) > 1:
                details.append(f"--- {c.id}. {c.name}")
                details.extend(c.evidence[1:])
        if self.warnings:
            details.append("--- Warnings")
            details.extend(f"- {w}" for w in self.warnings)
        return _cut(head + details, limit)


def _cut(lines: list[str], limit: int) -> str:
    """Whole lines, in order, while they fit in ``limit`` characters with a note on what was cut."""
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    size = 0
    for index, line in enumerate(lines):
        note = f"... {len(lines) - index} more lines not shown"
        if size + len(line) + 1 + len(note) > limit:
            return "\n".join([*kept, note])[:limit]
        kept.append(line)
        size += len(line) + 1
    return text  # not reached: the whole text was longer than the limit
