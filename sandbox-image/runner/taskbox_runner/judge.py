"""The judge inside its sandbox: ``python -P -m taskbox_runner.judge``, one container, two reports.

The controller runs this once on the candidate commit, in a fresh sandbox with no
gateway and no model. In order:

1. It makes itself non-dumpable (no same-uid process may ptrace it or read its
   memory or file descriptors) and starts a warm pytest interpreter for the tests
   run (:mod:`taskbox_runner.verify.pytest_boot`: it imports pytest, coverage and
   the plugins from the image while the judge works, then waits for its command
   line; it runs no file of the repository before step 3). Then it loads the
   verifier, reads the one-time key the controller left in ``/out/judge.key`` and
   removes that file.
2. **Static checks**: ruff and every AST check of the ten constraints. No file of
   the repository is imported or executed. The report is **sealed** by writing it
   to the container's output as one line, ``TASKBOX-JUDGE-STATIC <mac> <json>``,
   where ``<mac>`` is HMAC-SHA256 of the JSON under the key. Model code runs only
   after that write returned, and cannot know the key (it was removed from the
   disk and lives only in this undumpable process), so it can neither change that
   line nor forge one the controller accepts; the controller takes the first such
   line only.
3. **Dynamic checks**: the tests with coverage, the contract run and Django's
   migration check, while fail-to-pass (the candidate's tests on the base tree,
   one must fail there) runs concurrently in a second pytest process. Model code
   runs here, so this report is a claim of code under test: the judge kills every
   other process of the sandbox before writing it to ``/out/tests.json``, and the
   controller ANDs it with the static report.

``-P`` keeps ``/work`` off ``sys.path``: a model-written ``pydantic.py`` or
``taskbox_runner/`` there is never imported by the judge itself. The exit status
is 0 when both reports were made.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import hashlib
import hmac
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

# The verifier package loads its checks (and pydantic) on first use: main() starts the warm
# pytest interpreters first, so their imports overlap the judge's own.
from taskbox_runner import verify
from taskbox_runner.verify.process import run_bounded
from taskbox_runner.verify.pytest_boot import TESTS_LABEL, WarmPytest
from taskbox_wire.paths import (
    JUDGE_CONFIG,
    JUDGE_KEY_FILE,
    JUDGE_STATIC_PREFIX,
    JUDGE_TESTS_REPORT,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from taskbox_runner.verify import (
        CheckOutcome,
        StaticPhase,
        VerificationReport,
        VerifyContext,
    )
    from taskbox_runner.verify.process import Launch
    from taskbox_wire.config import JudgeConfig

logger = logging.getLogger("taskbox_runner.judge")

DEFAULT_CONFIG = Path(JUDGE_CONFIG)
EXIT_NO_REPORT = 2
#: prctl(2) option: whether the process may be ptraced or dumped by its own uid.
PR_SET_DUMPABLE = 4
#: The key file is a few dozen bytes; anything longer is not the controller's.
MAX_KEY_CHARS = 256
#: Scratch sub-folders of the two pytest runs (the warm interpreters are started for them).
TESTS_SCRATCH = "verify"
BASE_RUN_SCRATCH = "fail-to-pass"


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


def take_key(outdir: Path) -> bytes:
    """Read the one-time key and remove its file, so that no later process finds it; raises OSError/ValueError."""
    path = outdir / JUDGE_KEY_FILE
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        text = os.read(fd, MAX_KEY_CHARS + 1)
    finally:
        os.close(fd)
    path.unlink()
    key = bytes.fromhex(text.decode("ascii").strip())
    if len(key) < 16:  # noqa: PLR2004 - 128 bits at the least
        raise ValueError("the judge's key is too short")
    return key


def sealed_line(report: VerificationReport, key: bytes) -> bytes:
    """The static report as the one framed line the controller reads: prefix, MAC, ASCII JSON."""
    payload = json.dumps(report.model_dump(mode="json"), sort_keys=True, ensure_ascii=True)
    mac = hmac.new(key, payload.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{JUDGE_STATIC_PREFIX}{mac} {payload}\n".encode("ascii")


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a pipe may take a long line in pieces)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def context(config: JudgeConfig, scratch: Path) -> VerifyContext:
    """The verifier's context on the candidate tree, with the base's test index."""
    return verify.VerifyContext(
        workdir=config.workdir,
        owns_paths=list(config.owns_paths),
        openapi_path=config.openapi_path,
        coverage_threshold=config.coverage_threshold,
        base_config_dir=config.base_dir,
        scratch_dir=scratch / TESTS_SCRATCH,
        changed_files=list(config.changed_files),
        base_tests=verify.index_tests(config.base_dir),
        test_timeout_seconds=config.test_timeout_seconds,
    )


def with_fail_to_pass(
    report: VerificationReport, outcome: CheckOutcome, scrub: tuple[str, ...]
) -> VerificationReport:
    """Constraint 5 also requires the candidate's tests to fail on the base tree."""
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


