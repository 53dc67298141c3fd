"""run_sandbox's decisions (cancel, deadline, OOM, refused output, removal on error), fast, on the fake engine."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from controller.errors import ImageNotFoundError, SandboxError
from controller.sandbox.backend import EXIT_SIGKILL
from controller.sandbox.fake import STEPS, Exit, FakeEngine, FakeSandbox, exits_with
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import (
    LABEL_CONTROLLER,
    LABEL_MANAGED,
    LABEL_RUN,
    BindMount,
    ContainerSpec,
)
from taskbox_wire.paths import OUTDIR

CAPS = {"result.json": 100, "result.bundle": 100}


def make_spec(tmp_path: Path, **overrides: Any) -> ContainerSpec:
    """A small spec whose /out is a real folder under ``tmp_path``."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "name": "taskbox-life-1",
        "image": "taskbox-sandbox:latest",
        "command": ["runner"],
        "user": "10001:10001",
        "environment": {},
        "labels": {LABEL_MANAGED: "1", LABEL_RUN: "life-1", LABEL_CONTROLLER: "tests"},
        "mounts": [BindMount(source=out, target=OUTDIR, read_only=False)],
        "tmpfs": [],
        "memory_bytes": 1 << 27,
        "memory_swap_bytes": 1 << 27,
        "nano_cpus": 1_000_000_000,
        "pids_limit": 64,
        "ulimits": [],
        "log_max_bytes": 1024,
        "wall_clock_seconds": 30,
    }
    values.update(overrides)
    return ContainerSpec.model_validate(values)


def writes_result(sandbox: FakeSandbox) -> int:
    """A command that prints a line and writes a plain result.json."""
    sandbox.print("working\n")
    sandbox.write("result.json", b'{"ok": true}')
    return 0


def test_a_plain_run_goes_through_every_step_once_and_collects(tmp_path: Path) -> None:
    """create, inspect, start, wait, collect, remove, in that order; callbacks see the inspect and the log."""
    engine = FakeEngine(writes_result)
    created: list[dict[str, Any]] = []
    started: list[bool] = []
    logged: list[str] = []
    run = run_sandbox(
        engine,
        make_spec(tmp_path),
        collect=CAPS,
        on_log=logged.append,
        on_created=created.append,
        on_started=lambda: started.append(True),
    )
    assert engine.steps() == ["create", "inspect", "start", "wait", "collect", "remove"]
    assert run.outcome.exit_code == 0
    assert run.output.files == {"result.json": b'{"ok": true}'}
    assert run.output.missing == ["result.bundle"]
    assert created == [run.inspect]
    assert created[0]["State"]["Status"] == "created"
    assert started == [True]
    assert logged == ["working\n"]
    assert run.image_id.startswith("sha256:")
    assert not run.cancelled
    assert engine.live == []


def test_cancel_removes_the_running_sandbox_and_collects_nothing(tmp_path: Path) -> None:
    """A cancel during the run removes the container at once; result.json it wrote is never read."""

    def runs_forever(sandbox: FakeSandbox) -> int:
        sandbox.write("result.json", b'{"ok": true}')
        sandbox.run_until_removed()
        return 0

    engine = FakeEngine(runs_forever)
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    began = time.monotonic()
    run = run_sandbox(engine, make_spec(tmp_path), collect=CAPS, cancel=cancel)
    assert time.monotonic() - began < 5  # the deadline is 30 s: the cancel, not the clock, ended it
    assert run.cancelled
    assert run.output.files == {}
    assert run.output.refused == {}
    assert "collect" not in engine.steps()
    assert "remove" in engine.steps()
    assert engine.live == []


def test_cancel_set_before_the_start_still_removes_and_reports_cancelled(tmp_path: Path) -> None:
    """An already-set cancel: the sandbox is removed as soon as it starts, and the run says cancelled."""

    def runs_forever(sandbox: FakeSandbox) -> int:
        sandbox.run_until_removed()
        return 0

    engine = FakeEngine(runs_forever)
    cancel = threading.Event()
    cancel.set()
    run = run_sandbox(engine, make_spec(tmp_path), collect=CAPS, cancel=cancel)
    assert run.cancelled
    assert run.outcome.exit_code is None
    assert "collect" not in engine.steps()
    assert engine.live == []


def test_deadline_kill_is_timed_out_and_nothing_is_collected(tmp_path: Path) -> None:
    """A command sleeping past the spec's deadline is killed there: timed out, exit 137, not OOM, no collect."""

    def sleeps(sandbox: FakeSandbox) -> int:
        sandbox.write("result.json", b'{"ok": true}')
        sandbox.sleep(3600)
        return 0

    engine = FakeEngine(sleeps)
    run = run_sandbox(engine, make_spec(tmp_path, wall_clock_seconds=7), collect=CAPS)
    outcome = run.outcome
    assert outcome.timed_out
    assert outcome.duration_seconds == 7
    assert outcome.exit_code == EXIT_SIGKILL
    assert not outcome.oom_killed
    assert "timed out" in outcome.describe()
    assert run.output.files == {}
    assert "collect" not in engine.steps()
    assert engine.steps()[-1] == "remove"
    assert engine.live == []


def test_a_command_within_its_deadline_is_not_timed_out(tmp_path: Path) -> None:
    """Sleeping less than the deadline ends normally and is collected."""

    def naps(sandbox: FakeSandbox) -> int:
        sandbox.sleep(6)
        return writes_result(sandbox)

    run = run_sandbox(FakeEngine(naps), make_spec(tmp_path, wall_clock_seconds=7), collect=CAPS)
    assert not run.outcome.timed_out
    assert run.outcome.duration_seconds == 6
    assert run.output.files == {"result.json": b'{"ok": true}'}


