"""The sandbox backend interface: what the controller needs from any container engine.

Docker (``controller/sandbox/docker/``) is the first implementation; a
Kubernetes one would implement the same ``Protocol``. Errors (controller/errors.py):

    SandboxError            the engine failed, or an operation was refused
    ├── ImageNotFoundError  the spec's image does not exist on the engine
    └── SandboxTimeoutError raised by :meth:`SandboxOutcome.raise_for_timeout`;
                            ``wait`` itself reports a timeout in the outcome

The controller receives output files as checked bytes from :meth:`collect`;
it never reads a folder the sandbox could write to by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from controller.errors import SandboxTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from controller.sandbox.spec import ContainerSpec

#: Exit status of a process ended by SIGKILL (128 + 9): how an OOM kill and a deadline kill look.
EXIT_SIGKILL = 137

#: What ``wait`` keeps of the log for the outcome (the stream itself is capped by the spec).
LOG_TAIL_BYTES = 64 * 1024

#: The container settings (``ContainerSpec`` field names) every backend must enforce: the
#: security invariants of shared/design.md rest on them (uid, mounts, no network, no
#: capabilities, no-new-privileges, the limits, the deadline, the labels that find orphans).
#: Preflight refuses a backend whose ``enforces`` lacks one; the conformance suite
#: (``controller/sandbox/conformance.py``) checks each on a real sandbox.
MANDATORY_SETTINGS: frozenset[str] = frozenset(
    {
        "user",
        "environment",
        "labels",
        "mounts",
        "tmpfs",
        "read_only_root",
        "network_disabled",
        "cap_drop",
        "security_opt",
        "privileged",
        "memory_bytes",
        "memory_swap_bytes",
        "nano_cpus",
        "pids_limit",
        "ulimits",
        "log_max_bytes",
        "wall_clock_seconds",
    }
)

#: A setting a backend may declare in place of a mandatory one that its engine cannot
#: express, each narrower in one stated way (SECURITY.md, "Kubernetes"). Docker declares
#: the mandatory ones themselves; only a backend without them (Kubernetes) uses these.
NETWORK_GATEWAY_ONLY = "network_gateway_only"
"""No ingress, no DNS, egress only to the controller's gateway (agent) and file exchange
ports, by a NetworkPolicy per sandbox: a Pod cannot be without a network and still
fetch its files or reach the gateway."""
TMPFS_SIZE = "tmpfs_size"
"""Each tmpfs is memory-backed with its size; not noexec (an emptyDir has no mount options;
nosuid and nodev are moot under no-new-privileges and no CAP_MKNOD)."""
PIDS_RLIMIT = "pids_rlimit"
"""RLIMIT_NPROC at the pids limit, set on the command by the in-pod helper, in the sandbox's
own user namespace (where its uid is shared with no other sandbox)."""
MANDATORY_ALTERNATIVES: dict[str, frozenset[str]] = {
    "network_disabled": frozenset({NETWORK_GATEWAY_ONLY}),
    "tmpfs": frozenset({TMPFS_SIZE}),
    "pids_limit": frozenset({PIDS_RLIMIT}),
}


def missing_mandatory(enforces: frozenset[str]) -> frozenset[str]:
    """The mandatory settings ``enforces`` neither declares nor meets with an accepted alternative."""
    return frozenset(
        setting
        for setting in MANDATORY_SETTINGS - enforces
        if not MANDATORY_ALTERNATIVES.get(setting, frozenset()) & enforces
    )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SandboxHandle(_Model):
    """A created sandbox, as the backend knows it."""

    id: str
    """The engine's id of the container (or pod)."""
    name: str
    """The spec's name, ``taskbox-<run id>``."""
    run_id: str
    """The run this sandbox belongs to (also in its labels)."""


