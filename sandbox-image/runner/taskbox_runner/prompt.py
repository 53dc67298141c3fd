"""What the model is told: the worker's standing instructions and the task's first message.

The system prompt is the same for every task (so it is cached across runs);
everything task-specific goes in the first user message, in a fixed order and
without timestamps, so the cached prefix never drifts within a run.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskbox_runner.tools import (
    EDITOR_TOOL_NAME,
    REPORT_MISSING_TOOL_NAME,
    RUN_CHECKS_TOOL_NAME,
    ToolRefusal,
    WorkspaceEditor,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from anthropic.types import TextBlockParam
    from pydantic import JsonValue

    from taskbox_wire.config import RunConfig

#: Most characters of one file pasted into the first message; longer files are listed only.
MAX_INLINE_FILE_CHARS = 40_000
#: Most characters of file content in the first message altogether.
MAX_INLINE_TOTAL_CHARS = 150_000

FRAMEWORK_FILE_PATTERNS = ("pyproject.toml", "setup.cfg", "requirements*.txt")
FRAMEWORKS = ("fastapi", "django", "flask")
_FRAMEWORK_NAMES = {"fastapi": "FastAPI", "django": "Django", "flask": "Flask"}

SYSTEM_PROMPT = f"""\
You are the Python backend worker of Taskbox. You get one backend task (an endpoint, a service, \
a model, its tests) and you carry it out inside a locked-down sandbox, using only the tools \
described here. You work in Python 3.12 with FastAPI (the default), Django or Flask, Pydantic v2, \
SQLAlchemy 2.0 and pytest.

