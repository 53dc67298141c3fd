"""/metrics through real HTTP: Prometheus text with tasks by status, queue depth, durations, tokens."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.controller.api.conftest import ServedApi, task_body
from tests.controller.api.fake_executor import FakeExecutor, wait_for


def samples(api: ServedApi) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels."""
    response = api.client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_count_tasks_queue_durations_and_tokens(api: ServedApi, fake: FakeExecutor) -> None:
    """After one finished and one held task the metrics say so, and tokens of the round are counted."""
    client = api.client()
    done = client.post("/v1/tasks", json=task_body("BE-1"), headers={"Idempotency-Key": "a"})
    wait_for(
        lambda: client.get(f"/v1/tasks/{done.json()['id']}").json()["status"] == "succeeded",
        what="the task to finish",
    )
    client.post("/v1/tasks", json=task_body("HOLD-1"), headers={"Idempotency-Key": "b"})
    wait_for(lambda: len(fake.calls()) == 2, what="the second run")
    values = samples(api)
    assert values[("taskbox_tasks", (("status", "succeeded"),))] == 1
    assert values[("taskbox_tasks", (("status", "running"),))] == 1
    assert values[("taskbox_queue_depth", ())] == 0
    assert values[("taskbox_task_duration_seconds_count", (("status", "succeeded"),))] == 1
    assert values[("taskbox_model_tokens_total", (("kind", "input"),))] == 100
    assert values[("taskbox_model_tokens_total", (("kind", "output"),))] == 20
    fake.release()


def test_each_app_has_its_own_registry(api: ServedApi, serve_api: object) -> None:
    """Two apps in one process do not share metrics (no global registry)."""
    from controller.api import create_app  # noqa: PLC0415 - only this test builds a second app
    from controller.settings import Settings  # noqa: PLC0415

    other = create_app(Settings.model_construct(), api.service.executor)
    assert other.state.taskbox.metrics.registry is not api.app.state.taskbox.metrics.registry
