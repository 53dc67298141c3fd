"""A bounded schemathesis run of the committed OpenAPI spec against the served app, with a valid and an invalid token.

Positive and negative examples; for each, no 5xx and no stack trace in any body,
and answers to a valid token conform to the spec (status, content type, schema).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from controller.api import create_app
from controller.settings import Settings
from tests.controller.api.conftest import (
    REPO_ROOT,
    TOKEN_ALL,
    TOKEN_UNKNOWN,
    TOKENS,
    ServedApi,
    serve_app_in_thread,
    task_body,
)
from tests.controller.api.fake_executor import FakeExecutor, wait_for

MAX_EXAMPLES = 30
TRACE_MARKERS = ("Traceback", 'File "/', "site-packages", "RuntimeError", "sqlite3.")

schema = schemathesis.openapi.from_path(REPO_ROOT / "openapi.json")
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,  # the same examples every run: a failure reproduces
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """One server for the whole fuzz run (hypothesis wants no function-scoped fixtures)."""
    root = tmp_path_factory.mktemp("fuzz")
    repo = _git_repo(root / "alpha")
    fake = FakeExecutor(root / "control")
    fake.release()  # nothing the fuzzer submits may hold a worker
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        api_tokens=TOKENS,
        repositories={"alpha": repo},
        database=root / "taskbox.sqlite3",
        runs_dir=root / "runs",
        max_concurrent_tasks=2,
        shutdown_grace_seconds=2,
    )
    api = serve_app_in_thread(create_app(settings, fake))
    # One finished task, so generated requests also reach the routes of a task that exists.
    seeded = api.client().post(
        "/v1/tasks", json=task_body("SEED-1"), headers={"Idempotency-Key": "seed"}
    )
    seeded_id = seeded.json()["id"]
    wait_for(lambda: api.service.get(seeded_id).finished, what="the seeded task to finish")
    api.seeded_id = seeded_id  # type: ignore[attr-defined]
    yield api
    api.stop()


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "PATH": "/usr/bin:/bin",
    }
    (path / "README.md").write_text("fuzz\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run(["git", "-C", str(path), *args], env=env, check=True, capture_output=True)
    return path


@schema.parametrize()
def test_fuzz_no_server_error_no_trace(
    case: schemathesis.Case[Any], fuzz_server: ServedApi
) -> None:
    """For a generated request, neither a valid nor an invalid token gets a 5xx or a stack trace."""
    for token in (TOKEN_ALL, TOKEN_UNKNOWN):
        headers = {"Authorization": f"Bearer {token}"}
        response = case.call(base_url=fuzz_server.url, headers=headers, timeout=10)
        _check(case, response, token, headers)
    if case.path_parameters and "task_id" in case.path_parameters:
        # The same request against a task that exists (a random id is almost always a 404).
        case.path_parameters = {**case.path_parameters, "task_id": fuzz_server.seeded_id}  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {TOKEN_ALL}"}
        response = case.call(base_url=fuzz_server.url, headers=headers, timeout=10)
        _check(case, response, TOKEN_ALL, headers)


def _check(
    case: schemathesis.Case[Any], response: Response, token: str, headers: dict[str, str]
) -> None:
    """No 5xx, no trace; 401 for a bad token; a valid token's answer conforms to the spec."""
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    for marker in TRACE_MARKERS:
        assert marker not in response.text, (case.as_curl_command(), response.text)
    if token == TOKEN_UNKNOWN and case.operation.path not in ("/healthz", "/readyz"):
        assert response.status_code in (401, 413), case.as_curl_command()
    if token == TOKEN_ALL and response.status_code != 204:
        case.validate_response(
            response,
            checks=[
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
            headers=headers,
        )
