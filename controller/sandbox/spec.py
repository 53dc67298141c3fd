"""The hardened container settings, built by one pure function from the policy and the plan.

A security reviewer reads this file to know what every sandbox gets; a unit
test asserts the exact values, and an integration test checks them again on a
real container with ``docker inspect``. Nothing here talks to an engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskbox_wire.paths import GATEWAY_DIR, OUTDIR, RUN_CONFIG, TASKBOX_DIR, WORKDIR

if TYPE_CHECKING:
    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy

MIB = 1024 * 1024

#: Where things live inside every sandbox (shared with the runner's RunConfig defaults).

#: Labels every Taskbox container carries; cleanup finds orphans by ``managed``.
LABEL_MANAGED = "org.taskbox.managed"
LABEL_RUN = "org.taskbox.run"
LABEL_TASK = "org.taskbox.task"
LABEL_POLICY = "org.taskbox.policy-digest"
LABEL_CONTROLLER = "org.taskbox.controller"
LABEL_PHASE = "org.taskbox.phase"

#: The containers of one task: the agent's, then the judge's (static checks, then the tests).
PHASE_AGENT = "agent"
PHASE_JUDGE = "judge"

#: The sandbox's environment: no secret, nothing from the host's environment.
SANDBOX_ENV: dict[str, str] = {
    "HOME": "/home/sandbox",
    "LANG": "C.UTF-8",
    # No __pycache__ is ever written, so none lands in ownsPaths. PYTHONPYCACHEPREFIX is
    # deliberately not set: with it Python reads bytecode only from the prefix tree, so the
    # image's precompiled .pyc files would be ignored and every import recompiled (measured:
    # importing the toolchain took about twice as long).
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    # coverage writes its data file in the working folder, which is read-only.
    "COVERAGE_FILE": "/tmp/.coverage",
    "TASKBOX_RUN_CONFIG": RUN_CONFIG,
}


class BindMount(BaseModel):
    """A host folder or file made visible inside the sandbox."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Path
    target: str
    read_only: bool


