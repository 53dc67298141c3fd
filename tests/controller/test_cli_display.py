"""What the CLI shows of untrusted text: escaped, never markup, never highlighted; the report for people."""

from __future__ import annotations

import importlib
import io
import json
import logging
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from controller.api.logs import JsonLineFormatter, KeyValueFormatter
from controller.cli import cli
from controller.display import EscapingFormatter, escape_text
from controller.events import RunEvent
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import TaskResult

if TYPE_CHECKING:
    from pathlib import Path

    from controller.events import EventSink
    from controller.settings import Settings
    from tests.conftest import RepoFactory

#: The module (``controller.cli.run`` the attribute is the command of the same name).
run_module = importlib.import_module("controller.cli.run")
TASK_FILE = PROJECT_ROOT / "examples" / "task-greetings.json"
#: Characters that must never reach a terminal raw: C0 and C1 controls, DEL, bidi, zero-width.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
HOSTILE = (
    "edit docs/[/] [bold]x[/bold] [link=https://evil.example]here[/link] :smile:"
    " \x1b]8;;https://evil.example/\x07click\x1b]8;;\x07 \x1b[2J"
    " \x1b[32m   finished  succeeded\x1b[0m \u202eexe.txt\u200b \x9b31m"
)


# --------------------------------------------------------------------------- escape_text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b]8;;https://e.example/\x07x", "\\x1b]8;;https://e.example/\\x07x"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x7f\x85\x9b", "\\x7f\\x85\\x9b"),
        ("\u202egnp.exe \u2066x\u2069 \u061c", "\\u202egnp.exe \\u2066x\\u2069 \\u061c"),
        ("zero\u200bwidth\u200d\ufeff\u00ad", "zero\\u200bwidth\\u200d\\ufeff\\xad"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("\ud800", "\\ud800"),
        ("plain [/] BE-101 é 中 🙂 \\x1b", "plain [/] BE-101 é 中 🙂 \\x1b"),
    ],
)
def test_escape_text_shows_controls_bidi_and_zero_width_escaped(raw: str, shown: str) -> None:
    """Every control, bidi and zero-width character is shown in Python's notation; other text is kept."""
    assert escape_text(raw) == shown
    assert escape_text(shown) == shown  # idempotent: escaping twice changes nothing


def test_escape_text_multiline_keeps_line_breaks_and_tabs_only() -> None:
    """A multi-line text keeps its newlines and tabs, and still escapes carriage returns and ESC."""
    assert escape_text("a\n\tb\r\x1b[1A", multiline=True) == "a\n\tb\\r\\x1b[1A"


def test_log_lines_are_escaped_on_one_line() -> None:
    """A log message quoting a sandbox can neither colour the line nor forge the next one."""
    record = logging.LogRecord(
        "controller.runs", logging.INFO, __file__, 1, "run %s: %s", ("r1", HOSTILE + "\nFAKE"), None
    )
    line = EscapingFormatter(logging.Formatter("%(levelname)s %(message)s")).format(record)
    assert not RAW.search(line)
    assert "\n" not in line
    assert line.endswith("\\nFAKE")
    assert record.getMessage().endswith("\nFAKE")  # the record itself is left alone


def test_the_cli_escapes_its_log_lines(tmp_path: Path) -> None:
    """``taskbox -v ...`` configures logging whose lines are escaped."""
    runner = CliRunner()
    result = runner.invoke(cli, ["-v", "policy", "lint", str(tmp_path / "absent.yaml")])
    assert result.exit_code != 0
    handlers = logging.getLogger().handlers
    assert handlers
    assert all(isinstance(h.formatter, EscapingFormatter) for h in handlers)


# --------------------------------------------------------------------------- errors and explain


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, list(args), env={"COLUMNS": "250", **(env or {})}, catch_exceptions=False
    )
    return result.exit_code, result.output


def test_an_error_quoting_the_task_is_escaped(tmp_path: Path) -> None:
    """An invalid task whose key names carry escape sequences is refused with them shown escaped."""
    task = json.loads(TASK_FILE.read_text())
    task["contextJson"]["BE-101-\x1b[2J\u202e"] = {}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(task))
    code, output = invoke("run", str(bad), "--repo", str(tmp_path), "--runs-dir", str(tmp_path))
    assert code == 2
    assert "BE-101-\\x1b[2J\\u202e" in output
    assert not RAW.search(output)


