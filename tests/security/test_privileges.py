"""Privilege attacks from inside real sandboxes: posture, setuid, namespaces, kernel interfaces, secrets.

The direct probes run with ``run_in_task_sandbox``; the last test is a whole task
whose hostile test (written by the model, run by the verification) hunts for the
model API key while the gateway really uses it against a loopback upstream.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from controller.runs import new_run_id
from tests.security.conftest import (
    API_KEY_CANARY,
    DOTENV_CANARY,
    PROBE_PATH,
    SECRET_FILE_CANARY,
    Arena,
    ProbeRun,
    editor_create,
    forwarding_test,
    hostile_script,
    make_task,
    repo_state,
    reports_in,
    serve_fake_messages_api,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.security, pytest.mark.docker]

CANARIES = (API_KEY_CANARY, DOTENV_CANARY, SECRET_FILE_CANARY)
REVERSED = [c[::-1] for c in CANARIES]
ZERO_CAPS = "0000000000000000"


@pytest.fixture(scope="module")
def privileges(arena: Arena) -> ProbeRun:
    """The privileges probe, once."""
    return arena.probe("privileges")


@pytest.fixture(scope="module")
def secrets_probe(arena: Arena) -> Iterator[ProbeRun]:
    """The secrets probe, run while the controller's own environment holds the API key."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANTHROPIC_API_KEY", API_KEY_CANARY)
        patch.setenv("TASKBOX_ANTHROPIC_API_KEY", API_KEY_CANARY)
        yield arena.probe("secrets", *REVERSED)


@pytest.mark.invariant(4)
def test_sandbox_user_has_no_capabilities_and_no_new_privileges(privileges: ProbeRun) -> None:
    """Invariant 4: uid 10001, every capability set empty, NoNewPrivs=1, seccomp filtering (2)."""
    report = privileges.report
    assert (report["uid"], report["euid"], report["gid"]) == (10001, 10001, 10001)
    assert 0 not in report["groups"]
    assert report["caps"] == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), ZERO_CAPS
    )
    assert report["no_new_privs"] == "1"
    assert report["seccomp"] == "2"


@pytest.mark.invariant(4)
def test_image_has_no_setuid_binaries_and_root_cannot_be_reached(privileges: ProbeRun) -> None:
    """Invariant 4: no setuid/setgid file in the image; su and setuid(0) fail."""
    report = privileges.report
    assert report["setuid_files"] == []
    assert report["su"] != "ok"
    assert report["setuid_0"] == "EPERM"


@pytest.mark.invariant(4)
def test_namespaces_mounts_and_chroot_are_refused(privileges: ProbeRun) -> None:
    """Invariant 4: unshare (user and mount namespaces), mount and chroot all fail, so no new view of the host."""
    report = privileges.report
    assert report["unshare_user"] == "EPERM"
    assert report["unshare_mount"] == "EPERM"
    assert report["unshare_cli"] != "ok"
    assert report["mount"] == "EPERM"
    assert report["chroot"] == "EPERM"


@pytest.mark.invariant(4)
def test_keyring_bpf_and_device_nodes_are_refused(privileges: ProbeRun) -> None:
    """Invariant 4: keyctl and bpf are filtered, mknod of a device fails."""
    report = privileges.report
    assert report["keyctl"] == "EPERM"
    assert report["bpf"] == "EPERM"
    assert report["mknod"] == "EPERM"


@pytest.mark.invariant(7)
def test_cgroup_limits_cannot_be_rewritten_from_inside(privileges: ProbeRun) -> None:
    """Invariant 7: the pids and memory limits (and the cgroup folder) cannot be written."""
    writes = privileges.report["writes"]
    for path in (
        "/sys/fs/cgroup/pids/pids.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/taskbox-probe",
    ):
        assert writes[path] in ("EROFS", "EACCES"), path


