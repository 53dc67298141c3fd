"""The conformance suite, run against every backend (the fake; Docker under ``-m docker``), and shown able to fail."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from controller.errors import SandboxError
from controller.sandbox import conformance
from controller.sandbox.backend import (
    MANDATORY_SETTINGS,
    CollectedOutput,
    OrphanContainer,
    SandboxHandle,
)
from controller.sandbox.conformance import (
    CHECKS,
    ConformanceCheck,
    ConformanceError,
    Scene,
    checks_for,
    fake_handler,
    run_check,
    run_conformance,
    unverified_settings,
)
from controller.sandbox.docker import DockerBackend
from controller.sandbox.fake import FakeEngine
from controller.sandbox.spec import ContainerSpec
from tests.controller.sandbox.conftest import TEST_LABEL, make_scene

SPEC_FIELDS = frozenset(ContainerSpec.model_fields)
HOST_CANARY = f'{{"status": "succeeded", "summary": "host-CANARY-{secrets.token_hex(6)}"}}'


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, policies_dir: Path) -> Iterator[Scene]:
    """The Docker tests' task (owned folder and file, a relevant file, unplanned and denied files), staged for real."""
    root = tmp_path_factory.mktemp("conformance")
    made = make_scene(root, policies_dir, HOST_CANARY)
    yield made
    made.cleanup()


def fake_engine(scene: Scene) -> FakeEngine:
    """A fake engine that plays the suite's commands and has only the policy's image."""
    return FakeEngine(fake_handler(scene), images={scene.image})


def _cases() -> Iterator[Any]:
    for check in CHECKS:
        if check.applies_to(FakeEngine.enforces):
            yield pytest.param("fake", check, id=f"fake-{check.name}")
        if check.applies_to(DockerBackend.enforces):
            yield pytest.param("docker", check, id=f"docker-{check.name}", marks=pytest.mark.docker)


@pytest.mark.parametrize(("kind", "check"), list(_cases()))
def test_backend_passes_the_conformance_check(
    kind: str, check: ConformanceCheck, scene: Scene, request: pytest.FixtureRequest
) -> None:
    """Each backend passes every check of the suite that its declared settings call for, leaving nothing behind."""
    backend = request.getfixturevalue("docker_backend") if kind == "docker" else fake_engine(scene)
    run_check(check, backend, scene)


# --------------------------------------------------------------------------- the suite's own shape


def test_every_name_is_a_container_setting() -> None:
    """Mandatory settings, declarations and what checks verify are all ContainerSpec field names."""
    assert MANDATORY_SETTINGS <= SPEC_FIELDS
    assert DockerBackend.enforces <= SPEC_FIELDS
    assert FakeEngine.enforces <= SPEC_FIELDS
    for check in CHECKS:
        assert check.verifies <= SPEC_FIELDS, check.name


def test_every_mandatory_setting_is_verified_by_a_check() -> None:
    """No mandatory setting is a blind spot of the suite; of Docker's declaration only ipc_mode is (documented)."""
    assert unverified_settings(MANDATORY_SETTINGS) == frozenset()
    assert unverified_settings(DockerBackend.enforces) == {"ipc_mode"}
    assert "ipc_mode" in (conformance.__doc__ or "")


def test_docker_must_pass_every_check_and_the_fake_only_what_it_models() -> None:
    """Docker declares every mandatory setting, so every check applies; the fake's gaps are the kernel checks."""
    assert DockerBackend.enforces >= MANDATORY_SETTINGS
    assert {c.name for c in CHECKS if not c.applies_to(DockerBackend.enforces)} == set()
    fake_gaps = {c.name for c in CHECKS if not c.applies_to(FakeEngine.enforces)}
    assert {"user", "network", "capabilities", "read-only-paths", "memory-kill"} <= fake_gaps
    fake_runs = {c.name for c in CHECKS if c.applies_to(FakeEngine.enforces)}
    assert fake_runs == {
        "exit-status-and-log",
        "deadline-kill",
        "cancel",
        "log-cap",
        "output-without-links",
        "recovery-by-labels",
        "missing-image",
    }
    assert MANDATORY_SETTINGS - FakeEngine.enforces  # so preflight refuses the fake


def test_run_conformance_reports_ok_for_the_fake(scene: Scene) -> None:
    """The one-call form (like inspect_ai's self_check) gives "ok" for every check the fake must pass."""
    engine = fake_engine(scene)
    results = run_conformance(engine, scene)
    assert results == dict.fromkeys((c.name for c in checks_for(engine)), "ok")
    assert engine.live == []


# --------------------------------------------------------------------------- the suite can fail


class NoDeadline(FakeEngine):
    """Ignores the spec's deadline (lets a command sleep as long as it likes)."""

    def wait(
        self,
        handle: SandboxHandle,
        *,
        timeout_seconds: float,  # noqa: ARG002 - ignored: that is the fault
        on_log: Callable[[str], None] | None = None,
    ) -> Any:
        return super().wait(handle, timeout_seconds=10_000, on_log=on_log)


