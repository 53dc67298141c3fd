"""The worker's instructions and the task's first message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from taskbox_runner.prompt import (
    MAX_INLINE_FILE_CHARS,
    SYSTEM_PROMPT,
    build_prompt,
    detect_framework,
)
from taskbox_runner.tools import AccessRules, WorkspaceEditor

from tests.runner.conftest import BASE_FILES, Workspace


def first_message(ws: Workspace, **overrides: Any) -> tuple[str, str]:
    """(task block, files block) of the first user message for ``ws``."""
    config = ws.config(**overrides)
    editor = WorkspaceEditor(
        config.workdir, AccessRules.from_plan(config.readable_paths, config.owns_paths)
    )
    prompt = build_prompt(config, editor)
    assert prompt.system == [{"type": "text", "text": SYSTEM_PROMPT}]
    task_block, files_block = prompt.first_user
    return task_block["text"], files_block["text"]


def test_system_prompt_covers_the_worker_rules() -> None:
    """The standing instructions name the tools, contract-first, bounded context and all ten constraints."""
    for phrase in (
        "Contract first",
        "Bounded context",
        "report_missing_context",
        "run_checks",
        "str_replace_based_edit_tool",
        "never absolute",
        "FastAPI",
        "Django",
        "Flask",
    ):
        assert phrase in SYSTEM_PROMPT, phrase
    for number in range(1, 11):
        assert f"\n{number}. " in SYSTEM_PROMPT.split("# The ten constraints")[1]


def test_first_message_holds_the_task_and_its_context(
    make_workspace: Callable[..., Workspace],
) -> None:
    """Description, owned paths with their state, spec, schema, contract, framework and known gaps are all there."""
    task, files = first_message(make_workspace())
    assert task.startswith("# Task BE-123\n\nAdd the users endpoint")
    assert "- app/api/routes/ (folder: anything inside it)" in task
    assert "- tests/test_users.py (empty placeholder, to be written)" in task
    assert "GET /users -> 200 [User]" in task
    assert '"GET /users"' in task
    assert "The OpenAPI contract is openapi.yaml" in task
    assert "FastAPI (named in pyproject.toml)" in task
    assert "Coverage threshold: 80%" in task
    assert "app/core/config.py — refused by policy" in task
    # The contract comes first among the files, then the others in path order.
    assert files.index('<file path="openapi.yaml">') < files.index('<file path="app/main.py">')
    assert BASE_FILES["app/main.py"] in files
    assert "app/api/routes/health.py" in files  # listed inside the owned folder


def test_first_message_is_deterministic(make_workspace: Callable[..., Workspace]) -> None:
    """Two builds of the same run give the same bytes (no timestamps, stable order)."""
    ws = make_workspace()
    assert first_message(ws) == first_message(ws)


def test_long_files_are_listed_not_pasted(make_workspace: Callable[..., Workspace]) -> None:
    """A file over the inline cap is named for viewing with view_range instead of pasted."""
    files = dict(BASE_FILES)
    files["app/main.py"] = "x = 1\n" * (MAX_INLINE_FILE_CHARS // 6 + 10)
    _, block = first_message(make_workspace(files))
    assert '<file path="app/main.py">' not in block
    assert "- app/main.py" in block
    assert "view_range" in block


def test_symlinked_readable_file_is_not_pasted(make_workspace: Callable[..., Workspace]) -> None:
    """A planned path that is a symlink is left out of the message rather than followed."""
    ws = make_workspace()
    (ws.workdir / "app/main.py").unlink()
    (ws.workdir / "app/main.py").symlink_to(ws.root / "elsewhere.py")
    (ws.root / "elsewhere.py").write_text("TOP SECRET\n")
    _, block = first_message(ws)
    assert "TOP SECRET" not in block


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"pyproject.toml": 'dependencies = ["fastapi"]'}, ("fastapi", "pyproject.toml")),
        ({"requirements.txt": "Django==5.0\n"}, ("django", "requirements.txt")),
        (
            {"requirements-dev.txt": "flask\n", "svc/pyproject.toml": "django"},
            ("django", "svc/pyproject.toml"),
        ),
        ({"setup.cfg": "install_requires =\n    flask-cors\n    flask\n"}, ("flask", "setup.cfg")),
        ({"pyproject.toml": "django-environ only"}, None),
        ({"app/main.py": "import fastapi"}, None),
    ],
)
def test_detect_framework(files: dict[str, str], expected: tuple[str, str] | None) -> None:
    """The framework comes from pyproject/requirements/setup.cfg only, FastAPI first, whole names only."""
    assert detect_framework(files) == expected