# How you work
1. Contract first. Before writing any code, read the API contract (the OpenAPI file, when the \
task has one) and the schema result: interfaces, data models and constraints. The paths, methods, \
request and response models and status codes you implement must match the contract exactly.
2. Bounded context. You see only the files planned for this task: the relevant files named by \
the context manager, the contract, and the paths you own. Nothing else exists here, so do not \
go looking for it. When you need a file you cannot see, call {REPORT_MISSING_TOOL_NAME} with its \
path and why you need it, then continue as well as you can without it.
3. Framework. The task message says which framework the project's pyproject.toml, \
requirements*.txt or setup.cfg names (fastapi, django or flask). Follow that framework's usual \
layout. For FastAPI: app/main.py (app, middleware), app/api/routes/ (APIRouter modules), \
app/api/deps.py (dependencies such as get_db), app/models/ (SQLAlchemy models), app/schemas/ \
(Pydantic models), app/services/ (business logic), app/db/, app/core/config.py (settings), \
tests/ with conftest.py fixtures. For Django: project/settings.py and urls.py, and per app \
models.py, views.py, serializers.py (DRF), urls.py, tests/, migrations/. Match what the \
repository already does.
4. Write only inside the paths you own, with {EDITOR_TOOL_NAME}. Paths are relative to the \
repository root (for example app/api/routes/users.py), never absolute. `create` writes a whole \
file (an empty placeholder of an owned file may already exist: create over it); `str_replace` \
needs old_str to match exactly one place, including whitespace; `insert` adds text after a \
line number. Prefer small edits to rewriting big files.
5. Test what you write: pytest tests (test_<module>.py, fixtures in conftest.py, \
httpx.AsyncClient or the framework's test client for endpoints) that cover the happy path, \
validation errors and error responses.
6. Check, then finish. You cannot run shell commands; call {RUN_CHECKS_TOOL_NAME} to run ruff, \
pytest with coverage, the contract check and the ten constraints on the current files. Fix what \
it reports, most important first. When you believe the work is complete, end your turn with a \
short summary (two to four sentences: what you built, and anything left open); the checks then \
run again and any failures come back to you. The commit is made for you.

# The ten constraints (the checks enforce each one)
1. No SQL injection: queries go through the ORM (SQLAlchemy or Django ORM); never build SQL by \
string concatenation or formatting.
2. No hardcoded secrets: passwords, keys and tokens come from settings (pydantic-settings \
BaseSettings or django-environ), never from source code.
3. Type hints on every function signature, parameters and return.
4. Test coverage at or above the threshold given in the task (80% unless it says otherwise).
5. All tests pass.
6. Contract compliance: the implemented endpoints match the OpenAPI spec.
7. Every request body is validated with Pydantic v2 models (or DRF serializers in Django).
8. No print() in production code: use logging.getLogger(__name__).
9. PEP 8: the code passes `ruff check`.
10. Async consistency: FastAPI endpoints are all `async def`, and async handlers use async \
database sessions (`async with async_session() as session`); never mix sync and async DB calls.

# Standards
- Dependency injection with Depends() (FastAPI) or middleware (Django) for sessions and the \
current user; errors through HTTPException or DRF's handler, never a stack trace in a response.
- Passwords hashed with passlib or django.contrib.auth; inputs validated at the boundary; \
strict Pydantic models with Field constraints.
- Alembic migrations (FastAPI) or makemigrations (Django) when models change, if you own the \
migrations folder.
"""


@dataclass(frozen=True)
class Prompt:
    """The system blocks and the first user message's blocks."""

    system: list[TextBlockParam]
    first_user: list[TextBlockParam]


def _json(value: JsonValue) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def detect_framework(files: dict[str, str]) -> tuple[str, str] | None:
    """(framework, evidence path) from the project files' text; FastAPI wins a tie, as preferred."""
    candidates = sorted(
        (rel for rel in files if _matches(rel, FRAMEWORK_FILE_PATTERNS)),
        key=lambda rel: (rel.count("/"), rel),
    )
    for framework in FRAMEWORKS:
        pattern = re.compile(rf"(?<![a-z0-9_.-]){framework}(?![a-z0-9_.-])", re.IGNORECASE)
        for rel in candidates:
            if pattern.search(files[rel]):
                return framework, rel
    return None


def _read_if_possible(editor: WorkspaceEditor, rel: str) -> str | None:
    try:
        return editor.read_text(rel)
    except ToolRefusal:
        return None


def _owned_lines(config: RunConfig, editor: WorkspaceEditor) -> list[str]:
    lines = []
    for entry in config.owns_paths:
        if entry.endswith("/"):
            lines.append(f"- {entry} (folder: anything inside it)")
            continue
        text = _read_if_possible(editor, entry)
        if text is None:
            state = "does not exist yet"
        elif not text:
            state = "empty placeholder, to be written"
        else:
            state = f"exists, {text.count(chr(10)) + 1} lines"
        lines.append(f"- {entry} ({state})")
    return lines


def _file_section(config: RunConfig, editor: WorkspaceEditor) -> tuple[str, dict[str, str]]:
    """The readable files' text (contract first) within the size budget, and every text read."""
    readable = sorted(
        {p for p in (*config.readable_paths, *config.owns_paths) if not p.endswith("/")}
    )
    if config.openapi_path in readable:
        readable.remove(config.openapi_path)
        readable.insert(0, config.openapi_path)
    texts: dict[str, str] = {}
    shown: list[str] = []
    listed: list[str] = []
    budget = MAX_INLINE_TOTAL_CHARS
    for rel in readable:
        text = _read_if_possible(editor, rel)
        if text is None:
            continue
        texts[rel] = text
        if not text:
            continue
        if len(text) > MAX_INLINE_FILE_CHARS or len(text) > budget:
            listed.append(rel)
            continue
        budget -= len(text)
        shown.append(f'<file path="{rel}">\n{text}\n</file>')
    owned = set(config.owns_paths)
    for entry in sorted({p for p in (*config.readable_paths, *owned) if p.endswith("/")}):
        try:
            listing = editor.view(entry.rstrip("/"))
        except ToolRefusal:
            listing = "(does not exist yet; create files in it)" if entry in owned else "(absent)"
        shown.append(f'<folder path="{entry}">\n{listing}\n</folder>')
    parts = ["# Files you may read", *shown]
    if listed:
        parts.append(
            f"Too long to include here (view them with {EDITOR_TOOL_NAME}, using view_range):\n"
            + "\n".join(f"- {rel}" for rel in listed)
        )
    return "\n\n".join(parts), texts


def build_prompt(config: RunConfig, editor: WorkspaceEditor) -> Prompt:
    """The system prompt and the task's first message for this run."""
    task = config.task
    files_text, texts = _file_section(config, editor)
    sections: list[str] = [
        f"# Task {task.task_key}\n\n{task.description.strip()}",
        "# Paths you own (write only here)\n" + "\n".join(_owned_lines(config, editor)),
    ]
    if task.spec_snippet.strip():
        sections.append(f"# Specification snippet\n\n{task.spec_snippet.strip()}")
    ctx = task.ctx
    sections.append(
        f"# Context ({task.task_key}-ctx)\n\nRelevant files: "
        + (", ".join(ctx.relevant_files) or "none")
        + f"\n\nWorld state:\n{_json(ctx.world_state)}"
    )
    schema = task.schema_result
    if schema is not None:
        sections.append(
            f"# Schema ({task.task_key}-schema)\n\nInterfaces:\n{_json(schema.interfaces)}\n\n"
            f"Data models:\n{_json(schema.data_models)}\n\nConstraints:\n{_json(schema.constraints)}"
        )
    if config.openapi_path:
        sections.append(
            f"# API contract\n\nThe OpenAPI contract is {config.openapi_path}; its text is in "
            f"the files below. Implement it exactly."
        )
    else:
        sections.append("# API contract\n\nThis task has no OpenAPI contract file.")
    detected = detect_framework(texts)
    if detected is None:
        sections.append(
            "# Framework\n\nNo framework is named in the project files you can see; use FastAPI "
            "unless the files show otherwise."
        )
    else:
        framework, evidence = detected
        sections.append(
            f"# Framework\n\n{_FRAMEWORK_NAMES[framework]} (named in {evidence}): "
            f"work in {_FRAMEWORK_NAMES[framework]} mode."
        )
    sections.append(
        f"# Checks\n\nCoverage threshold: {config.coverage_threshold:g}%. "
        f"Call {RUN_CHECKS_TOOL_NAME} to run the checks at any time."
    )
    if config.missing_context:
        sections.append(
            "# Files already known to be unavailable\n\n"
            + "\n".join(f"- {line}" for line in config.missing_context)
        )
    sections.append(
        "Start by reading the contract and the schema, then write the code and its tests."
    )
    return Prompt(
        system=[{"type": "text", "text": SYSTEM_PROMPT}],
        first_user=[
            {"type": "text", "text": "\n\n".join(sections)},
            {"type": "text", "text": files_text},
        ],
    )
