"""Run one harness subprocess with a deadline, a clean environment and bounded output.

Each tool runs in its own process group so a deadline kills what the code under
test started too; output goes to files in the scratch folder, not pipes, so a
chatty test cannot fill memory or block on a full pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

logger = logging.getLogger(__name__)

#: Environment variables that would let something other than the harness steer pytest or coverage.
_DROPPED_PREFIXES = ("PYTEST_", "COV_CORE_", "COVERAGE_")

#: Characters of each stream kept for evidence.
OUTPUT_TAIL = 20_000


@dataclass(frozen=True)
class Completed:
    """How a harness subprocess ended."""

    returncode: int | None
    """``None`` when the process was killed at the deadline."""
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        """Whether the deadline killed it."""
        return self.returncode is None

    def last_line(self) -> str:
        """The last non-empty line of stderr (else stdout): usually the error that matters."""
        for stream in (self.stderr, self.stdout):
            lines = [line.strip() for line in stream.splitlines() if line.strip()]
            if lines:
                return lines[-1][:500]
        return ""


class Launch(Protocol):
    """How a harness subprocess is run: :func:`run_bounded`, or a warm start standing in for it."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        timeout: float,
        output_dir: Path,
        label: str,
    ) -> Completed:
        """Run ``argv`` to completion, or kill it at ``timeout`` seconds (``returncode`` None)."""
        ...


def harness_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without pytest/coverage steering variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    if "PYTHONPYCACHEPREFIX" not in env:
        # Keep __pycache__ folders out of the (possibly committed) owned paths.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def run_bounded(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    output_dir: Path,
    label: str,
) -> Completed:
    """Run ``argv`` to completion or kill its process group at ``timeout`` seconds."""
    out_path, err_path = output_paths(output_dir, label)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return wait_bounded(proc, timeout=timeout, output_dir=output_dir, label=label)


def output_paths(output_dir: Path, label: str) -> tuple[Path, Path]:
    """Where a harness subprocess labelled ``label`` writes its stdout and stderr."""
    return output_dir / f"{label}.stdout", output_dir / f"{label}.stderr"


def wait_bounded(
    proc: subprocess.Popen[bytes], *, timeout: float, output_dir: Path, label: str
) -> Completed:
    """Wait for ``proc`` (started in a session of its own, writing to :func:`output_paths`);
    kill its process group at ``timeout`` seconds; its exit status and the tails of its output."""
    try:
        returncode: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s passed its %.0f s deadline; killing its process group", label, timeout)
        kill_group(proc)
        returncode = None
    out_path, err_path = output_paths(output_dir, label)
    return Completed(returncode, tail(out_path), tail(err_path))


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole group (it was started in a session of its own) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path) -> str:
    """The last ``OUTPUT_TAIL`` bytes of an output file, decoded."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - OUTPUT_TAIL))
        return handle.read().decode("utf-8", errors="replace")