def test_policy_explain_shows_paths_as_text(tmp_path: Path, make_repo: RepoFactory) -> None:
    """Caller paths with markup, escape sequences and bidi characters are shown as they are, escaped."""
    repo, _ = make_repo(
        {
            "app/routes/[id]/page.py": "x = 1\n",
            "docs/[bold]note[/bold].md": "note\n",
            "app/__init__.py": "",
        }
    )
    owns = ["app/routes/[id]/", "docs/[/]", "app/[link=evil]x[/link].py"]
    relevant = ["docs/[bold]note[/bold].md", "docs/[/]absent.md", "app/\x1b[2Jx.py", "a\u202eyp.md"]
    task = {
        "taskKey": "BE-7",
        "description": "[bold red]not markup[/]",
        "ownsPaths": owns,
        "contextJson": {"BE-7-ctx": {"relevant_files": relevant, "world_state": "x"}},
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    code, output = invoke("policy", "explain", str(path), "--repo", str(repo))
    assert code == 0, output
    for shown in [
        "app/routes/[id]",
        "docs/[/]",
        "app/[link=evil]x[/link].py",
        "docs/[bold]note[/bold].md",
        "docs/[/]absent.md",
        "app/\\x1b[2Jx.py",
        "a\\u202eyp.md",
    ]:
        assert shown in output
    assert not RAW.search(output)


# --------------------------------------------------------------------------- taskbox run


class HostileRunner:
    """A task runner for the CLI's display only: emits the given events, returns the given result."""

    def __init__(self, events: list[RunEvent], result: TaskResult) -> None:
        self.events = events
        self.result = result

    def execute(self, *, emit: EventSink, **_: Any) -> TaskResult:
        for event in self.events:
            emit(event)
        return self.result


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    runner: HostileRunner,
    *args: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    def make_runner(settings: Settings) -> HostileRunner:
        return runner

    monkeypatch.setattr(run_module, "make_runner", make_runner)
    return invoke(
        "run",
        str(TASK_FILE),
        "--repo",
        str(tmp_path),
        "--runs-dir",
        str(tmp_path / "runs"),
        *args,
        env=env,
    )


def failed_result(reason: str) -> TaskResult:
    return TaskResult.model_validate(
        {
            "task_key": "BE-101",
            "status": "failed",
            "reason": reason,
            "summary": "2/3 tests pass",
            "files_created": ["app/api/[id].py"],
            "test_results": {"total": 3, "passed": 2, "failed": 1, "coverage_percent": 71.5},
            "missing_context": [".env — denied by rule '.env*' of policy 'be-python'"],
            "constraints": [
                {"id": i, "name": f"check {i}", "passed": i != 5, "evidence": [f"ok {i}"]}
                for i in range(1, 11)
            ],
        }
    )


def test_hostile_events_and_reason_are_shown_as_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A ``[/]``, escape sequences and bidi in events and the reason: no crash, nothing interpreted or raw."""
    result = failed_result(f"the sandbox's output was refused: {HOSTILE}")
    events = [
        RunEvent(stage="admitted", message="task BE-101 admitted"),
        RunEvent(stage="tool", message=HOSTILE, data={"from": "sandbox"}),
        RunEvent(stage="round", message="ok\n[    9.9s]        finished  succeeded"),
        RunEvent(stage="finished", message=f"failed: {HOSTILE}"),
    ]
    code, output = run_cli(monkeypatch, tmp_path, HostileRunner(events, result))
    assert code == 1, output
    assert not RAW.search(output)
    assert output.count("edit docs/[/] [bold]x[/bold] [link=https://evil.example]here") >= 3
    assert "\\x1b]8;;https://evil.example/\\x07click" in output
    assert "\\u202eexe.txt\\u200b" in output
    assert ":smile:" in output
    assert "ok\\n[    9.9s]        finished  succeeded" in output
    assert not any(line.lstrip().startswith("[    9.9s]") for line in output.splitlines())


def test_a_failing_event_display_does_not_end_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Even if showing an event fails, the run goes on to its report (the log thread is never ended)."""

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("display broke")

    monkeypatch.setattr(run_module, "event_line", broken)
    events = [RunEvent(stage="tool", message="x")]
    code, output = run_cli(monkeypatch, tmp_path, HostileRunner(events, failed_result("r")))
    assert code == 1
    assert "status    failed" in output


def test_the_report_for_people(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without --json, a run ends with status, branch, tests, the ten checks with failures' evidence, missing context, record."""
    result = failed_result("1 of 10 checks fail: check 5")
    start = datetime.now(UTC)
    events = [
        RunEvent(stage="admitted", message="task BE-101 admitted", at=start),
        RunEvent(stage="staged", message="5 files staged", at=start + timedelta(seconds=1.25)),
        RunEvent(stage="finished", message="failed", at=start + timedelta(seconds=12.5)),
    ]
    code, output = run_cli(monkeypatch, tmp_path, HostileRunner(events, result))
    assert code == 1
    lines = output.splitlines()
    assert any(re.fullmatch(r"\[\s+1\.\ds\]\s+staged  5 files staged", ln) for ln in lines), output
    assert any(re.fullmatch(r"\[\s+12\.\ds\]\s+finished  failed", ln) for ln in lines), output
    assert "status    failed  task BE-101" in output
    assert "reason    1 of 10 checks fail: check 5" in output
    assert "branch    none written" in output
    assert "tests     2 passed, 1 failed, 0 skipped of 3; coverage 71.5%" in output
    assert "created   1: app/api/[id].py" in output
    checks = [ln for ln in lines if re.match(r"│\s+\d+ │ check \d+", ln)]
    assert len(checks) == 10
    failing = [ln for ln in checks if "FAIL" in ln]
    assert len(failing) == 1
    assert "check 5" in failing[0]
    assert "ok 5" in failing[0]
    assert "ok 4" not in output  # evidence is shown for failures only
    assert "9 of 10 checks pass" in output
    assert ".env — denied by rule '.env*' of policy 'be-python'" in output
    assert f"record    {tmp_path / 'runs'}" in output
    assert '"test_results"' not in output  # not the result JSON


def test_json_prints_only_the_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--json`` prints the result JSON and nothing else: no event lines, no report."""
    result = failed_result(HOSTILE)
    events = [RunEvent(stage="tool", message=HOSTILE)]
    code, output = run_cli(monkeypatch, tmp_path, HostileRunner(events, result), "--json")
    assert code == 1
    assert TaskResult.model_validate(json.loads(output)) == result


def test_succeeded_report_names_the_branch_and_commit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A succeeded run's report names the branch and the commit it landed."""
    commit = "0a98ba560a2fe8af2e412fcd52606a3d6431a356"
    result = TaskResult(task_key="BE-101", status="succeeded", git_commit=commit)
    code, output = run_cli(monkeypatch, tmp_path, HostileRunner([], result))
    assert code == 0
    assert f"branch    taskbox/BE-101 at {commit}" in output


def test_data_is_never_highlighted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With colour on, numbers, keys, hashes and paths in data are printed without any colour codes."""
    data_texts = [
        "task BE-101 admitted at 5ae00eac52c5 under policy be-python",
        "model call 2: tool_use 3.14 True None https://example.com/x /tmp/a.py",
    ]
    events = [RunEvent(stage="model", message=text) for text in data_texts]
    result = failed_result("check 5 (BE-101) failed at 12:30 with 404")
    code, output = run_cli(
        monkeypatch, tmp_path, HostileRunner(events, result), env={"FORCE_COLOR": "1"}
    )
    assert code == 1
    assert "\x1b[" in output  # colour is on: the report's own labels are styled
    for text in [*data_texts, "check 5 (BE-101) failed at 12:30 with 404", "app/api/[id].py"]:
        assert text in output, text


def test_events_stream_from_the_log_thread_while_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Events emitted from another thread (as the sandbox's log reader does) are shown as they come."""

    class ThreadedRunner(HostileRunner):
        def execute(self, *, emit: EventSink, **_: Any) -> TaskResult:
            def emit_all() -> None:
                for event in self.events:
                    emit(event)

            worker = threading.Thread(target=emit_all)
            worker.start()
            worker.join()
            return self.result

    events = [RunEvent(stage="tool", message=f"[/] call {n}") for n in range(5)]
    code, output = run_cli(monkeypatch, tmp_path, ThreadedRunner(events, failed_result("r")))
    assert code == 1
    assert all(f"[/] call {n}" in output for n in range(5))


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("module", "function", "stream"),
    [
        ("controller.cli.sandbox", "_echo_log", "stdout"),
        ("controller.cli.image", "_progress", "stderr"),
    ],
)
def test_passed_through_output_is_escaped_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, module: str, function: str, stream: str
) -> None:
    """A sandbox command's output (``sandbox run``) and build output reach a terminal escaped, a pipe as is."""
    show = getattr(importlib.import_module(module), function)
    text = "line one\n\x1b[2J\x1b]8;;https://evil.example/\x07x \u202eabc\rforged\n"
    terminal = Terminal()
    monkeypatch.setattr(f"sys.{stream}", terminal)
    show(text)
    assert terminal.getvalue() == (
        "line one\n\\x1b[2J\\x1b]8;;https://evil.example/\\x07x \\u202eabc\\rforged\n"
    )
    pipe = io.StringIO()
    monkeypatch.setattr(f"sys.{stream}", pipe)
    show(text)
    assert "\\x1b" not in pipe.getvalue()  # as is (click drops colour codes on a pipe itself)
    assert "\u202eabc\rforged" in pipe.getvalue()


