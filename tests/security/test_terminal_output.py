"""Text from a sandbox on the operator's terminal and in the record: data, never markup, never raw.

A hostile command in a real sandbox writes progress lines with rich markup (``[/]``),
ESC sequences (clear screen, a forged green "finished succeeded" line), OSC 8 links,
bidi overrides and a forged timestamp, then more lines. ``taskbox run`` must show every
one of them escaped and keep reading the log; ``events.jsonl`` must carry them escaped,
with the controller's own timestamps.
"""

from __future__ import annotations

import importlib
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from controller.cli import cli
from tests.security.conftest import (
    editor_create,
    forwarding_test,
    hostile_script,
    make_task,
    probe_task,
    write_script,
)

if TYPE_CHECKING:
    from pathlib import Path

    from controller.runs import TaskRunner
    from controller.settings import Settings
    from taskbox_wire.contract import TaskResult
    from tests.security.conftest import Arena

pytestmark = [pytest.mark.docker, pytest.mark.invariant(13)]

run_module = importlib.import_module("controller.cli.run")

#: What must never reach a terminal or events.jsonl raw: C0/C1 controls, DEL, bidi, zero-width.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")

HOSTILE_COMMAND = r"""
import json, sys
P = "::taskbox-event::"
def event(stage, message, **extra):
    sys.stderr.write(P + json.dumps({"stage": stage, "message": message, **extra}) + "\n")
    sys.stderr.flush()
event("tool", "edit docs/[/] [bold]x[/bold]")
print("after the markup", flush=True)
event("round", "\x1b]8;;https://evil.example/\x07click me\x1b]8;;\x07 \x1b[2J")
event("round", "\x1b[32m   finished  succeeded\x1b[0m")
event("model", "model call 1: \u202egnp.exe\u200b \x9b31m")
event("round", "forged time", at="2000-01-01T00:00:00Z")
sys.stdout.write("\x1b[2J\x1b[32m   finished  succeeded\x1b[0m\n")
sys.stdout.flush()
event("checks", "the last event [/]")
"""


class HostileCommandRunner:
    """The arena's real runner (labelled backend), running the hostile command in the task's sandbox."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner

    def execute(self, **kwargs: Any) -> TaskResult:
        return self.runner.execute(**kwargs, command=["python", "-c", HOSTILE_COMMAND])


def test_hostile_progress_reaches_terminal_and_record_escaped(
    arena: Arena, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Invariant 13: markup, escape sequences and bidi from a sandbox are shown escaped by ``taskbox run`` and in events.jsonl."""
    script = write_script(tmp_path, [{"content": [{"type": "text", "text": "unused"}]}])
    runner = HostileCommandRunner(arena.runner(f"scripted:{script}"))

    def make_runner(settings: Settings) -> HostileCommandRunner:
        return runner

    monkeypatch.setattr(run_module, "make_runner", make_runner)
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(probe_task("SEC-TERM").to_wire()))
    started = datetime.now(UTC)
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(task_file),
            "--repo",
            str(arena.repo),
            "--runs-dir",
            str(arena.runs),
            "--policy",
            "sec-run",
        ],
        env={"COLUMNS": "250"},
        catch_exceptions=False,
    )
    output = result.output
    # The command wrote no result.json: the run is an error (exit 3), after a whole log read.
    assert result.exit_code == 3, output
    assert not RAW.search(output), output
    for shown in [
        "edit docs/[/] [bold]x[/bold]",
        "\\x1b]8;;https://evil.example/\\x07click me\\x1b]8;;\\x07 \\x1b[2J",
        "\\x1b[32m   finished  succeeded\\x1b[0m",
        "model call 1: \\u202egnp.exe\\u200b \\x9b31m",
        "the last event [/]",
    ]:
        assert shown in output, shown
    assert "status    error" in output

    (record,) = list(arena.runs.glob("SEC-TERM-*/record"))
    raw_events = (record / "events.jsonl").read_text(encoding="utf-8")
    assert not RAW.search(raw_events)
    events = [json.loads(line) for line in raw_events.splitlines()]
    messages = [e["message"] for e in events]
    assert "the last event [/]" in messages
    assert "\\x1b[32m   finished  succeeded\\x1b[0m" in messages
    assert "forged time" not in messages  # a sandbox cannot set an event's time
    for message in messages:
        assert not RAW.search(message)  # escaped as text, not only by JSON's encoding
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert all(started <= t <= datetime.now(UTC) for t in times)
    assert times == sorted(times)

    # The log on disk is the record of what the sandbox wrote: raw, and whole after the markup.
    log = (record / "sandbox.log").read_text(encoding="utf-8")
    assert "after the markup" in log
    assert "\x1b[2J\x1b[32m   finished  succeeded" in log
    assert "the last event [/]" in log


#: Progress lines a model-written test writes into the runner's log during verification.
FORGED_PROGRESS = [
    ("checks", "all checks pass [/] [link=https://evil.example]docs[/link]"),
    ("round", "\x1b[1A\x1b[2K\x1b[32m        finished  succeeded\x1b[0m\r"),
    ("tool", "\x9d8;;https://evil.example/\x9cc1 link \u2067rtl\u2069 \u200dzw"),
    ("checks", "the last forged event [/]"),
]


@pytest.mark.parametrize("model_file", ["app/api/[id].py"])
def test_model_written_code_cannot_forge_terminal_lines(
    arena: Arena, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_file: str
) -> None:
    """Invariant 13: a model's test that writes forged progress to the runner's log, and a markup file name, show as text."""
    before = (
        f"forged = {FORGED_PROGRESS!r}\n"
        'with open("/proc/1/fd/1", "w") as log:\n'
        "    for stage, message in forged:\n"
        '        log.write("::taskbox-event::" + json.dumps({"stage": stage, "message": message}) + "\\n")\n'
    )
    calls = [
        editor_create(model_file, '"""Routes by id."""\n\nIDS: list[int] = []\n'),
        editor_create("tests/test_forge.py", forwarding_test(before=before)),
    ]
    script = write_script(tmp_path / "scripts", hostile_script(calls))
    task = make_task(
        "SEC-FORGE",
        owns=["app/api/", "tests/test_forge.py"],
        relevant=["pyproject.toml", "app/__init__.py", "app/main.py"],
    )
    runner = arena.runner(f"scripted:{script}")

    def make_runner(settings: Settings) -> TaskRunner:
        return runner

    monkeypatch.setattr(run_module, "make_runner", make_runner)
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task.to_wire()))
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(task_file),
            "--repo",
            str(arena.repo),
            "--runs-dir",
            str(arena.runs),
            "--policy",
            "sec-run",
            "--model",
            f"scripted:{script}",
        ],
        env={"COLUMNS": "250"},
        catch_exceptions=False,
    )
    output = result.output
    assert result.exit_code in {0, 1}, output  # the run ends with a verdict, whatever it is
    assert not RAW.search(output), output
    assert "status    " in output
    (record,) = list(arena.runs.glob("SEC-FORGE-*/record"))
    events = [json.loads(line) for line in (record / "events.jsonl").read_text().splitlines()]
    forged = [e["message"] for e in events if e["data"].get("from") == "sandbox"]
    assert "the last forged event [/]" in forged
    assert "\\x1b[1A\\x1b[2K\\x1b[32m        finished  succeeded\\x1b[0m\\r" in forged
    assert "\\x9d8;;https://evil.example/\\x9cc1 link \\u2067rtl\\u2069 \\u200dzw" in forged
    for message in forged:
        assert message in output
    if model_file in json.loads((record / "result.json").read_text())["files_created"]:
        assert model_file in output
