"""The sandbox's log as the controller reads it: the record's log file and a few vetted events.

Everything here comes from inside the sandbox and is hostile: event lines are parsed
strictly, capped in number and length, and may only carry the progress stages the
runner reports. Reading is linear in the bytes read: only the current line is held,
and a line longer than :data:`MAX_LINE_CHARS` is cut and never parsed as an event.
``sandbox.log`` keeps the bytes as the sandbox wrote them (it is the record; show it
with ``cat -v`` or ``less``, not ``cat``); events carry escaped text only (``RunEvent``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.events import RunEvent
from taskbox_wire.progress import EVENT_PREFIX, MAX_MESSAGE_CHARS, STAGES

if TYPE_CHECKING:
    from pathlib import Path

    from controller.events import EventSink

log = logging.getLogger(__name__)

#: Stages a sandbox may report through its log; anything else it prints is only logged.
SANDBOX_EVENT_STAGES = STAGES
MAX_SANDBOX_EVENTS = 500
#: Longest event payload (the JSON after the prefix) that is parsed at all.
MAX_EVENT_PAYLOAD_CHARS = 4096
#: Longest line held while waiting for its newline; a longer line is cut (kept in the log file).
MAX_LINE_CHARS = 2 * MAX_EVENT_PAYLOAD_CHARS
#: Longest event message passed on.
MAX_EVENT_MESSAGE_CHARS = MAX_MESSAGE_CHARS


class SandboxProgress(BaseModel):
    """What a sandbox may say in one progress line: a stage and a message, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    stage: str = Field(max_length=32)
    message: str = Field(max_length=MAX_EVENT_PAYLOAD_CHARS)


class SandboxLog:
    """Turns the sandbox's log into the record's log file and a few vetted events."""

    def __init__(self, path: Path, emit: EventSink) -> None:
        self._file = path.open("a", encoding="utf-8", errors="replace")
        self._emit = emit
        # The current line only, in pieces (never re-joined while it grows), and its length.
        self._partial: list[str] = []
        self._partial_chars = 0
        self._overlong = False
        self._events = 0
        self._write_failed = False

    @property
    def buffered_chars(self) -> int:
        """Characters of the current (unfinished) line held in memory; never over MAX_LINE_CHARS."""
        return self._partial_chars

    def __call__(self, chunk: str) -> None:
        """Take one chunk of the log, as the engine delivers it; never raises."""
        if not self._write_failed:
            try:
                self._file.write(chunk)
            except (OSError, ValueError):
                # Said once: a full disk must not turn every chunk into a log line.
                self._write_failed = True
                log.exception("cannot write the sandbox log; later output is not kept")
        start = 0
        while True:
            end = chunk.find("\n", start)
            if end < 0:
                self._hold(chunk, start, len(chunk))
                return
            self._hold(chunk, start, end)
            self._finish_line()
            start = end + 1

    def _hold(self, chunk: str, start: int, end: int) -> None:
        """Add ``chunk[start:end]`` to the current line, unless the line is already too long."""
        if self._overlong or start == end:
            return
        if self._partial_chars + (end - start) > MAX_LINE_CHARS:
            # Too long to be an event: drop what is held and ignore the rest of the line.
            self._overlong = True
            self._partial.clear()
            self._partial_chars = 0
            return
        self._partial.append(chunk[start:end])
        self._partial_chars += end - start

    def _finish_line(self) -> None:
        line = "".join(self._partial)
        overlong = self._overlong
        self._partial.clear()
        self._partial_chars = 0
        self._overlong = False
        if not overlong:
            self._line(line)

    def _line(self, line: str) -> None:
        # The sandbox is hostile: an event line is parsed strictly, capped in number,
        # and may only carry the progress stages the runner is meant to report.
        _, marker, payload = line.partition(EVENT_PREFIX)
        if not marker or self._events >= MAX_SANDBOX_EVENTS:
            return
        if len(payload) > MAX_EVENT_PAYLOAD_CHARS:
            return
        try:
            progress = SandboxProgress.model_validate_json(payload)
        except ValidationError:
            return
        if progress.stage not in SANDBOX_EVENT_STAGES:
            return
        self._events += 1
        # The event's time is the controller's (RunEvent sets it); its text is escaped there.
        event = RunEvent(
            stage=progress.stage,
            message=progress.message[:MAX_EVENT_MESSAGE_CHARS],
            data={"from": "sandbox"},
        )
        try:
            self._emit(event)
        except Exception:
            # Whatever a consumer does with an event, the log keeps being read.
            log.exception("an event consumer failed on a sandbox event")

    def close(self) -> None:
        """Close the log file (a line without its final newline is in the file, not an event)."""
        self._file.close()