class TmpfsMount(BaseModel):
    """An in-memory mount; always noexec, nosuid, nodev."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    size_bytes: int
    options: tuple[str, ...] = ("rw", "noexec", "nosuid", "nodev")
    mode: int = 0o1777
    uid: int
    gid: int
    """Owner of the mount's root. The engine copies an image folder's owner onto a tmpfs
    over it (``/home/sandbox`` would stay root's, whatever ``mode`` says), so it is set."""

    def option_string(self) -> str:
        """The engine's tmpfs option form, e.g. ``rw,noexec,nosuid,nodev,size=268435456,mode=1777,uid=10001,gid=10001``."""
        return ",".join(
            [
                *self.options,
                f"size={self.size_bytes}",
                f"mode={self.mode:o}",
                f"uid={self.uid}",
                f"gid={self.gid}",
            ]
        )


class Ulimit(BaseModel):
    """One resource limit set with setrlimit at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["nofile", "fsize", "core", "nproc"]
    soft: int
    hard: int


class ContainerSpec(BaseModel):
    """Everything a backend needs to create one sandbox, and nothing it may add to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    image: str
    command: list[str]
    user: str
    working_dir: str = WORKDIR
    environment: dict[str, str]
    labels: dict[str, str]
    mounts: list[BindMount]
    tmpfs: list[TmpfsMount]
    read_only_root: Literal[True] = True
    network_disabled: Literal[True] = True
    cap_drop: tuple[str, ...] = ("ALL",)
    security_opt: tuple[str, ...] = ("no-new-privileges:true",)
    privileged: Literal[False] = False
    memory_bytes: int = Field(gt=0)
    memory_swap_bytes: int = Field(gt=0)
    nano_cpus: int = Field(gt=0)
    pids_limit: int = Field(gt=0)
    shm_bytes: int = 16 * MIB
    ulimits: list[Ulimit]
    init: Literal[True] = True
    ipc_mode: Literal["private"] = "private"
    log_max_bytes: int = Field(gt=0)
    wall_clock_seconds: int = Field(gt=0)
    runtime_class: str | None = None
    """The policy's RuntimeClass (gVisor, Kata) for a Pod; a backend that cannot honour it refuses the spec."""
    gateway_port: int | None = Field(default=None, gt=0, lt=65536)
    """The TCP port of this run's own gateway listener (the Kubernetes path); the one port the
    agent's NetworkPolicy opens to it. None: the gateway is the mounted socket (Docker ignores it)."""


class StagingPaths(BaseModel):
    """The host folders of one run's staging area (see controller/staging.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path
    work: Path
    out: Path
    taskbox: Path
    gateway: Path | None
    """The gateway socket's folder; None for a sandbox with no model behind it (the judge)."""
    extra_read_only: dict[str, Path] = Field(default_factory=dict)
    """More folders mounted read-only, by target (the judge's ``/base`` and ``/f2p`` trees)."""

    def gateway_socket(self) -> Path:
        """Where the gateway listens for this sandbox; only staging with a gateway has one."""
        if self.gateway is None:
            raise ValueError(f"the staging at {self.root} has no gateway folder")
        return self.gateway / "gateway.sock"

    @classmethod
    def under(cls, root: Path) -> StagingPaths:
        """The standard layout below ``root``."""
        return cls(
            root=root,
            work=root / "work",
            out=root / "out",
            taskbox=root / "taskbox",
            gateway=root / "gateway",
        )


def build_container_spec(
    *,
    policy: Policy,
    plan: MountPlan,
    staging: StagingPaths,
    image: str,
    run_id: str,
    command: list[str],
    controller_id: str = "taskbox",
    phase: str = PHASE_AGENT,
    owned_writable: bool = True,
    gateway_port: int | None = None,
) -> ContainerSpec:
    """The hardened settings of one sandbox: the plan's mounts and the policy's limits, nothing else.

    ``phase`` names the container (``taskbox-<run id>`` for the agent,
    ``taskbox-<run id>-<phase>`` for the judge's) and labels it; ``owned_writable``
    False mounts the owned paths read-only too. ``gateway_port`` is the run's own gateway
    port where the gateway is a TCP endpoint (Kubernetes); the judge never gets one.
    """
    if gateway_port is not None and phase != PHASE_AGENT:
        raise ValueError(f"the {phase} sandbox has no gateway, so no gateway port")
    limits = policy.limits
    # The whole staged tree is read-only; each owned path is mounted writable on top of it.
    # Only planned files were staged, so nothing else of the repository exists inside.
    mounts = [BindMount(source=staging.work, target=WORKDIR, read_only=True)]
    if owned_writable:
        mounts += [
            BindMount(
                source=staging.work / entry.path,
                target=f"{WORKDIR}/{entry.path}",
                read_only=False,
            )
            for entry in plan.read_write
        ]
    mounts += [
        BindMount(source=source, target=target, read_only=True)
        for target, source in sorted(staging.extra_read_only.items())
    ]
    mounts += [
        BindMount(source=staging.out, target=OUTDIR, read_only=False),
        BindMount(source=staging.taskbox, target=TASKBOX_DIR, read_only=True),
    ]
    if staging.gateway is not None:
        # Read-only is enough to connect(): the gateway's per-run token is the credential.
        mounts.append(BindMount(source=staging.gateway, target=GATEWAY_DIR, read_only=True))
    memory = limits.memory_mb * MIB
    file_size = limits.file_size_mb * MIB
    return ContainerSpec(
        name=f"taskbox-{run_id}" if phase == PHASE_AGENT else f"taskbox-{run_id}-{phase}",
        image=image,
        command=command,
        user=f"{policy.uid}:{policy.gid}",
        environment=dict(SANDBOX_ENV),
        labels={
            LABEL_MANAGED: "1",
            LABEL_RUN: run_id,
            LABEL_TASK: plan.task_key,
            LABEL_POLICY: plan.policy_digest,
            LABEL_CONTROLLER: controller_id,
            LABEL_PHASE: phase,
        },
        mounts=mounts,
        tmpfs=[
            TmpfsMount(target=t.path, size_bytes=t.size_mb * MIB, uid=policy.uid, gid=policy.gid)
            for t in policy.tmpfs
        ],
        memory_bytes=memory,
        memory_swap_bytes=memory,  # equal: no swap beyond the memory limit
        nano_cpus=int(limits.cpus * 1_000_000_000),
        pids_limit=limits.pids,
        ulimits=[
            Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
            Ulimit(name="fsize", soft=file_size, hard=file_size),
            Ulimit(name="core", soft=0, hard=0),
        ],
        log_max_bytes=limits.log_max_mb * MIB,
        wall_clock_seconds=limits.wall_clock_seconds,
        runtime_class=policy.runtime_class,
        gateway_port=gateway_port,
    )
