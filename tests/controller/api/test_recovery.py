"""`taskbox serve` in a subprocess: SIGKILL with tasks running and queued, restart, nothing lost; SIGTERM drains.

The fake executor leaves a "container" file per live run that survives the
kill, like a real container labelled with its run; recovery must remove them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import httpx2

from tests.controller.api.conftest import ServedProcess, task_body
from tests.controller.api.fake_executor import FakeExecutor, wait_for


def submit(client: httpx2.Client, key: str) -> str:
    """Submit a task; its id."""
    response = client.post("/v1/tasks", json=task_body(key), headers={"Idempotency-Key": key})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def status_of(client: httpx2.Client, task_id: str) -> dict[str, Any]:
    """The task's view."""
    response = client.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def stages(client: httpx2.Client, task_id: str) -> list[tuple[str, Any]]:
    """(stage, data) of every event of a finished task."""
    with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        out = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                import json  # noqa: PLC0415 - only here

                event = json.loads(line.removeprefix("data: "))
                out.append((event["stage"], event["data"]))
        return out


def test_kill_9_with_three_tasks_loses_nothing_and_keeps_order(
    serve_process: Callable[..., ServedProcess], fake: FakeExecutor
) -> None:
    """SIGKILL with two tasks running and one queued; each restart removes the runs' containers and
    re-queues them in order; a task that was running at two crashes is failed with a reason."""
    server = serve_process(TASKBOX_MAX_CONCURRENT_TASKS="2")
    client = server.client()
    one, two, three = (submit(client, key) for key in ("HOLD-1", "HOLD-2", "HOLD-3"))
    wait_for(
        lambda: (
            [status_of(client, t)["status"] for t in (one, two, three)]
            == ["running", "running", "queued"]
        ),
        what="two running, one queued",
    )
    first_runs = sorted(status_of(client, t)["runId"] for t in (one, two))
    assert fake.containers() == first_runs
    client.close()
    server.kill()
    assert server.process.returncode == -signal.SIGKILL
    # The kill left both runs' containers behind.
    assert fake.containers() == first_runs

    # Restart with one worker: recovery removes the leftovers and re-queues both, oldest first.
    server = serve_process(TASKBOX_MAX_CONCURRENT_TASKS="1")
    client = server.client()
    wait_for(lambda: status_of(client, one)["status"] == "running", what="task one to rerun")
    second_run = status_of(client, one)["runId"]
    assert second_run not in first_runs  # a new run, never a reused id
    assert fake.containers() == [second_run]
    assert [status_of(client, t)["status"] for t in (two, three)] == ["queued", "queued"]
    assert [status_of(client, t)["queuePosition"] for t in (two, three)] == [1, 2]
    assert status_of(client, one)["attempts"] == 2

    # A second crash while task one runs its second attempt: it is not retried again.
    client.close()
    server.kill()
    server = serve_process(TASKBOX_MAX_CONCURRENT_TASKS="1")
    client = server.client()
    failed = status_of(client, one)
    assert failed["status"] == "failed"
    assert "controller stopped while this task ran" in failed["reason"]
    assert second_run not in fake.containers()
    fake.release()
    wait_for(
        lambda: [status_of(client, t)["status"] for t in (two, three)] == ["succeeded"] * 2,
        what="the other two tasks to finish",
    )
    assert fake.containers() == []
    assert fake.stagings() == []
    # Every start, in order: no task skipped, the queue order held across both restarts.
    assert [c["task_key"] for c in fake.calls()] == [
        "HOLD-1",
        "HOLD-2",
        "HOLD-1",
        "HOLD-2",
        "HOLD-3",
    ]
    assert len({c["run_id"] for c in fake.calls()}) == 5
    restart_events = [d for s, d in stages(client, two) if s == "requeued"]
    assert [d["reason"] for d in restart_events] == ["controller_restart"]
    assert client.get(f"/v1/tasks/{one}/result").json()["status"] == "failed"
    client.close()


def test_sigterm_cancels_after_the_grace_and_the_next_start_resumes(
    serve_process: Callable[..., ServedProcess], fake: FakeExecutor
) -> None:
    """SIGTERM: the running task is cancelled after the grace, put back in the queue, and finishes after a restart."""
    server = serve_process(TASKBOX_SHUTDOWN_GRACE_SECONDS="0.2")
    client = server.client()
    task_id = submit(client, "HOLD-7")
    wait_for(lambda: status_of(client, task_id)["status"] == "running", what="the run")
    client.close()
    server.terminate()
    assert fake.containers() == []  # the cancelled run cleaned up after itself
    log = server.log.read_text()
    assert "shutdown grace over" in log
    assert "Traceback" not in log

    server = serve_process()
    client = server.client()
    wait_for(lambda: len(fake.calls()) == 2, what="the task to run again")
    fake.release()
    wait_for(lambda: status_of(client, task_id)["status"] == "succeeded", what="the task to finish")
    assert (
        status_of(client, task_id)["attempts"] == 1
    )  # a clean shutdown does not use up an attempt
    requeued = [d["reason"] for s, d in stages(client, task_id) if s == "requeued"]
    assert requeued == ["controller_shutdown"]
    client.close()


def test_sigterm_lets_a_run_finish_within_the_grace(
    serve_process: Callable[..., ServedProcess], fake: FakeExecutor
) -> None:
    """SIGTERM with a long grace: the running task may finish, and keeps its result."""
    server = serve_process(TASKBOX_SHUTDOWN_GRACE_SECONDS="60")
    client = server.client()
    task_id = submit(client, "HOLD-8")
    wait_for(lambda: status_of(client, task_id)["status"] == "running", what="the run")
    client.close()
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutting down" in server.log.read_text(), what="the drain to start")
    fake.release("HOLD-8")
    server.process.wait(timeout=60)
    server = serve_process()
    client = server.client()
    assert status_of(client, task_id)["status"] == "succeeded"
    assert len(fake.calls()) == 1
    client.close()
