"""The sandbox's log as the controller reads it: the record's log file and a few vetted events.

Everything here comes from inside the sandbox and is hostile: event lines are parsed
strictly, capped in number, and may only carry the progress stages the runner reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError
from taskbox_runner.progress import EVENT_PREFIX

from controller.events import RunEvent

if TYPE_CHECKING:
    from pathlib import Path

    from controller.events import EventSink

#: Stages a sandbox may report through its log; anything else it prints is only logged.
SANDBOX_EVENT_STAGES = frozenset({"round", "checks", "model", "tool"})
MAX_SANDBOX_EVENTS = 500


class SandboxLog:
    """Turns the sandbox's log into the record's log file and a few vetted events."""

    def __init__(self, path: Path, emit: EventSink) -> None:
        self._file = path.open("a", encoding="utf-8", errors="replace")
        self._emit = emit
        self._pending = ""
        self._events = 0

    def __call__(self, chunk: str) -> None:
        self._file.write(chunk)
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        # The sandbox is hostile: an event line is parsed strictly, capped in number,
        # and may only carry the progress stages the runner is meant to report.
        _, marker, payload = line.partition(EVENT_PREFIX)
        if not marker or self._events >= MAX_SANDBOX_EVENTS or len(payload) > 4096:  # noqa: PLR2004
            return
        try:
            event = RunEvent.model_validate_json(payload)
        except ValidationError:
            return
        if event.stage in SANDBOX_EVENT_STAGES:
            self._events += 1
            self._emit(
                RunEvent(stage=event.stage, message=event.message[:500], data={"from": "sandbox"})
            )

    def close(self) -> None:
        self._file.close()
