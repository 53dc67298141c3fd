"""The task contract an orchestrator sends, and the result Taskbox reports.

These models are the boundary: strict, with limits on every size, because the
task comes from a caller and the result comes (first) from a hostile sandbox.
The module imports only pydantic so the in-sandbox runner can use it too.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Task keys become branch names (``taskbox/<key>``) and container labels, so
#: they are restricted to characters that are safe in both.
TASK_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

#: A repository-relative path as a caller writes it. Deeper checks (``..``,
#: absolute, symlinks, deny rules) belong to the mount planner, which reports
#: each refusal with its reason instead of failing the whole task here.
RelPath = Annotated[str, StringConstraints(min_length=1, max_length=1024)]

WORKERS = ("be-python",)


def _json_object_from_string(value: Any) -> Any:
    """``contextJson`` may arrive as a JSON string; anything else passes through."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"contextJson is a string but not valid JSON: {exc.msg}") from exc
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CtxResult(_Strict):
    """What the context manager found: the files the worker may read and a summary."""

    relevant_files: list[RelPath] = Field(default_factory=list, max_length=2000)
    world_state: JsonValue = None


class SchemaResult(_Strict):
    """What the schema manager decided: interfaces, data models and constraints."""

    interfaces: JsonValue = None
    data_models: JsonValue = None
    constraints: JsonValue = None


class ContractResult(_Strict):
    """Where the OpenAPI contract for this task lives in the repository."""

    openapi_path: RelPath


_SUFFIXES: dict[str, type[_Strict]] = {
    "ctx": CtxResult,
    "schema": SchemaResult,
    "contract": ContractResult,
}


class ResourceRequest(BaseModel):
    """Limits a task may ask for; each must stay within its policy's ``max`` (camelCase on the wire)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
    )

    memory_mb: int | None = Field(default=None, gt=0)
    cpus: float | None = Field(default=None, gt=0)
    pids: int | None = Field(default=None, gt=0)
    wall_clock_seconds: int | None = Field(default=None, gt=0)


class Task(BaseModel):
    """One unit of work from the orchestrator (camelCase on the wire)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
    )

    task_key: Annotated[str, StringConstraints(pattern=TASK_KEY_PATTERN)]
    description: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
    spec_snippet: Annotated[str, StringConstraints(max_length=100_000)] = ""
    owns_paths: list[RelPath] = Field(min_length=1, max_length=200)
    context_json: Annotated[
        dict[str, dict[str, JsonValue]], BeforeValidator(_json_object_from_string)
    ]
    worker: Literal["be-python"] = "be-python"
    resources: ResourceRequest | None = None

    @field_validator("owns_paths")
    @classmethod
    def _no_duplicate_owns(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("ownsPaths lists the same path twice")
        return value

    @model_validator(mode="after")
    def _dependency_results(self) -> Task:
        prefix = f"{self.task_key}-"
        if f"{prefix}ctx" not in self.context_json:
            raise ValueError(f"contextJson must hold the context result under '{prefix}ctx'")
        for key, value in self.context_json.items():
            suffix = key.removeprefix(prefix) if key.startswith(prefix) else None
            model = _SUFFIXES.get(suffix or "")
            if model is None:
                allowed = ", ".join(f"'{prefix}{s}'" for s in _SUFFIXES)
                raise ValueError(f"contextJson key '{key}' is not one of {allowed}")
            model.model_validate(value)
        return self

    @property
    def ctx(self) -> CtxResult:
        """The ``<taskKey>-ctx`` dependency result (always present)."""
        return CtxResult.model_validate(self.context_json[f"{self.task_key}-ctx"])

    @property
    def schema_result(self) -> SchemaResult | None:
        """The ``<taskKey>-schema`` dependency result, when sent."""
        raw = self.context_json.get(f"{self.task_key}-schema")
        return None if raw is None else SchemaResult.model_validate(raw)

    @property
    def contract(self) -> ContractResult | None:
        """The ``<taskKey>-contract`` dependency result, when sent."""
        raw = self.context_json.get(f"{self.task_key}-contract")
        return None if raw is None else ContractResult.model_validate(raw)

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON form an orchestrator sends."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- commit subject

_SUBJECT_WIDTH = 72  # a commit subject's customary width
_DANGLING = frozenset({"a", "an", "and", "as", "for", "in", "of", "or", "the", "to", "with"})
_SCOPE_SKIP = frozenset({"app", "src", "backend", "lib"})
_NO_DIRECTIVES = str.maketrans({"[": "(", "]": ")", "*": " "})
_SUBJECT_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def commit_subject(task_key: str, description: str, owns_paths: Iterable[str]) -> str:
    """``feat(<scope>): <description> [<taskKey>]``, the worker brief's commit form.

    Built from the task alone (the orchestrator's description and ownsPaths), never
    from anything a sandbox wrote. The scope is the first folder of the first owned
    path that says more than 'app' or 'src'; the description is the task's first
    sentence, cleaned and cut at a clause or word boundary.
    """
    first = next(iter(owns_paths), "")
    parts = [p for p in first.strip("/").split("/") if p]
    folders = parts if first.endswith("/") else parts[:-1]
    named = [p for p in folders if p.lower() not in _SCOPE_SKIP]
    if named:
        raw_scope = named[0]
    elif folders:
        raw_scope = folders[0]
    else:
        raw_scope = PurePosixPath(parts[-1]).stem if parts else "app"
    scope = re.sub(r"[^a-z0-9_-]+", "-", raw_scope.lower()).strip("-")[:30] or "app"

    line = next((ln for ln in description.splitlines() if ln.strip()), "")
    line = _SUBJECT_UNSAFE.sub(" ", line).strip().lstrip("#*->").strip()
    # CI systems read directives from a subject ("[skip ci]", "[ci skip]", "***NO_CI***"):
    # no bracketed or starred text of the description survives, only the final key tag.
    line = line.translate(_NO_DIRECTIVES)
    line = " ".join(line.split())
    line = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0].rstrip(". ")  # the first sentence
    if len(line) > _SUBJECT_WIDTH:
        # Cut at the last clause boundary that fits, else at a word: never mid-word.
        head = line[:_SUBJECT_WIDTH]
        clause = max(head.rfind(sep) for sep in (": ", "; ", ", ", " - "))
        line = head[:clause] if clause > _SUBJECT_WIDTH // 3 else head.rsplit(" ", 1)[0]
        words = line.rstrip(",;:- ").split(" ")
        while len(words) > 1 and words[-1].lower() in _DANGLING:
            words.pop()  # "... validation and" reads as cut off
        line = " ".join(words)
    return f"feat({scope}): {line or 'implement task'} [{task_key}]"