def run_dynamic(
    ctx: VerifyContext,
    config: JudgeConfig,
    static: StaticPhase,
    launch: Launch = run_bounded,
) -> VerificationReport:
    """The dynamic checks, with fail-to-pass in a second pytest process at the same time."""
    f2p_ctx = ctx.model_copy(update={"scratch_dir": ctx.scratch_dir.parent / BASE_RUN_SCRATCH})
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="f2p") as pool:
        # The fail-to-pass run writes only to its own scratch folder and reads the read-only
        # base tree, so it shares nothing with the main run but the CPUs.
        f2p = pool.submit(
            verify.check_fail_to_pass,
            f2p_ctx,
            base_workdir=config.fail_to_pass_dir,
            test_files=list(config.test_files),
            launch=launch,
        )
        report = verify.verify_dynamic(ctx, static, launch=launch)
        outcome = f2p.result()
    scrub = (
        str(ctx.scratch_dir.parent),
        str(config.fail_to_pass_dir),
        str(config.workdir),
    )
    return with_fail_to_pass(report, outcome, scrub)


def write_report(outdir: Path, report: VerificationReport) -> None:
    """Write the tests report fresh: whatever stands at its name is removed first, no link followed."""
    path = outdir / JUDGE_TESTS_REPORT
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(report.model_dump(mode="json"), sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Seal the static report on stdout, then run the tests; 0 when the tests report was written."""
    parser = argparse.ArgumentParser(prog="python -P -m taskbox_runner.judge")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not make_undumpable():
        logger.warning("could not make the judge non-dumpable")
    scratch = Path(tempfile.mkdtemp(prefix="taskbox-judge-"))
    with WarmPytest() as warm:
        # Started first: it imports pytest and coverage while this process loads the verifier
        # and runs the static checks, and runs no file of the repository before its turn. Only
        # the tests run gets one: it is the longer of the two, and a second interpreter
        # importing at the same time slowed the judge's own start more than it saved.
        warm.start(scratch / TESTS_SCRATCH, TESTS_LABEL)
        return _judge(args.config, scratch, warm)


def _judge(config_path: Path, scratch: Path, warm: WarmPytest) -> int:
    """Seal the static report, then run the tests and write their report; the exit status."""
    from taskbox_wire.config import JudgeConfig  # noqa: PLC0415 - pydantic, after the warm start

    try:
        config = JudgeConfig.model_validate_json(config_path.read_bytes())
        key = take_key(config.outdir)
        ctx = context(config, scratch)
        static = verify.static_checks(ctx)
        sealed = sealed_line(verify.static_report(ctx, static), key)
        del key
        # The seal: written whole before any model-written file is imported or run.
        write_all(sys.stdout.fileno(), sealed)
    except Exception:
        logger.exception("the judge's static checks failed")
        return EXIT_NO_REPORT
    logger.info("static checks sealed; running the tests")
    try:
        report = run_dynamic(ctx, config, static, warm.run)
    except Exception:
        logger.exception("the judge's tests failed")
        return EXIT_NO_REPORT
    kill_everything_else()
    try:
        write_report(config.outdir, report)
    except OSError:
        logger.exception("could not write the tests report")
        return EXIT_NO_REPORT
    logger.info(
        "tests phase: %d/10 checks passed (warm pytest: %s)",
        sum(c.passed for c in report.constraints),
        ", ".join(warm.used) or "none",
    )
    return 0


if __name__ == "__main__":
    status = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
