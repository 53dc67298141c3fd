"""The judge inside its sandbox: ``python -P -m taskbox_runner.judge --phase static|tests``.

The controller runs this twice on the candidate commit, in two fresh sandboxes with
no gateway and no model:

- ``static``: ruff and every AST check of the ten constraints. No file of the
  repository is imported or executed, so nothing the model wrote can touch this
  report: it is sealed by the container ending before any model code runs.
- ``tests``: the whole verification (tests, coverage, the contract run) plus
  fail-to-pass (the candidate's tests run on the base tree: one must fail there).
  Model code runs here, so this report is a claim of code under test: the judge
  makes itself non-dumpable (no same-uid process may ptrace it or read its memory),
  kills every other process of the sandbox before writing its report, and the
  controller ANDs it with the static report.

``-P`` keeps ``/work`` off ``sys.path``: a model-written ``pydantic.py`` or
``taskbox_runner/`` there is never imported by the judge itself. The report goes to
``/out/<phase>.json``; the exit status is 0 whenever a report was written.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from taskbox_runner.verify import (
    VerificationReport,
    VerifyContext,
    check_fail_to_pass,
    index_tests,
    verify,
    verify_static,
)
from taskbox_wire.config import JudgeConfig
from taskbox_wire.paths import JUDGE_CONFIG, JUDGE_PHASES, judge_report

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger("taskbox_runner.judge")

DEFAULT_CONFIG = Path(JUDGE_CONFIG)
EXIT_NO_REPORT = 2
#: prctl(2) option: whether the process may be ptraced or dumped by its own uid.
PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """Deny same-uid processes ptrace and /proc/<pid>/mem of this one; False where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def kill_everything_else() -> None:
    """SIGKILL every process this one may signal but itself and init: no model code outlives the tests."""
    with contextlib.suppress(ProcessLookupError):  # nothing else was running
        os.kill(-1, signal.SIGKILL)


def _with_fail_to_pass(
    report: VerificationReport, ctx: VerifyContext, config: JudgeConfig
) -> VerificationReport:
    """Constraint 5 also requires the candidate's tests to fail on the base tree."""
    outcome = check_fail_to_pass(
        ctx, base_workdir=config.fail_to_pass_dir, test_files=list(config.test_files)
    )
    scrub = (str(ctx.scratch_dir), str(config.fail_to_pass_dir), str(config.workdir))
    f2p = outcome.to_report(scrub)
    tests = report.constraints[4]
    merged = tests.model_copy(
        update={
            "passed": tests.passed and f2p.passed,
            "evidence": [*tests.evidence, *f2p.evidence[:50]],
        }
    )
    constraints = [*report.constraints[:4], merged, *report.constraints[5:]]
    return report.model_copy(update={"constraints": constraints})


def judge(config: JudgeConfig, phase: str) -> VerificationReport:
    """Run one phase of the judge on the candidate tree and return its report."""
    scratch = Path(tempfile.mkdtemp(prefix="taskbox-judge-"))
    ctx = VerifyContext(
        workdir=config.workdir,
        owns_paths=list(config.owns_paths),
        openapi_path=config.openapi_path,
        coverage_threshold=config.coverage_threshold,
        base_config_dir=config.base_dir,
        scratch_dir=scratch / "verify",
        changed_files=list(config.changed_files),
        base_tests=index_tests(config.base_dir),
        test_timeout_seconds=config.test_timeout_seconds,
    )
    if phase == "static":
        return verify_static(ctx)
    return _with_fail_to_pass(verify(ctx), ctx, config)


def write_report(outdir: Path, phase: str, report: VerificationReport) -> None:
    """Write the report fresh: whatever stands at its name is removed first, no link followed."""
    path = outdir / judge_report(phase)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(report.model_dump(mode="json"), sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the phase the arguments name; 0 when the report was written."""
    parser = argparse.ArgumentParser(prog="python -P -m taskbox_runner.judge")
    parser.add_argument("--phase", choices=JUDGE_PHASES, required=True)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not make_undumpable():
        logger.warning("could not make the judge non-dumpable")
    try:
        config = JudgeConfig.model_validate_json(args.config.read_bytes())
        report = judge(config, args.phase)
    except Exception:
        logger.exception("the judge's %s phase failed", args.phase)
        return EXIT_NO_REPORT
    if args.phase == "tests":
        kill_everything_else()
    try:
        write_report(config.outdir, args.phase, report)
    except OSError:
        logger.exception("could not write the %s report", args.phase)
        return EXIT_NO_REPORT
    logger.info(
        "%s phase: %d/10 checks passed", args.phase, sum(c.passed for c in report.constraints)
    )
    return 0


if __name__ == "__main__":
    status = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
