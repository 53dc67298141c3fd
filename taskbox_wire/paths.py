"""Where things are inside every sandbox, the output file names, and the commands that run there."""

from __future__ import annotations

WORKDIR = "/work"
"""The repository's planned files (read-only, owned paths writable)."""
OUTDIR = "/out"
"""The only other writable place the controller reads back."""
TASKBOX_DIR = "/taskbox"
"""The controller's instructions (read-only)."""
GATEWAY_DIR = "/run/taskbox"
"""The model gateway's socket folder (the agent's sandbox only)."""
RUN_CONFIG = f"{TASKBOX_DIR}/run.json"
"""The agent runner's RunConfig."""
JUDGE_CONFIG = f"{TASKBOX_DIR}/judge.json"
"""The judge's JudgeConfig."""
BASE_DIR = "/base"
"""The judge's planned base tree (read-only)."""
F2P_DIR = "/f2p"
"""The judge's base tree with the candidate's test files laid over it (read-only)."""

RESULT_FILE = "result.json"
"""The agent runner's result, in the out folder."""
BUNDLE_FILE = "result.bundle"
"""The agent runner's git bundle, in the out folder."""

RUNNER_COMMAND = ("python", "-m", "taskbox_runner")
"""The agent runner."""
JUDGE_COMMAND = ("python", "-P", "-m", "taskbox_runner.judge")
"""The judge; ``-P`` keeps /work off sys.path (a model-written module never shadows ours)."""
JUDGE_TESTS_REPORT = "tests.json"
"""The judge's tests report, in the out folder (written after every other process was killed)."""
JUDGE_KEY_FILE = "judge.key"
"""The one-time key the static report is sealed with, in the out folder: read and removed by
the judge before any model-written file runs."""
JUDGE_STATIC_PREFIX = "TASKBOX-JUDGE-STATIC "
"""Starts the line that carries the static report on the judge's output:
``<prefix><hex HMAC-SHA256 of the JSON under the key> <JSON>``, one line, ASCII."""


def judge_command() -> list[str]:
    """The judge's command (one container runs the static checks, then the tests)."""
    return list(JUDGE_COMMAND)