class SandboxOutcome(_Model):
    """How a sandbox ended; filled in by ``wait``."""

    exit_code: int | None
    """Exit status of the command (of init, which passes its child's status on); None if unknown."""
    oom_killed: bool
    """Out of memory, as far as the engine lets us know: the engine said so, or the command
    ended by SIGKILL (exit 137) before the deadline. On cgroup v1 the engine only flags an OOM
    kill of PID 1 (init), never of its child, so exit 137 is the usual sign; an outside
    ``kill -9`` looks the same, which :meth:`describe` says."""
    oom_confirmed: bool = False
    """The engine itself reported ``State.OOMKilled``."""
    timed_out: bool
    """The wall-clock deadline passed and the backend killed the sandbox."""
    duration_seconds: float = Field(ge=0)
    """From start to exit (or to the kill)."""
    log_tail: str = ""
    """The last part of stdout and stderr (at most 64 KiB), decoded with replacement."""
    log_truncated: bool = False
    """The log went past the stream cap: the callback saw only the first part."""

    def describe(self) -> str:
        """One line for a person: how the command ended."""
        if self.timed_out:
            return f"timed out after {self.duration_seconds:.1f} s: killed and removed"
        if self.oom_confirmed:
            return f"killed: out of memory (exit status {self.exit_code})"
        if self.oom_killed:
            return (
                f"killed by SIGKILL (exit status {self.exit_code}): out of memory, "
                "or killed from outside"
            )
        return f"exit status {self.exit_code} after {self.duration_seconds:.2f} s"

    def raise_for_timeout(self) -> None:
        """Raise SandboxTimeoutError when the deadline was hit; otherwise do nothing."""
        if self.timed_out:
            raise SandboxTimeoutError(
                f"the sandbox ran past its deadline and was killed after {self.duration_seconds:.1f} s"
            )


class CollectedOutput(_Model):
    """The output files after the sandbox stopped: accepted bytes, refusals, absences."""

    files: dict[str, bytes] = Field(default_factory=dict)
    """Accepted files by name: regular, not hard-linked, within their size cap."""
    refused: dict[str, str] = Field(default_factory=dict)
    """Files that exist but were refused, by name, with the reason."""
    missing: list[str] = Field(default_factory=list)
    """Names asked for that do not exist."""


class OrphanContainer(_Model):
    """A Taskbox container found on the engine (by label), with what its labels say."""

    id: str
    name: str
    status: str
    run_id: str
    task_key: str
    controller_id: str


class SandboxRun(_Model):
    """Everything one ``run`` produced; the container is gone when this exists."""

    handle: SandboxHandle
    image_id: str
    """The image the container really ran (content id), recorded with every run."""
    outcome: SandboxOutcome
    output: CollectedOutput
    inspect: dict[str, Any]
    """The container's configuration as the engine reported it right after create."""
    cancelled: bool = False
    """The run was cancelled and the container removed before it ended by itself."""


class SandboxBackend(Protocol):
    """One sandbox at a time per call; implementations must be safe to use from several threads.

    The steps only: the lifecycle that strings them together (deadline, cancel,
    collection, removal in every case) is written once, in ``lifecycle.run_sandbox``.
    """

    @property
    def enforces(self) -> frozenset[str]:
        """The ``ContainerSpec`` settings this backend really applies to every sandbox.

        A declaration, checked twice: preflight refuses a backend that lacks one of
        :data:`MANDATORY_SETTINGS`, and the conformance suite verifies every declared
        setting it has a check for on a real sandbox.
        """
        ...

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        """Create (not start) the sandbox exactly as ``spec`` says.

        Raises ImageNotFoundError if the image is missing, SandboxError if the engine refuses.
        """
        ...

    def start(self, handle: SandboxHandle) -> None:
        """Start a created sandbox; the wall clock of ``wait`` starts here. Raises SandboxError."""
        ...

    def wait(
        self,
        handle: SandboxHandle,
        *,
        timeout_seconds: float,
        on_log: Callable[[str], None] | None = None,
    ) -> SandboxOutcome:
        """Stream logs to ``on_log`` until the sandbox exits or ``timeout_seconds`` pass.

        At the deadline the sandbox is killed (not stopped) and the outcome says
        ``timed_out``; no exception is raised for that. Raises SandboxError if the
        engine fails.
        """
        ...

    def logs(self, handle: SandboxHandle) -> Iterator[str]:
        """The log so far, in chunks (the engine's own bounded copy). Raises SandboxError."""
        ...

    def collect(self, handle: SandboxHandle, caps: Mapping[str, int]) -> CollectedOutput:
        """Read the named output files (name -> size cap in bytes) after the sandbox stopped.

        Never follows a link; accepts only regular files with one link within
        their cap. Raises SandboxError if the sandbox is still running.
        """
        ...

    def inspect(self, handle: SandboxHandle) -> dict[str, Any]:
        """The engine's full description of the sandbox. Raises SandboxError."""
        ...

    def remove(self, handle: SandboxHandle) -> None:
        """Kill if needed and remove the sandbox; removing a gone sandbox is not an error."""
        ...

    def find_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Every Taskbox container on the engine (optionally of one controller). Raises SandboxError."""
        ...

    def remove_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Remove what ``find_orphans`` finds and return it. Raises SandboxError."""
        ...
