"""Entry point: ``python -m taskbox_runner [--config /taskbox/run.json]``.

Exit code 0 whenever a result.json was written (a failed run included);
non-zero only when no result could be written at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from taskbox_runner import model_sdk
from taskbox_runner.result import failure_result, write_result
from taskbox_runner.run import run_and_report
from taskbox_wire.config import RunConfig
from taskbox_wire.contract import TASK_KEY_PATTERN

if TYPE_CHECKING:
    from collections.abc import Sequence

    import anthropic

    from taskbox_runner.checks import Verifier

logger = logging.getLogger("taskbox_runner")

DEFAULT_CONFIG = Path("/taskbox/run.json")
DEFAULT_OUTDIR = Path("/out")
MAX_CONFIG_BYTES = 10 * 1024 * 1024
EXIT_NO_RESULT = 2
#: Libraries whose debug logs could show request details; kept at WARNING whatever the level.
QUIET_LOGGERS = ("anthropic", "httpx2", "httpcore2", "httpx", "httpcore")


class SecretRedactor(logging.Filter):
    """Replaces the gateway token in every log record, in case anything ever formats it."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with the secret masked; keep the record."""
        if self._secret:
            message = record.getMessage()
            if self._secret in message:
                record.msg = message.replace(self._secret, "[redacted]")
                record.args = None
        return True


def configure_logging() -> logging.Handler:
    """Log to stderr (the controller streams the container's logs); return the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("TASKBOX_RUNNER_LOG_LEVEL", "INFO").upper()
    root.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def _fallback_target(raw: bytes) -> tuple[str, Path] | None:
    """(task key, outdir) from a run.json that does not validate, to still report the failure."""
    try:
        data = json.loads(raw)
        task = data["task"]
        key = task.get("taskKey", task.get("task_key"))
        outdir = Path(str(data.get("outdir", DEFAULT_OUTDIR)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(key, str) or not re.fullmatch(TASK_KEY_PATTERN, key):
        return None
    return key, outdir


def _load_config(path: Path) -> tuple[RunConfig | None, str, bytes]:
    """The validated config, or None with the reason (never including input values) and the raw bytes."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}", b""
    if len(raw) > MAX_CONFIG_BYTES:
        return None, f"{path} is over {MAX_CONFIG_BYTES} bytes", b""
    try:
        return RunConfig.model_validate_json(raw), "", raw
    except ValidationError as exc:
        # include_input=False: the input holds the gateway token.
        problems = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        return None, f"{path} is not a valid RunConfig: " + "; ".join(problems[:5]), raw


def main(
    argv: Sequence[str] | None = None,
    *,
    verifier: Verifier | None = None,
    client: anthropic.Anthropic | None = None,
) -> int:
    """Run the task in ``--config``; the keyword arguments are seams for tests."""
    parser = argparse.ArgumentParser(prog="python -m taskbox_runner", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the RunConfig JSON")
    args = parser.parse_args(argv)
    handler = configure_logging()
    try:
        config, problem, raw = _load_config(args.config)
        if config is None:
            logger.error("%s", problem)
            target = _fallback_target(raw)
            if target is None:
                return EXIT_NO_RESULT
            try:
                write_result(target[1], failure_result(target[0], problem))
            except OSError:
                logger.exception("could not write the failed result")
                return EXIT_NO_RESULT
            return 0
        handler.addFilter(SecretRedactor(config.gateway_token.get_secret_value()))
        logger.info(
            "run %s: task %s, %d base files, owns %s",
            config.run_id,
            config.task.task_key,
            len(config.base_files),
            ", ".join(config.owns_paths),
        )
        return 0 if run_and_report(config, verifier=verifier, client=client) else EXIT_NO_RESULT
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    # The model SDK's import (1-2 s) runs alongside loading the config and setting up the
    # scratch repository; the loop joins it before the first model call (bench B2).
    if os.environ.get(model_sdk.PRELOAD_ENV, "1") != "0":
        model_sdk.preload()
    status = main()
    # The result is written and flushed; skipping interpreter teardown saves 0.2-0.6 s
    # per task (measured in bench B2), and nothing is left to clean up in a throwaway sandbox.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
