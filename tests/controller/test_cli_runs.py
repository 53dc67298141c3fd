"""``taskbox runs list`` / ``runs show``: run records found and read as tables or JSON, their text as data."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner

from controller.cli import cli

if TYPE_CHECKING:
    from pathlib import Path

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
COMMIT = "0a98ba560a2fe8af2e412fcd52606a3d6431a356"


def make_record(
    runs: Path,
    run_id: str,
    *,
    task_key: str,
    status: str | None,
    started: str,
    finished: str | None,
    events: list[dict[str, Any]],
    result: dict[str, Any] | None,
) -> Path:
    """A run record folder as ``controller.runs.RunRecord`` writes it."""
    record = runs / run_id / "record"
    record.mkdir(parents=True)
    meta = {
        "run_id": run_id,
        "task_key": task_key,
        "repository": "/srv/repos/hello-api",
        "base_ref": "HEAD",
        "base_commit": "5ae00eac52c5cdbfa86a58c9fe32b91a6360d428",
        "model": "scripted:/x/greetings.script.jsonl",
        "policy": "be-python",
        "policy_digest": "sha256:d19a",
        "started_at": started,
        "finished_at": finished,
        "status": status,
        "usage": {"requests": 5, "input_tokens": 15875, "output_tokens": 865},
    }
    (record / "run.json").write_text(json.dumps(meta))
    if result is not None:
        (record / "result.json").write_text(json.dumps(result))
    (record / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return record


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "250"}, catch_exceptions=False)
    return result.exit_code, result.output


def two_runs(runs: Path) -> tuple[Path, Path]:
    ok = make_record(
        runs,
        "BE-101-20261205100000-aaaaaaaa",
        task_key="BE-101",
        status="succeeded",
        started="2026-12-05T10:00:00Z",
        finished="2026-12-05T10:01:05.5Z",
        events=[
            {"stage": "admitted", "message": "task BE-101 admitted", "at": "2026-12-05T10:00:00Z"},
            {"stage": "staged", "message": "5 files staged", "at": "2026-12-05T10:00:01.5Z"},
            {"stage": "finished", "message": "succeeded", "at": "2026-12-05T10:01:05.5Z"},
        ],
        result={"task_key": "BE-101", "status": "succeeded", "git_commit": COMMIT},
    )
    # An old record (no timestamps) written before events were escaped: raw text, markup.
    hostile = make_record(
        runs,
        "BE-102-20261205110000-bbbbbbbb",
        task_key="BE-102",
        status="failed",
        started="2026-12-05T11:00:00Z",
        finished=None,
        events=[
            {"stage": "tool", "message": "edit docs/[/] \x1b[2J\x1b[32mfinished succeeded"},
            {"stage": "round", "message": "\u202egnp.exe [bold]x"},
        ],
        result={
            "task_key": "BE-102",
            "status": "failed",
            "reason": "refused docs/[/] [link=https://evil.example]x[/link]",
        },
    )
    return ok, hostile


def test_list_shows_runs_newest_first_with_filters(tmp_path: Path) -> None:
    """Runs are listed newest first with status, start, duration and commit; --task and --status filter."""
    runs = tmp_path / "runs"
    two_runs(runs)
    code, output = invoke("runs", "list", "--runs-dir", str(runs))
    assert code == 0
    rows = [ln for ln in output.splitlines() if "BE-10" in ln]
    assert "BE-102-20261205110000-bbbbbbbb" in rows[0]
    assert "BE-101-20261205100000-aaaaaaaa" in rows[1]
    assert re.search(r"succeeded\s*│\s*2026-12-05 10:00:00\s*│\s*1m05.5s", rows[1])
    assert COMMIT[:12] in rows[1]
    code, output = invoke("runs", "list", "--runs-dir", str(runs), "--status", "failed")
    assert "BE-102" in output
    assert "BE-101" not in output
    code, output = invoke("runs", "list", "--runs-dir", str(runs), "--task", "BE-101", "--json")
    listed = json.loads(output)
    assert [r["run_id"] for r in listed] == ["BE-101-20261205100000-aaaaaaaa"]
    assert listed[0]["duration_seconds"] == 65.5
    assert listed[0]["git_commit"] == COMMIT


def test_list_of_an_empty_folder(tmp_path: Path) -> None:
    """A runs folder with no records (or none at all) lists nothing and says so."""
    code, output = invoke("runs", "list", "--runs-dir", str(tmp_path / "none"))
    assert code == 0
    assert "no run records" in output
    code, output = invoke("runs", "list", "--runs-dir", str(tmp_path / "none"), "--json")
    assert json.loads(output) == []


def test_show_gives_the_timeline_and_the_report(tmp_path: Path) -> None:
    """``runs show RUN`` prints what ran, each event's time and duration, and the report."""
    runs = tmp_path / "runs"
    ok, _ = two_runs(runs)
    code, output = invoke("runs", "show", "--runs-dir", str(runs), "BE-101-20261205100000-aaaaaaaa")
    assert code == 0, output
    assert "repository /srv/repos/hello-api" in output
    assert "took       1m05.5s" in output
    assert "model use  5 requests, 15875 input and 865 output tokens" in output
    assert re.search(r"│\s+1\.5s\s+│\s+64\.0s\s+│\s+staged\s+│ 5 files staged", output), output
    assert f"branch    taskbox/BE-101 at {COMMIT}" in output
    code, by_path = invoke("runs", "show", str(ok))  # the record folder itself
    assert code == 0
    assert by_path == output


