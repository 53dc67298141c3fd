"""A bounded stateful schemathesis run of the committed spec: submit, then follow its links.

Schemathesis chains calls through the spec's links (a submitted task's ``id``
into get, result, events, cancel and audit) and runs all of its checks on each
answer: server errors, status codes, content types, response schemas and
headers, and that schema-valid requests are accepted. The one rule it is told
about: admission refuses some schema-valid tasks on purpose (the mount plan,
the policy's maximum and the ``<taskKey>-ctx`` key need the task as a whole or
the repository, which no JSON Schema can express). Such a 422 must carry one of
those documented codes and reasons; any other rejection of valid data fails.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import hypothesis
import pytest
import schemathesis
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import positive_data_acceptance

from controller.api import create_app
from controller.settings import Settings
from tests.controller.api.conftest import (
    REPO_ROOT,
    TOKEN_ALL,
    TOKENS,
    ServedApi,
    serve_app_in_thread,
    task_body,
)
from tests.controller.api.fake_executor import FakeExecutor
from tests.controller.api.test_fuzz import TRACE_MARKERS, _git_repo

#: Scenarios and steps per scenario: bounded so the run takes seconds, not minutes.
MAX_SCENARIOS = 80
MAX_STEPS = 8

schema = schemathesis.openapi.from_path(REPO_ROOT / "openapi.json")


@pytest.fixture(scope="module")
def stateful_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """One server over the fake executor (whose admission is the real one) for the whole run."""
    root = tmp_path_factory.mktemp("stateful")
    repo = _git_repo(root / "alpha")
    fake = FakeExecutor(root / "control")
    fake.release()  # nothing generated may hold a worker
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
    yield api
    api.stop()


def semantic_refusal(case: schemathesis.Case[Any], response: Response) -> bool:
    """A 422 that admission gives a schema-valid submission for a documented reason no schema can state."""
    if response.status_code != 422 or case.operation.path != "/v1/tasks":
        return False
    error = response.json()["error"]
    if error["code"] in ("invalid_task", "invalid_base_ref"):
        return True
    # The task contract's cross-field rules: contextJson's keys must use the task's own key.
    return error["code"] == "validation_error" and "contextJson" in error["message"]


class TaskWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    """Schemathesis' state machine for the spec, calling the test server with a valid token."""

    url: ClassVar[str] = ""
    seen: ClassVar[Counter[tuple[str, str, int]]] = Counter()

    def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
        """Where and how to call: the test server, with the valid token in place of a generated one.

        A negative case that drops the ``Authorization`` header on purpose is sent without one.
        """
        sent = {name.lower() for name in case.headers or {}}
        headers = {"Authorization": f"Bearer {TOKEN_ALL}"} if "authorization" in sent else {}
        return {"base_url": self.url, "headers": headers, "timeout": 10}

    def before_call(self, case: schemathesis.Case[Any]) -> None:
        """Make every other schema-valid submission a task admission takes, so links reach real tasks.

        Random bodies almost never name a ``<taskKey>-ctx`` that matches their random key,
        so without this no scenario would get past the submission. The key comes from the
        generated body, so scenarios differ and a replay of one body gets the same key.
        """
        if (
            case.method == "POST"
            and case.operation.path == "/v1/tasks"
            and case.meta is not None
            and case.meta.generation.mode.is_positive
        ):
            digest = hashlib.sha256(repr(case.body).encode()).hexdigest()
            if int(digest[0], 16) % 2 == 0:
                case.body = task_body(f"ST-{digest[:12]}")

    def validate_response(
        self,
        response: Response,
        case: schemathesis.Case[Any],
        additional_checks: Any = None,
        **kwargs: Any,
    ) -> None:
        """Every schemathesis check; positive data may be refused only for a documented semantic reason."""
        TaskWorkflow.seen[(case.method, case.operation.path, response.status_code)] += 1
        for marker in TRACE_MARKERS:
            assert marker not in response.text, (case.as_curl_command(), response.text)
        excluded: list[Any] = [positive_data_acceptance] if semantic_refusal(case, response) else []
        case.validate_response(
            response,
            additional_checks=additional_checks,
            excluded_checks=excluded,
            transport_kwargs=kwargs or None,
        )


def test_stateful_run_finds_nothing(stateful_server: ServedApi) -> None:
    """Chained calls through the spec's links find no server error, no mismatch with the spec, no wrongly refused request."""
    TaskWorkflow.url = stateful_server.url
    TaskWorkflow.run(
        settings=hypothesis.settings(
            max_examples=MAX_SCENARIOS,
            stateful_step_count=MAX_STEPS,
            deadline=None,
            derandomize=True,  # the same scenarios every run: a failure reproduces
            # Generation only: the server's state (and a run's timing) changes what a replayed
            # scenario sees, which shrinking would report as a flaky strategy, not a finding.
            phases=[hypothesis.Phase.generate],
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
    seen = TaskWorkflow.seen
    # The run was stateful: submissions were admitted and their links reached the real tasks.
    assert seen["POST", "/v1/tasks", 202] > 0, sorted(seen.items())
    # A link reached a real task when it answered 200, or, for a result asked for while the
    # task is still queued or running (links are followed at once), 409 task_not_finished.
    reached = {
        "/v1/tasks/{task_id}": seen["GET", "/v1/tasks/{task_id}", 200],
        "/v1/tasks/{task_id}/result": seen["GET", "/v1/tasks/{task_id}/result", 200]
        + seen["GET", "/v1/tasks/{task_id}/result", 409],
        "/v1/tasks/{task_id}/audit": seen["GET", "/v1/tasks/{task_id}/audit", 200],
    }
    for route, count in reached.items():
        assert count > 0, (route, sorted(seen.items()))
