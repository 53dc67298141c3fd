"""Resource attacks from inside real sandboxes: limits hold, deadlines kill, nothing outlives a run.

The probe policy (conftest) allows 256 MiB, half a CPU, 64 pids, 256 open files,
8 MiB files, a 16 MiB /tmp and a 1 MiB log; each attack pushes one of them.
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
import time
from pathlib import Path

import pytest

from controller.events import RunEvent
from controller.runs import new_run_id
from controller.sandbox.docker import DockerBackend
from tests.security.conftest import (
    CONTROLLER_ID,
    PROBE_PATH,
    READY_LINE,
    Arena,
    editor_create,
    hostile_script,
    make_task,
    probe_task,
    repo_state,
    session_containers,
    write_script,
)

pytestmark = [pytest.mark.security, pytest.mark.docker]

MIB = 1024 * 1024


@pytest.mark.invariant(7)
def test_fork_and_thread_bombs_stop_at_the_pids_limit(arena: Arena) -> None:
    """Invariant 7: forking and threading stop with EAGAIN below the pids limit; the engine keeps answering."""
    run = arena.probe("forkbomb")
    report = run.report
    assert report["pids_max"] == "64"
    assert report["fork_failure"] == "EAGAIN"
    assert report["forked"] < 64
    assert report["threads_failure"] == "RuntimeError"
    assert run.exit_code == 0
    assert arena.client.ping()


@pytest.mark.invariant(7)
def test_memory_bomb_is_killed_and_reported(arena: Arena) -> None:
    """Invariant 7: allocating past 256 MiB ends in a kill (exit 137) that the outcome reports as out of memory."""
    run = arena.probe("memory")
    outcome = run.run.run.outcome
    assert outcome.exit_code == 137
    assert outcome.oom_killed
    assert not outcome.timed_out
    allocated = [int(m) for m in re.findall(r"allocated (\d+) MiB", run.log)]
    assert allocated, "the bomb never started"
    assert max(allocated) <= 256
    assert run.report == {}, "the bomb finished: memory was not limited"


@pytest.fixture(scope="module")
def fill(arena: Arena) -> tuple[dict[str, dict[str, int | str]], str]:
    """The fill probe (tmpfs, /dev/shm, an owned file, inodes), once; and its run id."""
    run = arena.probe("fill", "app/api")
    return run.report, run.run.run_id


@pytest.mark.invariant(7)
def test_filling_tmp_and_shm_stops_at_their_size(
    fill: tuple[dict[str, dict[str, int | str]], str],
) -> None:
    """Invariant 7: /tmp stops at its 16 MiB and /dev/shm at its 16 MiB with ENOSPC."""
    report, _ = fill
    assert report["tmp"]["error"] == "ENOSPC"
    assert int(report["tmp"]["bytes"]) <= 16 * MIB
    assert report["shm"]["error"] == "ENOSPC"
    assert int(report["shm"]["bytes"]) <= 16 * MIB


@pytest.mark.invariant(7)
def test_filling_an_owned_file_stops_at_the_file_size_limit(
    fill: tuple[dict[str, dict[str, int | str]], str],
) -> None:
    """Invariant 7: one file in an owned (host-backed) path stops at 8 MiB with EFBIG."""
    report, _ = fill
    assert report["owned_file"]["error"] == "EFBIG"
    assert report["owned_file"]["bytes"] == report["owned_file"]["fsize_limit"] == 8 * MIB


@pytest.mark.invariant(7)
def test_inode_filling_of_owned_paths_leaves_nothing_on_the_host(
    fill: tuple[dict[str, dict[str, int | str]], str], arena: Arena
) -> None:
    """Invariant 7: many files in an owned path are not capped (no quota) but vanish with the run's staging."""
    report, run_id = fill
    assert report["owned_inodes"]["made"] == 3000  # not defended: see SECURITY.md
    assert not (arena.runs / run_id).exists()


@pytest.mark.invariant(7)
def test_cpu_spinning_is_throttled_at_the_quota(arena: Arena) -> None:
    """Invariant 7: two processes spinning flat out are throttled at the half-CPU CFS quota."""
    report = arena.probe("cpu", "1.5").report
    assert report["quota_us"] * 2 == report["period_us"]
    assert report["throttled_periods"] > 0


@pytest.mark.invariant(7)
def test_stdout_flood_is_cut_at_the_log_cap(arena: Arena) -> None:
    """Invariant 7: 5 MiB written to stdout reaches the controller only up to the 1 MiB log cap."""
    run = arena.probe("flood", "5")
    outcome = run.run.run.outcome
    assert outcome.log_truncated
    assert len(run.log.encode()) <= MIB
    assert len(outcome.log_tail.encode()) <= 64 * 1024