class FollowsLinks(FakeEngine):
    """Reads output files with a plain open(), following links."""

    def collect(self, handle: SandboxHandle, caps: Mapping[str, int]) -> CollectedOutput:
        spec = next(s for s in self.specs if s.name == handle.name)
        out = next(m.source for m in spec.mounts if m.target == "/out")
        files = {n: (out / n).read_bytes() for n in caps if (out / n).is_file()}
        return CollectedOutput(files=files)


class ForgetsLabels(FakeEngine):
    """Cannot list its sandboxes by label."""

    def find_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:  # noqa: ARG002 - ignored: that is the fault
        return []


class NeverRemoves(FakeEngine):
    """Says it removed a sandbox but keeps it."""

    def remove(self, handle: SandboxHandle) -> None:
        self._record("remove", handle.name)


class NoLogCap(FakeEngine):
    """Streams the whole log whatever the spec's cap."""

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        return super().create(spec.model_copy(update={"log_max_bytes": 1 << 30}))


class EveryImage(FakeEngine):
    """Runs a sandbox of any image name, even one it does not have."""

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        return super().create(spec.model_copy(update={"image": "taskbox-sandbox:latest"}))


class WrongExit(FakeEngine):
    """Reports every command as a success."""

    def wait(
        self,
        handle: SandboxHandle,
        *,
        timeout_seconds: float,
        on_log: Callable[[str], None] | None = None,
    ) -> Any:
        outcome = super().wait(handle, timeout_seconds=timeout_seconds, on_log=on_log)
        return outcome.model_copy(update={"exit_code": 0})


class CancelIgnored(FakeEngine):
    """Removing a running sandbox does not stop it (it runs to its deadline)."""

    def remove(self, handle: SandboxHandle) -> None:
        with self._lock:
            container = self._containers.get(handle.id)
        if container is not None and container.state == "running":
            self._record("remove", handle.name)
            return
        super().remove(handle)


@pytest.mark.parametrize(
    ("broken", "check_name", "message"),
    [
        (NoDeadline, "deadline-kill", "past the deadline"),
        (FollowsLinks, "output-without-links", "accepted"),
        (ForgetsLabels, "recovery-by-labels", "found []"),
        (NeverRemoves, "exit-status-and-log", "left sandboxes behind"),
        (NoLogCap, "log-cap", "streamed"),
        (EveryImage, "missing-image", "missing image"),
        (WrongExit, "exit-status-and-log", "exit status"),
    ],
)
def test_a_broken_backend_fails_the_suite(
    scene: Scene, broken: type[FakeEngine], check_name: str, message: str
) -> None:
    """Each lifecycle check catches the engine fault it is about (so none of them cannot fail)."""
    engine = broken(fake_handler(scene), images={scene.image})
    check = next(c for c in CHECKS if c.name == check_name)
    with pytest.raises(ConformanceError, match=re.escape(message)):
        run_check(check, engine, scene)
    for handle in engine.live:
        FakeEngine.remove(engine, handle)


