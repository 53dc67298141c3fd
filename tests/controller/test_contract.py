"""The task contract and the result: strict parsing, clear errors, and committed JSON Schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from controller.cli.schema import render_schemas
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import Task, TaskResult, parse_untrusted_result


def wire(**overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskKey": "BE-7",
        "description": "Add users",
        "specSnippet": "POST /users",
        "ownsPaths": ["app/api/"],
        "contextJson": {
            "BE-7-ctx": {"relevant_files": ["app/main.py"], "world_state": "empty app"},
            "BE-7-schema": {"interfaces": ["POST /users"], "data_models": {}, "constraints": []},
            "BE-7-contract": {"openapi_path": "openapi.yaml"},
        },
    }
    task.update(overrides)
    return task


def test_task_parses_the_orchestrators_camel_case_form() -> None:
    """A full task parses and its dependency results are typed."""
    task = Task.model_validate(wire())
    assert task.ctx.relevant_files == ["app/main.py"]
    assert task.contract is not None
    assert task.contract.openapi_path == "openapi.yaml"
    assert task.worker == "be-python"
    assert Task.model_validate(task.to_wire()) == task


def test_context_json_may_be_a_json_string() -> None:
    """contextJson sent as a JSON string parses like the object."""
    as_object = Task.model_validate(wire())
    as_string = Task.model_validate(wire(contextJson=json.dumps(wire()["contextJson"])))
    assert as_string == as_object


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"contextJson": {}}, "must hold the context result under 'BE-7-ctx'"),
        ({"contextJson": "{not json"}, "not valid JSON"),
        ({"contextJson": {"BE-7-ctx": {}, "OTHER-ctx": {}}}, "'OTHER-ctx' is not one of"),
        ({"contextJson": {"BE-7-ctx": {"relevant_file": []}}}, "Extra inputs"),
        ({"ownsPaths": []}, "at least 1 item"),
        ({"ownsPaths": ["a", "a"]}, "same path twice"),
        ({"taskKey": "../../etc"}, "String should match pattern"),
        ({"image": "evil:latest"}, "Extra inputs are not permitted"),
        ({"privileged": True}, "Extra inputs are not permitted"),
        ({"worker": "be-rust"}, "Input should be 'be-python'"),
        ({"resources": {"memory_mb": -1}}, "greater than 0"),
    ],
)
def test_bad_tasks_are_refused_with_a_clear_message(
    overrides: dict[str, Any], message: str
) -> None:
    """Each malformed task is refused and the message says what is wrong."""
    with pytest.raises(ValidationError, match=message):
        Task.model_validate(wire(**overrides))


def result_bytes(**overrides: Any) -> bytes:
    body: dict[str, Any] = {"task_key": "BE-7", "status": "succeeded", "summary": "ok"}
    body.update(overrides)
    return json.dumps(body).encode()


def test_untrusted_result_strips_terminal_escapes() -> None:
    """ANSI escapes and bidi overrides in text a sandbox wrote are removed."""
    result = parse_untrusted_result(result_bytes(summary="\x1b[2Jgone\u202eevil"))
    assert result.summary == "[2Jgoneevil"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"task_key": "BE-7", "status": "failed", "status": "succeeded"}', "duplicate key"),
        (
            b'{"task_key": "BE-7", "status": "failed", "test_results": {"coverage_percent": NaN}}',
            "NaN",
        ),
        (b"[" * 100 + b"]" * 100, "nested deeper"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "not valid JSON"),
        (result_bytes(status="pwned"), "Input should be"),
        (result_bytes(git_commit="HEAD; rm -rf /"), "String should match pattern"),
        (result_bytes(test_results={"total": 1, "passed": 5}), "exceeds total"),
        (result_bytes(summary="x" * 30_000), "at most 20000"),
    ],
)
def test_hostile_results_are_refused(raw: bytes, message: str) -> None:
    """Hostile result.json bytes are refused with the reason."""
    with pytest.raises(ValueError, match=message):
        parse_untrusted_result(raw)


def test_oversized_result_is_refused_before_parsing() -> None:
    """A result over the byte cap is refused without being parsed."""
    with pytest.raises(ValueError, match="over the 100-byte cap"):
        parse_untrusted_result(b" " * 101, max_bytes=100)


def test_committed_json_schemas_match_the_models() -> None:
    """schemas/*.json are exactly what `taskbox schema export` writes from the models."""
    for name, text in render_schemas().items():
        committed = (PROJECT_ROOT / "schemas" / name).read_text(encoding="utf-8")
        assert committed == text, f"schemas/{name} is stale: run `taskbox schema export`"


def test_result_schema_is_the_seed_shape() -> None:
    """The result carries the seed's fields plus status and the constraint report."""
    fields = set(TaskResult.model_fields)
    assert fields >= {
        "files_created",
        "files_modified",
        "git_commit",
        "summary",
        "test_results",
        "missing_context",
        "status",
        "constraints",
    }


def test_task_schema_holds_the_context_key_rules_the_model_enforces() -> None:
    """schemas/task.schema.json refuses what Task refuses in contextJson: foreign keys, unknown suffixes, bad shapes."""
    import jsonschema_rs  # noqa: PLC0415 - the runner extra's validator, only this test needs it

    validator = jsonschema_rs.validator_for(
        json.loads((PROJECT_ROOT / "schemas" / "task.schema.json").read_text(encoding="utf-8"))
    )
    task = json.loads(
        (PROJECT_ROOT / "examples" / "task-greetings.json").read_text(encoding="utf-8")
    )
    assert validator.is_valid(task)
    assert validator.is_valid({**task, "contextJson": json.dumps(task["contextJson"])})
    key = f"{task['taskKey']}-ctx"
    refused = {
        "a key of no dependency suffix": {**task["contextJson"], f"{task['taskKey']}-notes": {}},
        "a key that is not a task key": {
            **task["contextJson"],
            "../x-ctx": task["contextJson"][key],
        },
        "an empty object": {},
        "a ctx result with a field of no meaning": {key: {**task["contextJson"][key], "extra": 1}},
        "relevant_files that is not a list": {key: {"relevant_files": "app/main.py"}},
    }
    for what, context in refused.items():
        assert not validator.is_valid({**task, "contextJson": context}), what
        with pytest.raises(ValidationError):
            Task.model_validate({**task, "contextJson": context})