@pytest.mark.parametrize(
    ("ended", "confirmed", "text"),
    [
        (Exit(exit_code=EXIT_SIGKILL, oom=True), True, "killed: out of memory"),
        (EXIT_SIGKILL, False, "out of memory, or killed from outside"),
    ],
    ids=["engine-confirms", "exit-137-only"],
)
def test_oom_kill_is_reported_and_output_still_collected(
    tmp_path: Path, ended: int | Exit, confirmed: bool, text: str
) -> None:
    """Exit 137 before the deadline is an OOM kill (confirmed when the engine says so); the output is still read."""

    def allocates(sandbox: FakeSandbox) -> int | Exit:
        sandbox.write("result.json", b"{}")
        return ended

    run = run_sandbox(FakeEngine(allocates), make_spec(tmp_path), collect=CAPS)
    assert run.outcome.oom_killed
    assert run.outcome.oom_confirmed is confirmed
    assert not run.outcome.timed_out
    assert text in run.outcome.describe()
    assert run.output.files == {"result.json": b"{}"}


def test_refused_output_arrives_as_refusals(tmp_path: Path) -> None:
    """A symlinked result.json, a FIFO, a hard link and a file over its cap are refused, never read."""
    host = tmp_path / "host-secret.json"
    host.write_text('{"stolen": true}')

    def hostile(sandbox: FakeSandbox) -> int:
        sandbox.symlink("result.json", str(host))
        sandbox.fifo("result.bundle")
        first = sandbox.write("a", b"x")
        os.link(first, sandbox.out_dir / "linked")
        sandbox.write("big", bytes(101))
        sandbox.write("fine", b"ok")
        return 0

    caps = {**CAPS, "linked": 100, "big": 100, "fine": 100, "absent": 100}
    run = run_sandbox(FakeEngine(hostile), make_spec(tmp_path), collect=caps)
    output = run.output
    assert output.files == {"fine": b"ok"}
    assert set(output.refused) == {"result.json", "result.bundle", "linked", "big"}
    assert "symbolic link" in output.refused["result.json"]
    assert "FIFO" in output.refused["result.bundle"]
    assert "hard links" in output.refused["linked"]
    assert "over the cap" in output.refused["big"]
    assert output.missing == ["absent"]
    assert host.read_text() == '{"stolen": true}'


def test_the_log_is_streamed_up_to_its_cap(tmp_path: Path) -> None:
    """Output past the spec's log cap is not forwarded; the outcome says the log was cut."""
    seen: list[str] = []
    engine = FakeEngine(exits_with(0, output="y" * 3000))
    run = run_sandbox(engine, make_spec(tmp_path), on_log=seen.append)
    assert "".join(seen) == "y" * 1024
    assert run.outcome.log_truncated


@pytest.mark.parametrize("step", ["inspect", "start", "wait", "collect"])
def test_the_sandbox_is_removed_when_a_step_raises(tmp_path: Path, step: str) -> None:
    """Whichever engine step fails after create, the error reaches the caller and the sandbox is removed."""
    engine = FakeEngine(writes_result, failures={step: SandboxError(f"{step} failed")})
    with pytest.raises(SandboxError, match=f"{step} failed"):
        run_sandbox(engine, make_spec(tmp_path), collect=CAPS)
    assert engine.steps()[-1] == "remove"
    assert engine.live == []


def test_a_failing_create_leaves_nothing_and_removes_nothing(tmp_path: Path) -> None:
    """When create itself fails there is no sandbox: the error propagates and no other step runs."""
    engine = FakeEngine(writes_result, failures={"create": SandboxError("create failed")})
    with pytest.raises(SandboxError, match="create failed"):
        run_sandbox(engine, make_spec(tmp_path))
    assert engine.steps() == ["create"]
    assert engine.live == []


def test_a_missing_image_is_image_not_found_and_nothing_runs(tmp_path: Path) -> None:
    """An image the engine lacks raises ImageNotFoundError from create; no sandbox exists afterwards."""
    engine = FakeEngine(writes_result, images={"other:latest"})
    with pytest.raises(ImageNotFoundError):
        run_sandbox(engine, make_spec(tmp_path))
    assert engine.live == []
    assert engine.steps() == ["create"]


@pytest.mark.parametrize("callback", ["on_created", "on_started", "on_log"])
def test_the_sandbox_is_removed_when_a_callback_raises(tmp_path: Path, callback: str) -> None:
    """A caller's callback that raises does not leave the sandbox behind."""

    def boom(*_args: object) -> None:
        raise RuntimeError(callback)

    engine = FakeEngine(writes_result)
    with pytest.raises(RuntimeError, match=callback):
        run_sandbox(engine, make_spec(tmp_path), **{callback: boom})  # type: ignore[arg-type]
    assert engine.steps()[-1] == "remove"
    assert engine.live == []


def test_a_wait_error_without_a_cancel_is_an_error(tmp_path: Path) -> None:
    """An engine failure while waiting is raised (only a cancel turns it into a cancelled run)."""

    def engine_breaks(_sandbox: FakeSandbox) -> int:
        raise SandboxError("lost the engine")

    engine = FakeEngine(engine_breaks)
    with pytest.raises(SandboxError, match="lost the engine"):
        run_sandbox(engine, make_spec(tmp_path), collect=CAPS)
    assert "collect" not in engine.steps()
    assert engine.live == []


def test_the_fake_refuses_unknown_steps_and_records_everything() -> None:
    """A failure for a step the Protocol lacks is a mistake in the test, caught at once."""
    with pytest.raises(ValueError, match="no such step"):
        FakeEngine(writes_result, failures={"run": SandboxError("x")})
    assert set(STEPS) >= {"create", "start", "wait", "collect", "remove"}