def test_a_backend_that_ignores_a_cancel_fails_the_suite(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that does not stop the sandbox is caught: it runs to the deadline, which is too late."""
    engine = CancelIgnored(fake_handler(scene), images={scene.image})
    original = scene.spec
    monkeypatch.setattr(conformance, "KILL_GRACE_SECONDS", 1)  # a cancel must take under 1 s here

    def short_deadline(command: list[str], **kwargs: Any) -> ContainerSpec:
        return original(command, **kwargs).model_copy(update={"wall_clock_seconds": 2})

    check = next(c for c in CHECKS if c.name == "cancel")
    scene.spec = short_deadline  # type: ignore[method-assign]
    try:
        with pytest.raises(ConformanceError, match="a cancel took"):
            run_check(check, engine, scene)
    finally:
        del scene.spec
        for handle in engine.live:
            FakeEngine.remove(engine, handle)


# --------------------------------------------------------------------------- the kernel checks can fail


def good_report(spec: ContainerSpec, scene: Scene) -> dict[str, Any]:
    """What the probe reports from a sandbox that enforces ``spec`` (cgroup v1 files)."""
    return {
        "spec": spec,
        "uid": 10001,
        "gid": 10001,
        "pid": 7,
        "cwd": spec.working_dir,
        "env": {**spec.environment, "PATH": "/usr/bin", "HOSTNAME": "abc"},
        "interfaces": ["lo"],
        "caps": {"CapEff": "0" * 16, "CapPrm": "0" * 16, "CapBnd": "0" * 16, "CapAmb": "0" * 16},
        "no_new_privs": "1",
        "connect": "ENETUNREACH",
        "files": sorted(scene.visible_files()),
        "unplanned": [],
        "writes": {"/work/app/readme.md": "EROFS", "/usr/x": "EROFS"},
        "read_only_mounts": {"/work/app/readme.md": True, "/work": True, "/": True},
        "owned_writes": {"/work/notes.txt": "written", "/out/conformance.txt": "written"},
        "limits": {
            "Max open files": ["256", "256"],
            "Max file size": [str(16 << 20), str(16 << 20)],
            "Max core file size": ["0", "0"],
        },
        "tmpfs": {
            t.target: {
                "size": t.size_bytes,
                "noexec": True,
                "nosuid": True,
                "nodev": True,
                "uid": t.uid,
            }
            for t in spec.tmpfs
        },
        "shm": {"size": spec.shm_bytes},
        "pids_max": str(spec.pids_limit),
        "memory_max": str(spec.memory_bytes),
        "memsw_max": str(spec.memory_swap_bytes),
        "swap_max": None,
        "cpu_max": None,
        "cpu_quota": "100000",
        "cpu_period": "100000",
        "forks": spec.pids_limit - 5,
        "fork_error": "EAGAIN",
    }


#: The checks that run sandboxes of their own; every other check reads the probe's report.
OWN_SANDBOX_CHECKS = {
    "exit-status-and-log",
    "deadline-kill",
    "cancel",
    "log-cap",
    "output-without-links",
    "recovery-by-labels",
    "missing-image",
    "memory-kill",
}
KERNEL_CHECKS = [c for c in CHECKS if c.name not in OWN_SANDBOX_CHECKS]


@pytest.mark.parametrize(
    ("overrides", "failing"),
    [
        ({"uid": 0, "gid": 0}, "user"),
        ({"caps": {"CapEff": "00000000a80425fb", "CapPrm": "0", "CapBnd": "0"}}, "capabilities"),
        ({"no_new_privs": "0"}, "no-new-privileges"),
        ({"interfaces": ["eth0", "lo"]}, "network"),
        ({"connect": "ETIMEDOUT"}, "network"),
        ({"writes": {"/work/app/readme.md": "written"}}, "read-only-paths"),
        ({"read_only_mounts": {"/work/app/readme.md": False}}, "read-only-paths"),
        ({"read_only_mounts": {"/": False}}, "read-only-paths"),
        ({"owned_writes": {"/work/notes.txt": "EROFS"}}, "owned-paths-writable"),
        ({"files": ["app/readme.md"]}, "nothing-unplanned"),
        ({"unplanned": ["secret_plan.txt"]}, "nothing-unplanned"),
        ({"pids_max": "max"}, "pids-limit"),
        ({"fork_error": None}, "pids-limit"),
        ({"memory_max": "9223372036854771712"}, "memory-limits"),
        ({"memsw_max": "9223372036854771712"}, "memory-limits"),
        ({"cpu_quota": "-1"}, "cpu-limit"),
        ({"limits": {"Max open files": ["1048576", "1048576"]}}, "ulimits"),
        ({"tmpfs": {}}, "tmpfs"),
        ({"shm": {"size": 64 << 20}}, "shm"),
        ({"env": {"ANTHROPIC_API_KEY": "sk-ant-leak"}}, "environment"),
        ({"cwd": "/"}, "working-dir"),
        ({"pid": 1}, "init"),
    ],
)
def test_each_kernel_check_fails_on_the_report_of_a_weaker_sandbox(
    scene: Scene, overrides: dict[str, Any], failing: str
) -> None:
    """Fed a probe report that breaks one setting, exactly the check of that setting fails."""
    backend = fake_engine(scene)
    spec = scene.spec(["probe"], scenario="probe")
    report = good_report(spec, scene)
    scene.probe_reports[id(backend)] = report
    try:
        passed = []
        for check in KERNEL_CHECKS:
            check.run(backend, scene)
            passed.append(check.name)
        assert len(passed) == len(KERNEL_CHECKS)  # the good report passes every kernel check
        report.update(overrides)
        failed = []
        for check in KERNEL_CHECKS:
            try:
                check.run(backend, scene)
            except ConformanceError:
                failed.append(check.name)
        assert failed == [failing]
    finally:
        scene.probe_reports.pop(id(backend), None)


def test_a_probe_that_cannot_run_fails_every_kernel_check(scene: Scene) -> None:
    """If the probe sandbox fails, the kernel checks fail with what it printed (never pass by default)."""
    engine = FakeEngine(lambda _sandbox: 1, images={scene.image})
    check = next(c for c in CHECKS if c.name == "user")
    with pytest.raises(ConformanceError, match="the probe sandbox exit status 1"):
        run_check(check, engine, scene)
    assert engine.live == []


def test_scene_specs_carry_the_test_label_and_a_fresh_staging(scene: Scene) -> None:
    """Every sandbox of the suite carries the tests' cleanup label, and each gets its own run and out folder."""
    first = scene.spec(["true"], scenario="exit")
    second = scene.spec(["true"], scenario="exit")
    assert first.labels[TEST_LABEL] == "1"
    assert first.labels[conformance.SCENARIO_LABEL] == "exit"
    assert first.name != second.name
    outs = {m.source for s in (first, second) for m in s.mounts if m.target == "/out"}
    assert len(outs) == 2
    with pytest.raises(SandboxError):
        FakeEngine(fake_handler(scene)).collect(
            SandboxHandle(id="gone", name="gone", run_id="gone"), {}
        )