# --------------------------------------------------------------------------- result

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _strip_controls(value: Any) -> Any:
    """Drop terminal escapes and bidi overrides from text that a sandbox wrote."""
    if isinstance(value, str):
        return _CONTROL_CHARS.sub("", value)
    return value


SafeText = Annotated[str, BeforeValidator(_strip_controls), StringConstraints(max_length=20_000)]
ResultPath = Annotated[str, BeforeValidator(_strip_controls), StringConstraints(max_length=1024)]

TaskStatus = Literal["succeeded", "failed", "timeout", "cancelled", "error"]


class TestResults(_Strict):
    """Counts as pytest and coverage reported them."""

    __test__ = False  # not a pytest test class

    total: int = Field(default=0, ge=0, le=1_000_000)
    passed: int = Field(default=0, ge=0, le=1_000_000)
    failed: int = Field(default=0, ge=0, le=1_000_000)
    skipped: int = Field(default=0, ge=0, le=1_000_000)
    coverage_percent: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> TestResults:
        if self.passed + self.failed + self.skipped > self.total:
            raise ValueError("passed + failed + skipped exceeds total")
        return self


class ConstraintReport(_Strict):
    """The verdict on one of the worker's ten constraints, with its evidence."""

    id: int = Field(ge=1, le=10)
    name: Annotated[str, StringConstraints(max_length=100)]
    passed: bool
    evidence: list[SafeText] = Field(default_factory=list, max_length=200)


class AgentClaim(_Strict):
    """The agent sandbox's own account of its work: a claim, recorded and shown, never trusted."""

    status: TaskStatus
    """The status its result.json claimed."""
    summary: SafeText = ""
    """The model's summary note, in its own words."""
    reason: SafeText | None = None
    """The reason its result.json gave, if any."""
    test_results: TestResults = Field(default_factory=TestResults)
    """The test counts it claimed."""
    failed_constraints: list[int] = Field(default_factory=list, max_length=10)
    """The constraints its own last verification reported as failing."""
    exit_code: int | None = None
    """How the agent's sandbox exited (the controller's observation, not the sandbox's)."""


class TaskResult(_Strict):
    """What a task produced. The runner writes one; the controller re-derives and rewrites it."""

    task_key: Annotated[str, StringConstraints(pattern=TASK_KEY_PATTERN)]
    status: TaskStatus
    files_created: list[ResultPath] = Field(default_factory=list, max_length=10_000)
    files_modified: list[ResultPath] = Field(default_factory=list, max_length=10_000)
    git_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")] | None = None
    summary: SafeText = ""
    test_results: TestResults = Field(default_factory=TestResults)
    missing_context: list[SafeText] = Field(default_factory=list, max_length=2000)
    constraints: list[ConstraintReport] = Field(default_factory=list, max_length=10)
    reason: SafeText | None = None
    """Why the task did not succeed, in one sentence; ``None`` on success."""
    rounds: int | None = Field(default=None, ge=0, le=1000)
    """Generate-verify rounds the loop ran (a round ends when the checks run after the
    model's turn). Reported by the runner; the controller drops it when it is more than
    the model requests its gateway saw."""
    warnings: list[SafeText] = Field(default_factory=list, max_length=200)
    """What a reviewer should know that the verdicts do not say by themselves (the judge's
    verifier warnings: a model-written conftest.py, a config file it changed, skipped tests)."""
    agent: AgentClaim | None = None
    """What the agent's own sandbox claimed, kept beside the verdict and never used for it:
    the status, test counts and checks above come from the judge's sandbox."""

    @field_validator("constraints")
    @classmethod
    def _unique_ids(cls, value: list[ConstraintReport]) -> list[ConstraintReport]:
        ids = [c.id for c in value]
        if len(set(ids)) != len(ids):
            raise ValueError("a constraint id is reported twice")
        return value


