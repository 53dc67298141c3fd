"""The sandbox log reader: vetted events, escaped text, the controller's timestamps, linear buffering."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from controller.events import RunEvent
from controller.sandbox_log import MAX_LINE_CHARS, SandboxLog

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PREFIX = "::taskbox-event::"
KIB = 1024
MIB = 1024 * KIB


def progress(stage: str, message: str, **extra: object) -> str:
    """One progress line as the runner (or a hostile sandbox) writes it."""
    return PREFIX + json.dumps({"stage": stage, "message": message, **extra}) + "\n"


@pytest.fixture
def events() -> list[RunEvent]:
    return []


@pytest.fixture
def reader(tmp_path: Path, events: list[RunEvent]) -> Iterator[SandboxLog]:
    log = SandboxLog(tmp_path / "sandbox.log", events.append)
    yield log
    log.close()


def test_progress_lines_become_events_with_the_controllers_time(
    reader: SandboxLog, events: list[RunEvent]
) -> None:
    """A progress line becomes an event stamped by the controller when it read the line."""
    before = datetime.now(UTC)
    reader("noise\n" + progress("round", "round 1 ended") + "more noise\n")
    after = datetime.now(UTC)
    assert [(e.stage, e.message, e.data) for e in events] == [
        ("round", "round 1 ended", {"from": "sandbox"})
    ]
    assert before <= events[0].at <= after
    assert events[0].at.tzinfo is not None


def test_a_sandbox_cannot_set_the_time_or_data_of_an_event(
    reader: SandboxLog, events: list[RunEvent]
) -> None:
    """A progress line that carries its own ``at`` or ``data`` is not an event at all."""
    reader(progress("round", "forged time", at="2000-01-01T00:00:00Z"))
    reader(progress("round", "forged data", data={"status": "succeeded"}))
    reader(PREFIX + '{"stage": "round", "message": 5}\n')  # strict: no coercion
    reader(progress("finished", "succeeded"))  # not a stage a sandbox may report
    reader(progress("round", "honest"))
    assert [e.message for e in events] == ["honest"]
    assert events[0].at.year >= 2026


def test_a_consumer_that_fails_does_not_stop_the_reading(
    tmp_path: Path, events: list[RunEvent]
) -> None:
    """An event consumer that raises (the old CLI on ``[/]``) loses nothing after it: log and events go on."""

    def fragile(event: RunEvent) -> None:
        if "[/]" in event.message:
            raise ValueError("closing tag '[/]' has nothing to close")
        events.append(event)

    reader = SandboxLog(tmp_path / "sandbox.log", fragile)
    try:
        reader(progress("tool", "edit docs/[/]") + "after the markup\n" + progress("round", "next"))
        reader("still read\n")
    finally:
        reader.close()
    assert [e.message for e in events] == ["next"]
    log = (tmp_path / "sandbox.log").read_text()
    assert "after the markup" in log
    assert "still read" in log


def test_event_text_is_escaped_and_the_log_file_keeps_the_bytes(
    tmp_path: Path, reader: SandboxLog, events: list[RunEvent]
) -> None:
    """ESC sequences, OSC 8 links and bidi overrides reach events escaped; ``sandbox.log`` is the raw record."""
    hostile = (
        "\x1b[2J\x1b]8;;https://evil.example/\x07click\x1b]8;;\x07 "
        "\x1b[32m   finished  succeeded\x1b[0m \u202eexe.txt\u200b\x9b31m"
    )
    reader(progress("checks", hostile) + hostile + "\n")
    reader.close()
    (event,) = events
    for raw in ("\x1b", "\x07", "\u202e", "\u200b", "\x9b"):
        assert raw not in event.message
        assert raw not in event.model_dump_json()
    assert "\\x1b[2J" in event.message
    assert "\\u202eexe.txt" in event.message
    assert "\\x9b31m" in event.message
    assert hostile in (tmp_path / "sandbox.log").read_text()


def test_a_line_split_across_chunks_is_one_event(
    reader: SandboxLog, events: list[RunEvent]
) -> None:
    """A progress line that arrives in pieces (one character at a time) is still one event."""
    for char in progress("model", "model call 1: end_turn") + progress("round", "r"):
        reader(char)
    assert [e.message for e in events] == ["model call 1: end_turn", "r"]


def test_an_overlong_line_is_cut_and_never_an_event(
    reader: SandboxLog, events: list[RunEvent]
) -> None:
    """A line longer than the cap is never parsed, even when a valid event ends it; the next line is."""
    padding = "x" * (MAX_LINE_CHARS + 10)
    reader(padding[: MAX_LINE_CHARS // 2])
    reader(padding[MAX_LINE_CHARS // 2 :])
    reader(progress("round", "hidden at the end of a long line"))
    reader(progress("round", "seen"))
    assert [e.message for e in events] == ["seen"]
    assert reader.buffered_chars == 0


def test_9_mib_without_a_newline_holds_at_most_one_capped_line(
    tmp_path: Path, reader: SandboxLog, events: list[RunEvent]
) -> None:
    """9 MiB in 1 KiB writes without a newline: the reader never holds more than the line cap.

    The old reader grew one string to 9 MiB and re-split it on every write (quadratic work,
    9 s of CPU); here the memory it allocates while reading stays far below one copy of the log.
    """
    chunk = "A" * KIB
    tracemalloc.start()
    try:
        for _ in range(9 * KIB):
            reader(chunk)
            assert reader.buffered_chars <= MAX_LINE_CHARS
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB, f"{peak} bytes allocated while reading 9 MiB"
    reader("\n" + progress("round", "after the flood"))
    reader.close()
    assert [e.message for e in events] == ["after the flood"]
    assert (tmp_path / "sandbox.log").stat().st_size > 9 * MIB


def test_events_are_capped_in_number(reader: SandboxLog, events: list[RunEvent]) -> None:
    """A sandbox that reports thousands of events gets its first 500 through, no more."""
    reader("".join(progress("tool", f"call {n}") for n in range(2000)))
    assert len(events) == 500
    assert events[-1].message == "call 499"


def test_run_event_escapes_whatever_makes_it() -> None:
    """Any RunEvent, from any part of the controller, carries escaped text in message, stage and data."""
    event = RunEvent(
        stage="finished\x1b[2J",
        message="failed: refused name 'a\u202e.py'\nforged line",
        data={"reason": ["x\x1b]8;;http://e/\x07"], "k\u2066": {"n": 1}},
    )
    assert event.stage == "finished\\x1b[2J"
    assert event.message == "failed: refused name 'a\\u202e.py'\\nforged line"
    assert event.data == {"reason": ["x\\x1b]8;;http://e/\\x07"], "k\\u2066": {"n": 1}}
    again = RunEvent.model_validate_json(event.model_dump_json())
    assert again == event  # escaping is idempotent: a record read back is unchanged
