"""The contract run's logic: values built from schemas, and how each kind of answer is judged."""

from __future__ import annotations

import re
from typing import Any

from taskbox_runner.verify.contract_runtime import (
    example_for,
    judge_answers,
    plan_probes,
    to_json_schema,
    unknown_id,
)

CONTRACT: dict[str, Any] = {
    "openapi": "3.0.3",
    "paths": {
        "/items/{code}": {
            "get": {
                "parameters": [
                    {
                        "name": "code",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]+$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Item"}}
                        },
                    },
                    "404": {"description": "none"},
                    "default": {
                        "description": "error",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "required": ["message"]}
                            }
                        },
                    },
                },
            }
        },
        "/items": {
            "post": {
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/New"}}
                    }
                },
                "responses": {"201": {"description": "made"}, "422": {"description": "bad"}},
            }
        },
    },
    "components": {
        "schemas": {
            "Item": {
                "type": "object",
                "required": ["code"],
                "properties": {
                    "code": {"type": "string"},
                    "note": {"type": "string", "nullable": True},
                },
            },
            "New": {
                "type": "object",
                "required": ["contact_email", "count"],
                "properties": {
                    "contact_email": {"type": "string"},
                    "count": {"type": "integer", "minimum": 3, "maximum": 9},
                },
            },
        }
    },
}


def _judge(answers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    probes, skipped = plan_probes(
        CONTRACT, [("GET", "/items/{code}", "/items/{code}"), ("POST", "/items", "/items")]
    )
    assert skipped == []
    judged = judge_answers(CONTRACT, probes, answers)
    return [m for _, m in judged.findings], judged.warnings


def test_values_follow_bounds_names_and_patterns() -> None:
    """Bodies satisfy minimum and name hints; made-up ids still match the parameter's pattern."""
    body = example_for(CONTRACT["components"]["schemas"]["New"], CONTRACT)
    assert body == {"contact_email": "user@example.com", "count": 3}
    code = unknown_id({"type": "string", "pattern": "^[A-Z]{2}-[0-9]+$"}, CONTRACT)
    assert re.search("^[A-Z]{2}-[0-9]+$", code)
    assert unknown_id({"type": "integer", "maximum": 50}, CONTRACT) == 50


def test_schemas_become_closed_json_schema_with_null_variants() -> None:
    """nullable becomes a null variant, and an object listing properties accepts no others."""
    schema = to_json_schema({"$ref": "#/components/schemas/Item"}, CONTRACT)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


def test_answers_as_the_contract_says_pass() -> None:
    """404 for the made-up code, 201 for the body, 422 for the broken one: nothing to report."""
    findings, warnings = _judge(
        [
            {"id": 0, "status": 404, "body": '{"detail": "Not Found"}'},
            {"id": 1, "status": 201, "body": ""},
            {"id": 2, "status": 422, "body": '{"detail": []}'},
        ]
    )
    assert findings == []
    assert warnings == []


def test_wrong_answers_are_findings_and_unjudgeable_ones_warnings() -> None:
    """200 with a body of other fields, an accepted invalid body: findings; a 401: a warning."""
    findings, warnings = _judge(
        [
            {"id": 0, "status": 200, "body": '{"code": "AB-1", "secret": 1}'},
            {"id": 1, "status": 401, "body": ""},
            {"id": 2, "status": 200, "body": "{}"},
        ]
    )
    assert findings == [
        (
            "GET /items/{code}: answered 200 with a body the contract's schema refuses at the body: "
            "Additional properties are not allowed ('secret' was unexpected); body: "
            '{"code": "AB-1", "secret": 1}'
        ),
        "POST /items: accepted an invalid body {} with 200; the contract documents 201, 422",
    ]
    assert warnings == [
        "POST /items: not judged: answered 401 (valid request): the app asks for credentials"
    ]


def test_error_bodies_under_a_generic_default_are_not_judged() -> None:
    """A 400 matched only by 'default' is not validated against the generic error schema."""
    findings, _ = _judge(
        [
            {"id": 0, "status": 400, "body": '{"detail": "bad code"}'},
            {"id": 1, "status": 201, "body": ""},
            {"id": 2, "status": 422, "body": "{}"},
        ]
    )
    assert findings == []