def _reject_constants(name: str) -> float:
    raise ValueError(f"JSON constant {name} is not allowed")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in JSON object")
    return dict(pairs)


MAX_RESULT_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_untrusted_json(raw: bytes, *, max_bytes: int, name: str = "result.json") -> Any:
    """Parse JSON bytes from a sandbox: size, UTF-8, depth, NaN and duplicate keys refused."""
    if len(raw) > max_bytes:
        raise ValueError(f"{name} is {len(raw)} bytes, over the {max_bytes}-byte cap")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8") from exc
    try:
        data = json.loads(
            text,
            parse_constant=_reject_constants,
            object_pairs_hook=_reject_duplicate_keys,
        )
    except RecursionError as exc:
        raise ValueError(f"{name} is nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc.msg}") from exc
    if _depth(data, MAX_RESULT_DEPTH) > MAX_RESULT_DEPTH:
        raise ValueError(f"{name} is nested deeper than {MAX_RESULT_DEPTH} levels")
    return data


def parse_untrusted_result(raw: bytes, *, max_bytes: int = 1_000_000) -> TaskResult:
    """Parse ``result.json`` bytes from a sandbox: size, depth, NaN and duplicate keys refused."""
    return TaskResult.model_validate(parse_untrusted_json(raw, max_bytes=max_bytes))


def json_schemas() -> dict[str, dict[str, Any]]:
    """The committed JSON Schemas of the task (as sent) and the result (as reported)."""
    task = Task.model_json_schema(by_alias=True, mode="validation")
    task["$id"] = "https://taskbox.dev/schemas/task.schema.json"
    task["properties"]["contextJson"]["description"] = (
        "Dependency results keyed '<taskKey>-ctx' (relevant_files, world_state), "
        "'<taskKey>-schema' (interfaces, data_models, constraints) and "
        "'<taskKey>-contract' (openapi_path); may also be sent as a JSON string."
    )
    _context_key_rules(task)
    result = TaskResult.model_json_schema(mode="serialization")
    result["$id"] = "https://taskbox.dev/schemas/result.schema.json"
    return {"task.schema.json": task, "result.schema.json": result}


#: What a ``contextJson`` key looks like: a task key and one of the dependency suffixes.
CONTEXT_KEY_PATTERN = "^" + TASK_KEY_PATTERN.strip("^$") + "-(" + "|".join(_SUFFIXES) + ")$"


def context_object_schema(definitions: dict[str, Any], ref_prefix: str) -> dict[str, Any]:
    """The JSON Schema of ``contextJson``'s object form, with the rules :class:`Task` validates in code.

    Each key is a task key plus a dependency suffix, and the suffix selects the result's
    strict shape; the result models go into ``definitions``, referred to as
    ``<ref_prefix><Model>`` (``#/$defs/`` in a JSON Schema, ``#/components/schemas/`` in
    OpenAPI). A schema cannot say "the same task key as ``taskKey``": descriptions say it.
    """
    shapes: dict[str, Any] = {}
    for suffix, model in _SUFFIXES.items():
        shape = model.model_json_schema(ref_template=ref_prefix + "{model}")
        for name, definition in shape.pop("$defs", {}).items():
            definitions.setdefault(name, definition)
        definitions[model.__name__] = shape
        shapes[f"-{suffix}$"] = {"$ref": f"{ref_prefix}{model.__name__}"}
    return {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": CONTEXT_KEY_PATTERN},
        "patternProperties": shapes,
        "additionalProperties": False,
    }


def _context_key_rules(task: dict[str, Any]) -> None:
    """Write into the task schema the ``contextJson`` rules its model validates in code; the object form may also arrive as JSON text."""
    context = task["properties"]["contextJson"]
    description = context.pop("description")
    task["properties"]["contextJson"] = {
        "description": description
        + " The key '<taskKey>-ctx' is required and every key is the task's own taskKey"
        " followed by -ctx, -schema or -contract.",
        "title": context.get("title", "Contextjson"),
        "anyOf": [
            context_object_schema(task.setdefault("$defs", {}), "#/$defs/"),
            {"type": "string", "description": "The same object, as JSON text."},
        ],
    }
