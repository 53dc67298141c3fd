"""The exact hardened settings: policy + plan -> ContainerSpec -> docker-py create arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.types import LogConfig, Mount, Ulimit

from controller.errors import SandboxError
from controller.policy.planner import MountEntry, MountPlan, Role
from controller.policy.schema import Policy
from controller.sandbox.docker import DockerBackend, create_kwargs
from controller.sandbox.spec import ContainerSpec, StagingPaths, build_container_spec
from controller.settings import Settings

MIB = 1024 * 1024


@pytest.fixture
def policy() -> Policy:
    return Policy.model_validate(
        {
            "name": "unit",
            "image": "taskbox-sandbox:latest",
            "uid": 10001,
            "gid": 10001,
            "limits": {
                "memory_mb": 256,
                "cpus": 1.5,
                "pids": 64,
                "nofile": 512,
                "file_size_mb": 32,
                "wall_clock_seconds": 30,
                "log_max_mb": 2,
            },
            "max": {"memory_mb": 512, "cpus": 2, "pids": 128, "wall_clock_seconds": 60},
            "tmpfs": [{"path": "/tmp", "size_mb": 8}, {"path": "/home/sandbox", "size_mb": 4}],
            "deny": [],
            "model": {
                "allowed_models": ["m"],
                "default_model": "m",
                "max_tokens_per_request": 100,
                "max_total_tokens": 1000,
                "max_requests": 10,
                "max_rounds": 2,
            },
        }
    )


@pytest.fixture
def spec(policy: Policy) -> ContainerSpec:
    plan = MountPlan(
        task_key="BE-1",
        base_commit="0" * 40,
        policy="unit",
        policy_digest="sha256:abc",
        read_only=[
            MountEntry(path="README.md", kind="file", role=Role.RELEVANT, exists_at_base=True)
        ],
        read_write=[
            MountEntry(path="app/api", kind="dir", role=Role.OWNS, exists_at_base=True),
            MountEntry(path="tests/test_x.py", kind="file", role=Role.OWNS, exists_at_base=False),
        ],
    )
    return build_container_spec(
        policy=policy,
        plan=plan,
        staging=StagingPaths.under(Path("/stage/r1")),
        image="taskbox-sandbox:latest",
        run_id="r1",
        command=["python", "-m", "taskbox_runner"],
        controller_id="ctl",
    )


def test_spec_carries_the_policy_limits_and_only_planned_mounts(spec: ContainerSpec) -> None:
    """build_container_spec turns the policy and plan into exactly these values, nothing more."""
    assert spec.name == "taskbox-r1"
    assert spec.user == "10001:10001"
    assert spec.working_dir == "/work"
    assert spec.read_only_root is True
    assert spec.network_disabled is True
    assert spec.privileged is False
    assert spec.cap_drop == ("ALL",)
    assert spec.security_opt == ("no-new-privileges:true",)
    assert spec.memory_bytes == 256 * MIB
    assert spec.memory_swap_bytes == 256 * MIB
    assert spec.nano_cpus == 1_500_000_000
    assert spec.pids_limit == 64
    assert spec.init is True
    assert spec.ipc_mode == "private"
    assert spec.log_max_bytes == 2 * MIB
    assert spec.wall_clock_seconds == 30
    assert [(u.name, u.soft, u.hard) for u in spec.ulimits] == [
        ("nofile", 512, 512),
        ("fsize", 32 * MIB, 32 * MIB),
        ("core", 0, 0),
    ]
    assert [(t.target, t.option_string()) for t in spec.tmpfs] == [
        ("/tmp", f"rw,noexec,nosuid,nodev,size={8 * MIB},mode=1777,uid=10001,gid=10001"),
        ("/home/sandbox", f"rw,noexec,nosuid,nodev,size={4 * MIB},mode=1777,uid=10001,gid=10001"),
    ]
    assert [(str(m.source), m.target, m.read_only) for m in spec.mounts] == [
        ("/stage/r1/work", "/work", True),
        ("/stage/r1/work/app/api", "/work/app/api", False),
        ("/stage/r1/work/tests/test_x.py", "/work/tests/test_x.py", False),
        ("/stage/r1/out", "/out", False),
        ("/stage/r1/taskbox", "/taskbox", True),
        ("/stage/r1/gateway", "/run/taskbox", True),
    ]
    assert spec.labels == {
        "org.taskbox.managed": "1",
        "org.taskbox.run": "r1",
        "org.taskbox.task": "BE-1",
        "org.taskbox.policy-digest": "sha256:abc",
        "org.taskbox.controller": "ctl",
        "org.taskbox.phase": "agent",
    }
    assert "PYTHONPYCACHEPREFIX" not in spec.environment
    assert spec.environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not any("KEY" in k or "TOKEN" in k for k in spec.environment)


def test_create_kwargs_are_exactly_the_hardened_settings(spec: ContainerSpec) -> None:
    """The docker-py create arguments are these and only these: no ports, devices or extra caps."""
    expected = {
        "image": "taskbox-sandbox:latest",
        "command": ["python", "-m", "taskbox_runner"],
        "name": "taskbox-r1",
        "user": "10001:10001",
        "working_dir": "/work",
        "environment": dict(spec.environment),
        "labels": dict(spec.labels),
        "network_disabled": True,
        "read_only": True,
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "tmpfs": {
            "/tmp": f"rw,noexec,nosuid,nodev,size={8 * MIB},mode=1777,uid=10001,gid=10001",
            "/home/sandbox": f"rw,noexec,nosuid,nodev,size={4 * MIB},mode=1777,uid=10001,gid=10001",
        },
        "mounts": [
            Mount("/work", "/stage/r1/work", type="bind", read_only=True, propagation="rprivate"),
            Mount(
                "/work/app/api",
                "/stage/r1/work/app/api",
                type="bind",
                read_only=False,
                propagation="rprivate",
            ),
            Mount(
                "/work/tests/test_x.py",
                "/stage/r1/work/tests/test_x.py",
                type="bind",
                read_only=False,
                propagation="rprivate",
            ),
            Mount("/out", "/stage/r1/out", type="bind", read_only=False, propagation="rprivate"),
            Mount(
                "/taskbox", "/stage/r1/taskbox", type="bind", read_only=True, propagation="rprivate"
            ),
            Mount(
                "/run/taskbox",
                "/stage/r1/gateway",
                type="bind",
                read_only=True,
                propagation="rprivate",
            ),
        ],
        "mem_limit": 256 * MIB,
        "memswap_limit": 256 * MIB,
        "nano_cpus": 1_500_000_000,
        "pids_limit": 64,
        "shm_size": 16 * MIB,
        "ulimits": [
            Ulimit(name="nofile", soft=512, hard=512),
            Ulimit(name="fsize", soft=32 * MIB, hard=32 * MIB),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "init": True,
        "ipc_mode": "private",
        "restart_policy": {"Name": "no"},
        "log_config": LogConfig(
            type="json-file", config={"max-size": str(2 * MIB), "max-file": "1"}
        ),
        "stdin_open": False,
        "tty": False,
    }
    assert create_kwargs(spec) == expected
    forbidden = {
        "ports",
        "devices",
        "cap_add",
        "network_mode",
        "pid_mode",
        "volumes",
        "userns_mode",
    }
    assert forbidden.isdisjoint(create_kwargs(spec))


def test_the_runtime_class_comes_from_the_policy_and_the_gateway_port_from_the_caller(
    policy: Policy, spec: ContainerSpec
) -> None:
    """runtime_class is the policy's (None when it names none); gateway_port is only what the run passes."""
    assert spec.runtime_class is None
    assert spec.gateway_port is None
    plan = MountPlan(task_key="BE-1", base_commit="0" * 40, policy="unit", policy_digest="sha256:a")
    gvisor = build_container_spec(
        policy=policy.model_copy(update={"runtime_class": "gvisor"}),
        plan=plan,
        staging=StagingPaths.under(Path("/stage/r2")),
        image="taskbox-sandbox:latest",
        run_id="r2",
        command=["true"],
        gateway_port=40123,
    )
    assert gvisor.runtime_class == "gvisor"
    assert gvisor.gateway_port == 40123


def test_docker_refuses_a_runtime_class_and_ignores_the_gateway_port(spec: ContainerSpec) -> None:
    """Docker has no RuntimeClass: a spec naming one is refused by name, never run on the default runtime."""
    with pytest.raises(SandboxError, match="'gvisor'"):
        create_kwargs(spec.model_copy(update={"runtime_class": "gvisor"}))
    # The TCP gateway port changes nothing for Docker: the socket mount is its gateway.
    assert create_kwargs(spec.model_copy(update={"gateway_port": 40123})) == create_kwargs(spec)


@pytest.mark.docker
def test_the_docker_backend_refuses_a_runtime_class_before_the_engine_sees_it(
    spec: ContainerSpec,
) -> None:
    """DockerBackend.create of a spec naming a RuntimeClass raises, naming the class, and creates nothing."""
    backend = DockerBackend.from_settings(Settings())
    named = spec.model_copy(update={"runtime_class": "kata", "name": "taskbox-rc-refused"})
    with pytest.raises(SandboxError, match="'kata'"):
        backend.create(named)
    assert not backend.client.containers.list(all=True, filters={"name": "taskbox-rc-refused"})
