"""The seam between the loop and the verifier (``taskbox_runner.verify``, written separately).

The loop needs only what ``VerificationReport`` offers, so it depends on the
Protocols below: unit tests pass a fake verifier, the runner passes
:class:`PackageVerifier`, the adapter to ``taskbox_runner.verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from taskbox_wire.contract import ConstraintReport, TestResults

BaseTests = dict[str, list[str]]
"""Test ids per test file at the base commit (``verify.index_tests``)."""


class VerificationOutcome(Protocol):
    """What the loop reads from a verification report (``verify.VerificationReport``)."""

    @property
    def framework(self) -> object:
        """The detected web framework (fastapi, django, flask, unknown)."""

    @property
    def test_results(self) -> TestResults:
        """pytest and coverage counts."""

    @property
    def constraints(self) -> Sequence[ConstraintReport]:
        """The verdict on each of the ten constraints."""

    @property
    def warnings(self) -> Sequence[object]:
        """Things worth knowing that do not fail the checks."""

    @property
    def passed(self) -> bool:
        """Whether every check passed."""

    def feedback(self) -> str:
        """One concise, ordered report of the failures, for the model."""


@dataclass(frozen=True)
class CheckRequest:
    """The inputs of one verification: the fields of ``verify.VerifyContext``."""

    workdir: Path
    owns_paths: tuple[str, ...]
    openapi_path: str | None
    coverage_threshold: float
    base_config_dir: Path
    scratch_dir: Path
    changed_files: tuple[str, ...]
    base_tests: Mapping[str, list[str]] | None
    test_timeout_seconds: float


class Verifier(Protocol):
    """Runs the checks; ``index_base_tests`` runs once, before the model writes anything."""

    def index_base_tests(self, workdir: Path) -> BaseTests | None:
        """The tests the repository has at the base (None when not known)."""

    def __call__(self, request: CheckRequest) -> VerificationOutcome:
        """Check the work tree as it is now."""


class PackageVerifier:
    """The real checks of ``taskbox_runner.verify``."""

    def __init__(self) -> None:
        # Imported here, not at the top: the loop's tests run with a fake and need none of it.
        from taskbox_runner import verify  # noqa: PLC0415

        self._verify = verify

    def index_base_tests(self, workdir: Path) -> BaseTests | None:
        """``verify.index_tests`` on the untouched work tree."""
        return self._verify.index_tests(workdir)

    def __call__(self, request: CheckRequest) -> VerificationOutcome:
        """``verify.verify`` with a ``VerifyContext`` built from ``request``."""
        context = self._verify.VerifyContext(
            workdir=request.workdir,
            owns_paths=list(request.owns_paths),
            openapi_path=request.openapi_path,
            coverage_threshold=request.coverage_threshold,
            base_config_dir=request.base_config_dir,
            scratch_dir=request.scratch_dir,
            changed_files=list(request.changed_files),
            base_tests=None if request.base_tests is None else dict(request.base_tests),
            test_timeout_seconds=request.test_timeout_seconds,
        )
        return self._verify.verify(context)
