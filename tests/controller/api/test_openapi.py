"""The committed openapi.json is what the code generates, documents every route's errors, and says
what the server enforces (no null parameters, the cursor's shape, the context key rule)."""

from __future__ import annotations

import json
import re
from typing import Any

import hypothesis
import pytest
from click.testing import CliRunner
from hypothesis import strategies

from controller.api import openapi_document, render_openapi
from controller.api.errors import ERROR_CODES
from controller.api.models import CURSOR_PATTERN
from controller.api.routes.tasks import decode_cursor, encode_cursor
from controller.cli import cli
from tests.controller.api.conftest import REPO_ROOT

SPEC = REPO_ROOT / "openapi.json"


def test_committed_spec_matches_the_code() -> None:
    """openapi.json equals the generated document; regenerate with `taskbox api openapi --out openapi.json`."""
    assert SPEC.read_text(encoding="utf-8") == render_openapi(), (
        "openapi.json is stale: run `taskbox api openapi --out openapi.json`"
    )


def test_cli_prints_the_same_document() -> None:
    """`taskbox api openapi` prints exactly the committed file."""
    result = CliRunner().invoke(cli, ["api", "openapi"])
    assert result.exit_code == 0
    assert result.output == SPEC.read_text(encoding="utf-8")


def test_every_operation_documents_its_errors() -> None:
    """Every route under /v1 documents 401 and 500 with the shared ErrorResponse body."""
    document = openapi_document()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1"):
                assert "401" in responses, (method, path)
                assert operation["security"] == [{"HTTPBearer": []}], (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"] == {"application/json": {"schema": error_ref}}


def test_submission_documents_the_idempotency_key() -> None:
    """POST /v1/tasks declares its required Idempotency-Key header and a 202 TaskView."""
    operation = openapi_document()["paths"]["/v1/tasks"]["post"]
    headers = [p for p in operation["parameters"] if p["in"] == "header"]
    assert [(h["name"], h["required"]) for h in headers] == [("idempotency-key", True)]
    assert "202" in operation["responses"]


def _parameters() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, parameter)
        for path, operations in openapi_document()["paths"].items()
        for method, operation in operations.items()
        for parameter in operation.get("parameters", [])
    ]


def test_no_parameter_accepts_null() -> None:
    """A header or query value is present or absent, never null: no parameter schema allows null."""
    params = _parameters()
    assert params
    for method, path, parameter in params:
        assert "null" not in json.dumps(parameter["schema"]), (method, path, parameter["name"])
    [last_event_id] = [p for _, _, p in params if p["name"] == "last-event-id"]
    assert last_event_id["schema"]["type"] == "integer"
    assert last_event_id["schema"]["minimum"] == 0


@pytest.mark.parametrize("seq", [1, 9, 10, 123456, 10**17, 10**18 - 1])
def test_the_cursor_pattern_matches_every_cursor_the_server_makes(seq: int) -> None:
    """`cursor` has a pattern, and every cursor the server hands out matches it (and decodes back)."""
    [cursor] = [p for _, _, p in _parameters() if p["name"] == "cursor"]
    schema = cursor["schema"]
    assert isinstance(schema, dict)
    pattern = schema["pattern"]
    made = encode_cursor(seq)
    assert re.fullmatch(pattern, made), made
    assert decode_cursor(made) == seq


def test_the_context_key_rule_is_in_the_spec() -> None:
    """The spec says that contextJson needs `<taskKey>-ctx` and which keys it may hold."""
    context = openapi_document()["components"]["schemas"]["Task"]["properties"]["contextJson"]
    assert "<taskKey>-ctx" in context["description"]
    names = re.compile(context["propertyNames"]["pattern"])
    assert names.match("BE-1-ctx")
    assert names.match("BE-1-schema")
    assert not names.match("BE-1-extra")
    assert not names.match("../x-ctx")


def test_every_error_code_is_in_the_description() -> None:
    """The API description lists every code the server can answer with, new ones included."""
    description = openapi_document()["info"]["description"]
    for status, code, _ in ERROR_CODES:
        assert f"| {status} | `{code}` |" in description
    for code in ("invalid_task", "branch_exists", "task_key_taken", "policy_unavailable"):
        assert f"`{code}`" in description


def test_a_submitted_task_links_to_its_routes() -> None:
    """The 202 of a submission links its `id` to every route that takes a task id."""
    document = openapi_document()
    links = document["paths"]["/v1/tasks"]["post"]["responses"]["202"]["links"]
    operation_ids = {
        operation["operationId"]
        for operations in document["paths"].values()
        for operation in operations.values()
    }
    assert {link["operationId"] for link in links.values()} <= operation_ids
    assert len(links) == 5
    for link in links.values():
        assert link["parameters"] == {"task_id": "$response.body#/id"}


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(cursor=strategies.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_cursor_the_pattern_allows_is_one_the_server_takes(cursor: str) -> None:
    """The cursor pattern is exact: any string it allows decodes (the spec never promises a cursor the server refuses)."""
    assert 0 <= decode_cursor(cursor) < 10**18
    assert re.fullmatch(CURSOR_PATTERN, encode_cursor(decode_cursor(cursor)))