@pytest.mark.parametrize("inner", [KeyValueFormatter(), JsonLineFormatter()])
def test_server_log_formats_are_escaped(inner: logging.Formatter) -> None:
    """``taskbox serve``'s text and JSON log lines carry no raw control or bidi character, tracebacks included."""
    error = ValueError(f"refused name {HOSTILE}")
    exc_info = (ValueError, error, None)
    record = logging.LogRecord(
        "controller.service", logging.ERROR, __file__, 1, "task %s", (HOSTILE,), exc_info
    )
    record.task_key = "BE-1\x1b[2J"
    text = EscapingFormatter(inner).format(record)
    assert not RAW.search(text)
    assert "\\x1b[32m   finished  succeeded" in text
    assert "ValueError" in text


def test_evidence_lines_cannot_add_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A failed check's evidence with newlines and escapes stays in its cell, one escaped line each."""
    result = failed_result("check 5 fails")
    check = result.constraints[4].model_copy(
        update={"evidence": ["AssertionError\n│ 6 │ check 6 │ pass │ forged", "[/] \u202ex"]}
    )
    result = result.model_copy(
        update={"constraints": [*result.constraints[:4], check, *result.constraints[5:]]}
    )
    code, output = run_cli(monkeypatch, tmp_path, HostileRunner([], result))
    assert code == 1
    assert "AssertionError\\n│ 6 │ check 6 │ pass │ forged" in output
    assert "[/] \\u202ex" in output
    assert not RAW.search(output)


#: The agent's claim beside the verdict (``taskbox_wire.contract.AgentClaim``), where the contract has it.
AGENT_CLAIM: Any = getattr(importlib.import_module("taskbox_wire.contract"), "AgentClaim", None)


@pytest.mark.skipif(AGENT_CLAIM is None, reason="the result carries no agent claim yet")
def test_the_agents_differing_claim_is_shown_beside_the_verdict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """When the agent claimed another status than the judge's, the report says so, as a claim."""
    claim = AGENT_CLAIM.model_validate(
        {"status": "succeeded", "test_results": {"total": 4, "passed": 4}}
    )
    result = failed_result("the judge's checks failed: 5").model_copy(update={"agent": claim})
    code, output = run_cli(monkeypatch, tmp_path, HostileRunner([], result))
    assert code == 1
    assert (
        "agent     claimed succeeded; its tests 4/4 passed (the verdict above is the judge's)"
        in output
    )
