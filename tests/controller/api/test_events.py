"""Server-sent events through real HTTP: stages as they happen, the end, and Last-Event-ID resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2

from tests.controller.api.conftest import ServedApi, task_body
from tests.controller.api.fake_executor import FakeExecutor, wait_for


@dataclass
class Sse:
    """One parsed server-sent event."""

    id: int
    event: str
    data: dict[str, object]


def read_events(response: httpx2.Response, stop_after: int | None = None) -> list[Sse]:
    """Parse an event stream until it ends (or after ``stop_after`` events)."""
    return parse_events(response.iter_lines(), stop_after)


def parse_events(lines: Iterator[str], stop_after: int | None = None) -> list[Sse]:
    """Parse SSE lines; a partial event at the start (no id) is skipped."""
    events: list[Sse] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields and "id" in fields:
                events.append(
                    Sse(
                        int(fields["id"]),
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                )
                if stop_after is not None and len(events) >= stop_after:
                    return events
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


def submit(api: ServedApi, key: str) -> str:
    """Submit a task; its id."""
    response = api.client().post("/v1/tasks", json=task_body(key), headers={"Idempotency-Key": key})
    assert response.status_code == 202
    return str(response.json()["id"])


def test_stream_shows_every_stage_and_ends(api: ServedApi) -> None:
    """A finished task's stream replays queued → started → run stages → finished, then closes."""
    task_id = submit(api, "BE-1")
    with api.client().stream("GET", f"/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    assert [e.event for e in events] == [
        "queued",
        "started",
        "admitted",
        "staged",
        "round",
        "checks",
        "finished",
    ]
    assert [e.id for e in events] == list(range(1, 8))
    assert events[-1].data["data"] == {"status": "succeeded", "reason": None, "gitCommit": "a" * 40}
    assert events[0].data["seq"] == 1


def test_stream_follows_a_running_task_live(api: ServedApi, fake: FakeExecutor) -> None:
    """While a task runs the stream waits; events written later arrive on the same connection."""
    task_id = submit(api, "HOLD-1")
    with api.client().stream("GET", f"/v1/tasks/{task_id}/events") as response:
        lines = response.iter_lines()
        seen: list[str] = []
        for line in lines:
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if seen[-1:] == ["sandbox_started"]:
                break
        # The run is held: nothing final has been sent, and the connection is still open.
        assert "finished" not in seen
        fake.release("HOLD-1")
        seen.extend(line.removeprefix("event: ") for line in lines if line.startswith("event: "))
    assert seen[-1] == "finished"
    assert seen[:3] == ["queued", "started", "admitted"]


def test_last_event_id_resumes_without_gaps(api: ServedApi, fake: FakeExecutor) -> None:
    """A client that drops the stream and reconnects with Last-Event-ID gets every later event once."""
    task_id = submit(api, "HOLD-2")
    with api.client().stream("GET", f"/v1/tasks/{task_id}/events") as response:
        first = read_events(response, stop_after=2)
    fake.release("HOLD-2")
    wait_for(
        lambda: api.client().get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded",
        what="the task to finish",
    )
    last_id = first[-1].id
    with api.client().stream(
        "GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(last_id)}
    ) as response:
        rest = read_events(response)
    with api.client().stream("GET", f"/v1/tasks/{task_id}/events") as response:
        everything = read_events(response)
    assert [e.id for e in first + rest] == [e.id for e in everything]
    assert rest[0].id == last_id + 1
    assert rest[-1].event == "finished"
    # The query form does the same for clients that cannot set headers.
    with api.client().stream(
        "GET", f"/v1/tasks/{task_id}/events", params={"after": last_id}
    ) as response:
        assert [e.id for e in read_events(response)] == [e.id for e in rest]


def test_reconnect_after_the_end_is_204(api: ServedApi) -> None:
    """Reconnecting after the final event answers 204, which tells an EventSource to stop."""
    task_id = submit(api, "BE-3")
    with api.client().stream("GET", f"/v1/tasks/{task_id}/events") as response:
        events = read_events(response)
    response = api.client().get(
        f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(events[-1].id)}
    )
    assert response.status_code == 204


def test_bad_last_event_id_is_422(api: ServedApi) -> None:
    """A Last-Event-ID (or after) that is not a sequence number answers 422."""
    task_id = submit(api, "BE-4")
    response = api.client().get(
        f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "yesterday"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    # Past SQLite's 64-bit integers (found by the fuzz run): refused, not a 500.
    for params, headers in (({"after": 2**70}, {}), ({}, {"Last-Event-ID": str(2**70)})):
        huge = api.client().get(f"/v1/tasks/{task_id}/events", params=params, headers=headers)
        assert huge.status_code == 422


def test_cancel_shows_in_the_stream(api: ServedApi) -> None:
    """A cancel of a running task shows as cancel_requested, then finished with status cancelled."""
    task_id = submit(api, "HOLD-5")
    with api.client().stream("GET", f"/v1/tasks/{task_id}/events") as response:
        lines = response.iter_lines()
        for line in lines:
            if line == "event: sandbox_started":
                break
        assert api.client().post(f"/v1/tasks/{task_id}/cancel").status_code == 202
        rest = parse_events(lines)
    stages = [e.event for e in rest]
    assert "cancel_requested" in stages
    assert stages[-1] == "finished"
    assert rest[-1].data["data"]["status"] == "cancelled"  # type: ignore[index]