@pytest.mark.invariant(4)
def test_proc_sys_sysrq_and_kernel_helpers_are_read_only(privileges: ProbeRun) -> None:
    """Invariant 4: /proc/sys, /proc/sysrq-trigger and /sys/kernel cannot be written."""
    writes = privileges.report["writes"]
    for path in ("/proc/sys/kernel/hostname", "/sys/kernel/uevent_helper"):
        assert writes[path] in ("EROFS", "EACCES"), path
    # Kernels built without magic SysRq have no trigger file at all (ENOENT, and it cannot be made).
    assert writes["/proc/sysrq-trigger"] in ("EROFS", "EACCES", "ENOENT")


@pytest.mark.invariant(2)
def test_no_secret_in_env_files_proc_or_inherited_descriptors(secrets_probe: ProbeRun) -> None:
    """Invariant 2: the API key (in the controller's env), .env and key files appear nowhere inside."""
    report = secrets_probe.report
    assert report["found"] == []
    assert report["docker_host"] is None
    assert not any(report["home_files"].values()), report["home_files"]
    assert set(report["open_fds"]) <= {0, 1, 2, 3}  # 3: the probe's own listing of /proc/self/fd
    assert report["run_json_mode"] == "0o400"  # the per-run gateway token: the sandbox user only
    allowed_env = {"COVERAGE_FILE", "HOME", "HOSTNAME", "LANG", "PATH", "PIP_NO_INDEX"}
    allowed_env |= {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "TASKBOX_RUN_CONFIG",
        "VIRTUAL_ENV",
    }
    assert set(report["env_names"]) <= allowed_env


@pytest.mark.invariant(2)
def test_container_settings_carry_no_secret(secrets_probe: ProbeRun) -> None:
    """Invariant 2: docker inspect (env, labels, command, mounts) of the sandbox holds no secret."""
    inspected = json.dumps(secrets_probe.run.run.inspect)
    for canary in CANARIES:
        assert canary not in inspected


@pytest.mark.invariant(2)
def test_api_key_never_enters_a_real_run_while_the_gateway_uses_it(
    arena: Arena, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 2: a hostile test hunts the key the gateway is really sending upstream; finds nothing, and the gateway refuses it without the run token."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY_CANARY)
    monkeypatch.setenv("TASKBOX_ANTHROPIC_API_KEY", API_KEY_CANARY)
    hostile = forwarding_test(["secrets", *REVERSED], ["gateway", *REVERSED])
    upstream = serve_fake_messages_api(
        hostile_script([editor_create("tests/test_hostile.py", hostile)])
    )
    task = make_task(
        "SEC-KEY",
        owns=["app/api/", "tests/test_hostile.py"],
        relevant=[
            PROBE_PATH,
            "pyproject.toml",
            "app/__init__.py",
            "app/main.py",
            ".env",
            "secrets/api.key",
        ],
    )
    before = repo_state(arena.repo)
    run_id = new_run_id(task.task_key)
    try:
        result = arena.runner("anthropic", anthropic_base_url=upstream.url).execute(
            run_id=run_id, task=task, repo=arena.repo, base_ref="HEAD", policy_name="sec-run"
        )
    finally:
        upstream.stop()
    record = arena.runs / run_id / "record"
    reports = reports_in((record / "sandbox.log").read_text())
    # The key was live: the gateway really sent it upstream, and only there.
    assert upstream.requests, "the gateway never called the upstream"
    assert all(headers.get("x-api-key") == API_KEY_CANARY for headers, _ in upstream.requests)
    # Inside, the hostile test found no secret and could not use the gateway without the run token.
    assert reports["secrets"]["found"] == []
    gateway: dict[str, Any] = reports["gateway"]
    assert gateway["leaked"] == []
    statuses = gateway["statuses"]
    assert statuses["no_token"] == 401
    assert statuses["wrong_token"] == 401
    assert statuses["wrong_bearer"] == 401
    assert statuses["forbidden_model"] == 403
    assert statuses["other_path"] in (404, 405)
    # Nothing the controller recorded or handed to the engine holds the key.
    for path in record.iterdir():
        assert API_KEY_CANARY.encode() not in path.read_bytes(), path.name
    assert result.status != "succeeded" or result.git_commit is not None
    assert not (arena.runs / run_id / "stage").exists()
    after = repo_state(arena.repo)
    assert {k: v for k, v in after.items() if k != "refs"} == {
        k: v for k, v in before.items() if k != "refs"
    }
