"""The committed openapi.json is what the code generates, and documents every route's errors."""

from __future__ import annotations

from click.testing import CliRunner

from controller.api import openapi_document, render_openapi
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