@pytest.mark.invariant(7)
def test_descriptor_exhaustion_stops_at_nofile(arena: Arena) -> None:
    """Invariant 7: opening files stops with EMFILE at the 256 descriptor limit."""
    report = arena.probe("fds").report
    assert report["failure"] == "EMFILE"
    assert report["opened"] < 256


@pytest.mark.invariant(7)
def test_sigterm_ignoring_ptrace_stopping_sandbox_is_killed_at_the_deadline(arena: Arena) -> None:
    """Invariant 7: ignoring SIGTERM and ptrace-stopping PID 1 buys nothing: killed at the 3 s deadline."""
    task = probe_task(resources={"wall_clock_seconds": 3})
    run = arena.probe("stubborn", task=task)
    outcome = run.run.run.outcome
    assert READY_LINE in run.log, "the attack never got going"
    assert '"ptrace_pid1": "ok"' in run.log  # it really stopped init
    assert outcome.timed_out
    assert outcome.exit_code in (137, None)


@pytest.mark.invariant(8)
def test_daemon_left_behind_does_not_outlive_the_run(arena: Arena) -> None:
    """Invariant 8: a double-forked, setsid, SIGHUP-proof daemon stops beating when the run ends."""
    beat = f"/out/heartbeat-{secrets.token_hex(4)}"
    run = arena.probe("outlive", beat, keep=True)
    assert run.run.staging_root is not None
    try:
        heartbeat = run.run.staging_root / "out" / Path(beat).name
        assert run.report["beats_before_exit"] > 0
        first = heartbeat.read_text()
        time.sleep(0.5)
        assert heartbeat.read_text() == first, "the daemon is still writing after the run"
        # Nor is any process of it left on the host (container processes show in the host's /proc).
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                assert beat.encode() not in cmdline, f"pid {proc.name} survived the run"
    finally:
        shutil.rmtree(run.run.staging_root.parent)


@pytest.mark.invariant(8)
def test_orphans_of_a_dead_controller_are_found_and_removed(arena: Arena) -> None:
    """Invariant 8: a sandbox whose controller died (never removed) is found by label and removed on restart."""
    task = probe_task()
    with arena.started(["python", "-c", "import time; time.sleep(300)"], task=task) as box:
        assert session_containers(arena.client, box.handle.run_id) == [box.handle.id]
        # A restarted controller has a new backend object and knows nothing but the labels.
        restarted = DockerBackend(arena.client)
        removed = restarted.remove_orphans(CONTROLLER_ID)
        assert [o.id for o in removed] == [box.handle.id]
        assert removed[0].run_id == box.handle.run_id
        assert session_containers(arena.client) == []


@pytest.mark.invariant(8)
def test_cancelled_run_removes_its_sandbox_at_once(arena: Arena) -> None:
    """Invariant 8: cancelling a run whose hostile test sleeps removes the container and the staging."""
    sleeper = '"""Hostile test: never ends."""\n\nimport time\n\n\ndef test_sleep() -> None:\n    time.sleep(300)\n'
    script = write_script(
        arena.tmp / "scripts", hostile_script([editor_create("tests/test_sleep.py", sleeper)])
    )
    task = make_task(
        "SEC-CANCEL",
        owns=["app/api/", "tests/test_sleep.py"],
        relevant=[PROBE_PATH, "pyproject.toml", "app/__init__.py", "app/main.py"],
    )
    cancel = threading.Event()
    started = threading.Event()

    def on_event(event: RunEvent) -> None:
        if event.stage == "sandbox_started":
            started.set()

    def cancel_when_running() -> None:
        if started.wait(60):
            time.sleep(2)  # the hostile test is asleep inside by now
            cancel.set()

    before = repo_state(arena.repo)
    canceller = threading.Thread(target=cancel_when_running, daemon=True)
    canceller.start()
    run_id = new_run_id(task.task_key)
    result = arena.runner(f"scripted:{script}").execute(
        run_id=run_id,
        task=task,
        repo=arena.repo,
        base_ref="HEAD",
        emit=on_event,
        cancel=cancel,
        policy_name="sec-run",
    )
    canceller.join(5)
    assert result.status == "cancelled"
    assert result.git_commit is None
    assert session_containers(arena.client, run_id) == []
    assert not (arena.runs / run_id / "stage").exists()
    assert repo_state(arena.repo) == before
    assert (arena.runs / run_id / "record").is_dir()
