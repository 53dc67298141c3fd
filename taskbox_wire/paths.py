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
JUDGE_PHASES = ("static", "tests")
"""The judge's phases, in the order they run."""


def judge_command(phase: str) -> list[str]:
    """The judge's command for one phase; ``-P`` keeps /work off sys.path (a model-written module never shadows ours)."""
    if phase not in JUDGE_PHASES:
        raise ValueError(f"no judge phase {phase!r}")
    return ["python", "-P", "-m", "taskbox_runner.judge", "--phase", phase]


def judge_report(phase: str) -> str:
    """The file one judge phase writes in its out folder."""
    if phase not in JUDGE_PHASES:
        raise ValueError(f"no judge phase {phase!r}")
    return f"{phase}.json"
