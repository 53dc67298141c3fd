"""One run from RunConfig to ``/out``: scratch base commit, the loop, the work commit, bundle, result.

:func:`execute` returns the TaskResult or raises; :func:`run_and_report`
always writes a result.json (a failed one, with the reason, when anything
raised) and says whether it managed to.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from taskbox_runner.checks import CheckRequest, PackageVerifier
from taskbox_runner.loop import GenerateVerifyLoop, LoopLimits, LoopOutcome, make_client
from taskbox_runner.prompt import build_prompt
from taskbox_runner.result import (
    build_result,
    failure_result,
    merge_missing,
    write_result,
)
from taskbox_runner.scratch_git import ScratchRepo, WorkCommit
from taskbox_runner.tools import AccessRules, MissingContextLog, WorkspaceEditor
from taskbox_wire.contract import commit_subject
from taskbox_wire.paths import BUNDLE_FILE

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    import anthropic

    from taskbox_runner.checks import VerificationOutcome, Verifier
    from taskbox_wire.config import RunConfig
    from taskbox_wire.contract import TaskResult

logger = logging.getLogger(__name__)

#: Seconds kept back from the wall-clock budget for the commit, the bundle and result.json.
FINISH_RESERVE_SECONDS = 20.0
#: Longest single test run the checks are given (the verifier's own default).
MAX_TEST_SECONDS = 600.0


class RunInterruptedError(BaseException):
    """SIGTERM arrived (the controller is stopping the sandbox).

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the
    way swallows it before the failed result is written.
    """


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise RunInterruptedError(f"stopped by signal {signal.Signals(signum).name}")


def finish_reserve(wall_clock_seconds: float) -> float:
    """The part of the wall-clock budget kept for finishing: 20 s, or a tenth of a short budget."""
    return min(FINISH_RESERVE_SECONDS, wall_clock_seconds / 10)


def execute(
    config: RunConfig,
    *,
    verifier: Verifier | None = None,
    client: anthropic.Anthropic | None = None,
    missing: MissingContextLog | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TaskResult:
    """Run the task end to end and return its result (the caller writes it).

    ``missing`` collects the model's missing-context reports; pass one to keep
    them when this raises.
    """
    started = clock()
    budget = config.budget
    (config.outdir / BUNDLE_FILE).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="taskbox-run-") as tmp:
        root = Path(tmp)
        repo = ScratchRepo.init(root / "scratch.git", config.workdir)
        repo.commit_base(config.base_files, config.base_modes, task_key=config.task.task_key)
        base_config_dir = root / "base-config"
        copied = repo.export_base_configs(base_config_dir)
        logger.info("base configuration for the checks: %s", ", ".join(copied) or "none")
        scratch_dir = root / "verify"
        scratch_dir.mkdir()

        rules = AccessRules.from_plan(config.readable_paths, config.owns_paths)
        editor = WorkspaceEditor(config.workdir, rules)
        missing = missing if missing is not None else MissingContextLog()
        check: Verifier = verifier if verifier is not None else PackageVerifier()
        base_tests = check.index_base_tests(config.workdir)
        deadline = started + budget.wall_clock_seconds - finish_reserve(budget.wall_clock_seconds)

        def verify_now() -> VerificationOutcome:
            return check(
                CheckRequest(
                    workdir=config.workdir,
                    owns_paths=tuple(config.owns_paths),
                    openapi_path=config.openapi_path,
                    coverage_threshold=config.coverage_threshold,
                    base_config_dir=base_config_dir,
                    scratch_dir=scratch_dir,
                    changed_files=tuple(editor.written_paths),
                    base_tests=base_tests,
                    test_timeout_seconds=max(1.0, min(MAX_TEST_SECONDS, deadline - clock())),
                )
            )

        limits = LoopLimits(
            max_rounds=budget.max_rounds,
            max_total_tokens=budget.max_total_tokens,
            max_tokens_per_request=budget.max_tokens_per_request,
            deadline=started
            + budget.wall_clock_seconds
            - finish_reserve(budget.wall_clock_seconds),
        )
        model_client = client if client is not None else make_client(config)
        try:
            loop = GenerateVerifyLoop(
                client=model_client,
                model=budget.model,
                prompt=build_prompt(config, editor),
                editor=editor,
                missing_context=missing,
                verify=verify_now,
                limits=limits,
                clock=clock,
            )
            outcome: LoopOutcome = loop.run()
        finally:
            if client is None:  # ours to close: its connection pool holds the gateway socket
                model_client.close()

        commit: WorkCommit | None = repo.commit_work(
            [p for p in editor.written_paths if rules.may_write(p)],
            message=commit_subject(
                config.task.task_key, config.task.description, config.owns_paths
            ),
        )
        if commit is not None:
            repo.write_bundle(config.outdir / BUNDLE_FILE)
        return build_result(
            task_key=config.task.task_key,
            outcome=outcome,
            commit=commit,
            missing_context=merge_missing(config.missing_context, missing.entries),
        )


def run_and_report(
    config: RunConfig,
    *,
    verifier: Verifier | None = None,
    client: anthropic.Anthropic | None = None,
) -> bool:
    """Execute and write result.json whatever happens; False only when no result could be written."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    # Signal handlers can only be set on the main thread (tests may run this elsewhere).
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if on_main_thread else None
    missing = MissingContextLog()
    try:
        try:
            result = execute(config, verifier=verifier, client=client, missing=missing)
        except (Exception, RunInterruptedError) as exc:
            logger.exception("the run failed")
            detail = str(exc)[:500]
            result = failure_result(
                config.task.task_key,
                f"runner error: {type(exc).__name__}: {detail}"
                if detail
                else f"runner error: {type(exc).__name__}",
                missing_context=merge_missing(config.missing_context, missing.entries),
            )
        try:
            write_result(config.outdir, result)
        except OSError:
            logger.exception("could not write %s", config.outdir)
            return False
        return True
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