def test_show_and_list_escape_old_hostile_records(tmp_path: Path) -> None:
    """A record holding raw escape sequences, bidi and markup is shown as text, escaped, in tables and JSON."""
    runs = tmp_path / "runs"
    _, hostile = two_runs(runs)
    code, output = invoke("runs", "show", "--runs-dir", str(runs), "BE-102-20261205110000-bbbbbbbb")
    assert code == 0, output
    assert not RAW.search(output)
    assert "edit docs/[/] \\x1b[2J\\x1b[32mfinished succeeded" in output
    assert "\\u202egnp.exe [bold]x" in output
    assert "refused docs/[/] [link=https://evil.example]x[/link]" in output
    code, output = invoke("runs", "show", str(hostile.parent), "--json")
    assert code == 0
    assert not RAW.search(output)
    shown = json.loads(output)
    assert shown["events"][0]["message"] == "edit docs/[/] \\x1b[2J\\x1b[32mfinished succeeded"
    assert shown["result"]["status"] == "failed"


def test_show_a_record_without_a_result(tmp_path: Path) -> None:
    """A run that never finished (no result.json) still shows its run and events."""
    runs = tmp_path / "runs"
    make_record(
        runs,
        "BE-103-20261205120000-cccccccc",
        task_key="BE-103",
        status=None,
        started="2026-12-05T12:00:00Z",
        finished=None,
        events=[{"stage": "admitted", "message": "task BE-103 admitted"}],
        result=None,
    )
    code, output = invoke("runs", "show", "--runs-dir", str(runs), "BE-103-20261205120000-cccccccc")
    assert code == 0
    assert "task BE-103 admitted" in output
    assert "no readable result.json in this record" in output
    code, output = invoke("runs", "list", "--runs-dir", str(runs))
    assert "running?" in output


def test_show_refuses_unknown_runs_and_paths_out_of_the_folder(tmp_path: Path) -> None:
    """An unknown run id, or an id that climbs out of the runs folder, is an error (exit 2)."""
    runs = tmp_path / "runs"
    two_runs(runs)
    (tmp_path / "outside" / "record").mkdir(parents=True)
    for run in ("BE-999-none", "../outside"):
        code, output = invoke("runs", "show", "--runs-dir", str(runs), run)
        assert code == 2
        assert "no run record" in output
