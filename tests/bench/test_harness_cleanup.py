"""The bench harness: a container's phase from its name, and which run may remove which container."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import pytest

from bench.harness import (
    BENCH_HOST_LABEL,
    BENCH_LABEL,
    BENCH_LABELS,
    BENCH_PID_LABEL,
    CONTROLLER_ID,
    OWNER_ENV,
    THIS_RUN,
    RunOwner,
    container_phase,
    pid_alive,
    removable,
    remove_bench_containers,
)
from controller.sandbox.spec import LABEL_CONTROLLER

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import docker

OWNER = RunOwner(run_id="a" * 32, pid=1000, host="here")
OTHER = RunOwner(run_id="b" * 32, pid=2000, host="here")


def _alive(*pids: int) -> Callable[[int], bool]:
    """A liveness check that knows only ``pids``."""
    return lambda pid: pid in pids


@pytest.mark.parametrize(
    ("name", "phase"),
    [
        ("taskbox-0123abcd-judge", "judge"),
        ("taskbox-0123abcd", "agent"),
        ("taskbox-0123abcd-judge-static", "judge-static"),
        ("taskbox-0123abcd-judge-tests", "judge-tests"),
        ("taskbox-0123abcd-judgement", "agent"),
        ("judge", "agent"),
    ],
)
def test_the_phase_of_a_container_comes_from_its_name(name: str, phase: str) -> None:
    """The one judge container (``-judge``) is ``judge``, not ``agent``; the two older ones keep their names."""
    assert container_phase(name) == phase


def test_a_run_removes_its_own_containers_whatever_their_state() -> None:
    """Its run id, or its controller id alone, makes a container the run's own."""
    alive = _alive(OWNER.pid, OTHER.pid)
    assert removable(OWNER.labels(), "running", owner=OWNER, alive=alive)
    assert removable(
        {LABEL_CONTROLLER: OWNER.controller_id},
        "running",
        owner=OWNER,
        alive=alive,
    )


def test_a_live_concurrent_run_keeps_its_containers() -> None:
    """Another run's container stays while that run's process lives, running or stopped."""
    alive = _alive(OWNER.pid, OTHER.pid)
    for state in ("running", "created", "exited"):
        assert not removable(OTHER.labels(), state, owner=OWNER, alive=alive)
    assert not removable(
        {LABEL_CONTROLLER: OTHER.controller_id},
        "running",
        owner=OWNER,
        alive=alive,
    )


def test_a_dead_runs_containers_are_removed() -> None:
    """Once the other run's pid is gone, its containers are orphans this run removes."""
    assert removable(OTHER.labels(), "running", owner=OWNER, alive=_alive(OWNER.pid))


def test_a_run_on_another_host_is_never_judged_by_its_pid() -> None:
    """A pid says nothing about another machine's processes: that run's containers stay."""
    elsewhere = RunOwner(run_id="c" * 32, pid=3000, host="elsewhere")
    assert not removable(elsewhere.labels(), "exited", owner=OWNER, alive=_alive())


def test_an_ownerless_bench_container_goes_only_once_stopped() -> None:
    """The old ``org.taskbox.bench=1`` (no pid): removed when exited or dead, never while it runs."""
    legacy = {BENCH_LABEL: "1"}
    assert removable(legacy, "exited", owner=OWNER, alive=_alive())
    assert removable(legacy, "dead", owner=OWNER, alive=_alive())
    assert not removable(legacy, "running", owner=OWNER, alive=_alive())
    assert not removable(legacy, "created", owner=OWNER, alive=_alive())
    garbled = {**OTHER.labels(), BENCH_PID_LABEL: "not-a-pid"}
    assert not removable(garbled, "running", owner=OWNER, alive=_alive())


def test_a_container_without_the_bench_label_is_not_the_benchs() -> None:
    """Another controller's containers, or none of Taskbox's, are never touched."""
    assert not removable({LABEL_CONTROLLER: "taskbox"}, "exited", owner=OWNER, alive=_alive())
    assert not removable({}, "exited", owner=OWNER, alive=_alive())


def test_the_owner_round_trips_through_the_environment_and_refuses_garbage() -> None:
    """What a suite exports is what its servers read back; anything else is no owner."""
    assert RunOwner.decode(OWNER.encode()) == OWNER
    for text in ("", "abc", "abc:12", "abc:x:host", "ab-c:12:host", ":12:host"):
        assert RunOwner.decode(text) is None, text


def test_this_run_is_labelled_with_this_process_and_exported() -> None:
    """The suite's labels name its run id, pid and host; a child process inherits the same owner."""
    assert {
        BENCH_LABEL: THIS_RUN.run_id,
        BENCH_PID_LABEL: str(THIS_RUN.pid),
        BENCH_HOST_LABEL: THIS_RUN.host,
    } == BENCH_LABELS
    assert CONTROLLER_ID == THIS_RUN.controller_id != "bench"
    assert os.environ[OWNER_ENV] == THIS_RUN.encode()
    child = subprocess.run(
        [sys.executable, "-c", "from bench.harness import THIS_RUN; print(THIS_RUN.encode())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == THIS_RUN.encode()


def test_pid_alive_tells_a_live_process_from_a_finished_one() -> None:
    """This process is alive; a child that has exited and been reaped is not."""
    assert pid_alive(os.getpid())
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert not pid_alive(finished.pid)
    assert not pid_alive(0)


# --- on the real engine ------------------------------------------------------------------


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    """A client of the local engine, skipped without one."""
    docker_module = pytest.importorskip("docker")
    try:
        client = docker_module.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - no engine: nothing to test against
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    client.close()


@pytest.mark.docker
def test_cleanup_on_the_engine_spares_a_live_concurrent_run(engine: docker.DockerClient) -> None:
    """Three created containers: this run's and a dead run's are removed, a live run's is kept."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    me = RunOwner(run_id=uuid.uuid4().hex, pid=os.getpid(), host=THIS_RUN.host)
    live = RunOwner(run_id=uuid.uuid4().hex, pid=os.getpid(), host=THIS_RUN.host)
    dead = RunOwner(run_id=uuid.uuid4().hex, pid=finished.pid, host=THIS_RUN.host)
    image = os.environ.get("TASKBOX_IMAGE", "taskbox-sandbox:latest")
    made = {
        owner.run_id: engine.api.create_container(
            image, command=["true"], labels=owner.labels(), network_disabled=True
        )["Id"]
        for owner in (me, live, dead)
    }
    try:
        remove_bench_containers(engine, owner=me)
        left = {
            item["Id"] for item in engine.api.containers(all=True, filters={"label": [BENCH_LABEL]})
        }
        assert made[me.run_id] not in left
        assert made[dead.run_id] not in left
        assert made[live.run_id] in left
    finally:
        for container in made.values():
            try:
                engine.api.remove_container(container, force=True)
            except Exception:  # noqa: BLE001, S112 - already removed by the code under test
                continue
