"""The repositories, tasks and model scripts the benchmarks run on, made fresh in a scratch folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import Task

if TYPE_CHECKING:
    from pathlib import Path

EXAMPLE_REPO = PROJECT_ROOT / "examples" / "hello-api"
EXAMPLE_TASK = PROJECT_ROOT / "examples" / "task-greetings.json"
EXAMPLE_SCRIPT = PROJECT_ROOT / "examples" / "greetings.script.jsonl"

#: Git with a fixed identity and none of the host's configuration.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
}

#: The files the trivial task owns and its scripted model creates: the smallest change the judge
#: accepts (a test that fails on the base, because the module it tests is new, and passes after).
TRIVIAL_MODULE = "app/bench_sum.py"
TRIVIAL_MODULE_TEXT = (
    '"""A helper added by the benchmarks\' trivial task."""\n\n\n'
    "def add(a: int, b: int) -> int:\n"
    '    """The sum of a and b."""\n'
    "    return a + b\n"
)
TRIVIAL_FILE = "tests/test_bench.py"
TRIVIAL_TEST = (
    "from app.bench_sum import add\n\n\ndef test_add() -> None:\n    assert add(1, 2) == 3\n"
)


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; returns stdout."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, env=GIT_ENV, check=True, text=True
    )
    return done.stdout


def commit_all(repo: Path, message: str) -> str:
    """Make ``repo`` a git repository (if needed) and commit everything in it; returns the commit."""
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def copy_example(where: Path) -> Path:
    """A copy of examples/hello-api without tool caches (not yet a repository)."""
    shutil.copytree(
        EXAMPLE_REPO,
        where,
        ignore=shutil.ignore_patterns(".ruff_cache", "__pycache__", ".pytest_cache"),
    )
    return where


def example_repo(where: Path) -> Path:
    """examples/hello-api as a git repository, as scripts/demo makes it."""
    commit_all(copy_example(where), "hello-api: health endpoint")
    return where


def apply_editor_turns(repo: Path, script: Path) -> list[str]:
    """Apply the ``create`` and ``str_replace`` calls of a model script to ``repo``; returns the paths."""
    touched: list[str] = []
    for line in script.read_text().splitlines():
        turn: dict[str, Any] = json.loads(line)
        for block in turn.get("content", []):
            if (
                block.get("type") != "tool_use"
                or block.get("name") != "str_replace_based_edit_tool"
            ):
                continue
            call = block["input"]
            path = repo / call["path"]
            if call["command"] == "create":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(call["file_text"])
            elif call["command"] == "str_replace":
                path.write_text(path.read_text().replace(call["old_str"], call["new_str"], 1))
            else:
                continue
            touched.append(call["path"])
    return sorted(set(touched))


def finished_example_repo(where: Path) -> tuple[Path, list[str]]:
    """hello-api with the greetings task done (the example script's edits committed); and the changed files."""
    copy_example(where)
    changed = apply_editor_turns(where, EXAMPLE_SCRIPT)
    commit_all(where, "hello-api: greetings")
    return where, changed


def example_task(**changes: Any) -> Task:
    """The example task (examples/task-greetings.json), with wire fields changed."""
    wire = json.loads(EXAMPLE_TASK.read_text())
    wire.update(changes)
    return Task.model_validate(wire)


def trivial_task(key: str = "BENCH-1") -> Task:
    """A task that owns one new module of hello-api and its test, and needs nothing else."""
    return Task.model_validate(
        {
            "taskKey": key,
            "description": "Add an add() helper with its test.",
            "ownsPaths": [TRIVIAL_MODULE, TRIVIAL_FILE],
            "contextJson": {
                f"{key}-ctx": {
                    "relevant_files": [
                        "pyproject.toml",
                        "app/__init__.py",
                        "app/main.py",
                        "tests/__init__.py",
                        "tests/test_health.py",
                    ],
                    "world_state": "A FastAPI app with a health endpoint and one test.",
                }
            },
        }
    )


def trivial_script(path: Path) -> Path:
    """The scripted model of the trivial task: ``create`` the module and its test, then end_turn."""
    editor = "str_replace_based_edit_tool"
    turns = [
        {
            "content": [
                {
                    "type": "tool_use",
                    "name": editor,
                    "input": {"command": "create", "path": path, "file_text": text},
                }
                for path, text in (
                    (TRIVIAL_MODULE, TRIVIAL_MODULE_TEXT),
                    (TRIVIAL_FILE, TRIVIAL_TEST),
                )
            ],
            "stop_reason": "tool_use",
        },
        {
            "content": [{"type": "text", "text": "Added add() and its test."}],
            "stop_reason": "end_turn",
        },
    ]
    path.write_text("".join(json.dumps(turn) + "\n" for turn in turns))
    return path


def tiny_repo(where: Path) -> Path:
    """A repository of two small files, for sandboxes that only run a command."""
    where.mkdir(parents=True)
    (where / "README.md").write_text("tiny\n")
    (where / "notes.txt").write_text("")
    commit_all(where, "tiny")
    return where


def tiny_task(key: str = "BENCH-0") -> Task:
    """A task over :func:`tiny_repo` that owns one file."""
    return Task.model_validate(
        {
            "taskKey": key,
            "description": "Nothing; the sandbox only runs a command.",
            "ownsPaths": ["notes.txt"],
            "contextJson": {f"{key}-ctx": {"relevant_files": ["README.md"], "world_state": "tiny"}},
        }
    )
