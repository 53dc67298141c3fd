"""A fake engine driven by a handler (like httpx's ``MockTransport``): the lifecycle's decisions, tested fast.

``FakeEngine(handler)`` implements :class:`~controller.sandbox.backend.SandboxBackend`
in memory. When a created sandbox runs (in ``wait``), the handler decides what its
command does, through a :class:`FakeSandbox`: print log chunks, sleep (on a virtual
clock: sleeping past the deadline is a kill, at once), run until removed (a cancel),
write files into the spec's real ``/out`` folder (links, FIFOs and oversized files
included), and end with an exit status or an :class:`Exit` (an OOM kill). Every
step the engine is asked to do is recorded in :attr:`FakeEngine.calls`.

The fake runs no process and enforces no kernel setting: :attr:`FakeEngine.enforces`
says so, and preflight refuses it. It is for tests of the logic above the engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import BaseModel, ConfigDict

from controller.errors import ImageNotFoundError, SandboxError
from controller.sandbox.backend import (
    EXIT_SIGKILL,
    LOG_TAIL_BYTES,
    CollectedOutput,
    OrphanContainer,
    SandboxHandle,
    SandboxOutcome,
)
from controller.sandbox.output import read_output_files
from controller.sandbox.spec import (
    LABEL_CONTROLLER,
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_TASK,
)
from taskbox_wire.paths import OUTDIR

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping
    from pathlib import Path

    from controller.sandbox.spec import ContainerSpec

log = logging.getLogger(__name__)

#: The steps of the engine Protocol, as recorded in :attr:`FakeEngine.calls` and named in ``failures``.
STEPS = (
    "create",
    "start",
    "wait",
    "logs",
    "collect",
    "inspect",
    "remove",
    "find_orphans",
    "remove_orphans",
)


class Exit(BaseModel):
    """How a fake sandbox's command ended, when a bare exit status is not enough."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exit_code: int = 0
    oom: bool = False
    """The engine confirms an OOM kill (``State.OOMKilled``); exit 137 alone is only a sign of one."""


class _Killed(BaseException):  # BaseException: a handler's `except Exception` cannot swallow it
    """The deadline passed while the handler slept: the fake kills the sandbox."""


class _Removed(BaseException):
    """The sandbox was removed (a cancel) while the handler was running."""


@dataclass
class _Container:
    spec: ContainerSpec
    handle: SandboxHandle
    state: str = "created"
    exit_code: int | None = None
    oom: bool = False
    log: list[str] = field(default_factory=list)
    removed: threading.Event = field(default_factory=threading.Event)


class FakeSandbox:
    """What a handler sees of the sandbox it plays: the spec, its out folder, a log and a clock."""

    def __init__(
        self,
        container: _Container,
        timeout_seconds: float,
        on_log: Callable[[str], None] | None,
    ) -> None:
        self._container = container
        self._timeout = timeout_seconds
        self._on_log = on_log
        self._forwarded = 0
        self._tail = ""
        self.elapsed = 0.0
        """Seconds on the fake's virtual clock since start."""
        self.log_truncated = False

    @property
    def spec(self) -> ContainerSpec:
        """The spec the sandbox was created from."""
        return self._container.spec

    @property
    def handle(self) -> SandboxHandle:
        """The handle the engine gave out."""
        return self._container.handle

    @property
    def out_dir(self) -> Path:
        """The host folder mounted at ``/out``; what the handler puts here is what ``collect`` reads."""
        source = next((m.source for m in self.spec.mounts if m.target == OUTDIR), None)
        if source is None:
            raise SandboxError(f"{self.spec.name} has no {OUTDIR} mount")
        return source

    def print(self, text: str) -> None:
        """Write ``text`` to the sandbox's output: streamed up to the spec's log cap, tail kept."""
        self._container.log.append(text)
        self._tail = (self._tail + text)[-LOG_TAIL_BYTES:]
        data = text.encode()
        room = self.spec.log_max_bytes - self._forwarded
        if len(data) > room:
            data = data[: max(room, 0)]
            self.log_truncated = True
        if not data:
            return
        self._forwarded += len(data)
        if self._on_log is not None:
            self._on_log(data.decode("utf-8", "replace"))

    def sleep(self, seconds: float) -> None:
        """Pass ``seconds`` on the virtual clock; past the deadline the sandbox is killed there."""
        if self._container.removed.is_set():
            raise _Removed
        self.elapsed += seconds
        if self.elapsed >= self._timeout:
            self.elapsed = self._timeout
            raise _Killed

    def run_until_removed(self) -> None:
        """Block (in real time) until the sandbox is removed, or the deadline kills it."""
        if self._container.removed.wait(self._timeout - self.elapsed):
            raise _Removed
        self.elapsed = self._timeout
        raise _Killed

    def write(self, name: str, data: bytes) -> Path:
        """Write a regular file into the out folder, as the command would; returns its host path."""
        path = self.out_dir / name
        path.write_bytes(data)
        return path

    def symlink(self, name: str, target: str) -> Path:
        """Plant a symbolic link in the out folder (pointing anywhere, as a hostile command would)."""
        path = self.out_dir / name
        path.symlink_to(target)
        return path

    def fifo(self, name: str) -> Path:
        """Plant a FIFO in the out folder (a reader that followed it would block)."""
        path = self.out_dir / name
        os.mkfifo(path)
        return path

    @property
    def tail(self) -> str:
        """The last part of what was printed."""
        return self._tail


#: Decides what a created sandbox does when it runs; returns its exit status (or an :class:`Exit`).
Handler: TypeAlias = "Callable[[FakeSandbox], int | Exit]"


def exits_with(code: int = 0, *, output: str = "") -> Callable[[FakeSandbox], int]:
    """A handler whose command prints ``output`` and exits with ``code`` at once."""

    def handler(sandbox: FakeSandbox) -> int:
        if output:
            sandbox.print(output)
        return code

    return handler


class FakeEngine:
    """An in-memory engine: the handler plays each sandbox's command (see the module docstring).

    ``images`` limits which images exist (all do when None); ``failures`` makes a step
    raise, by step name (``"start"`` -> ``SandboxError(...)``), after it is recorded.
    """

    #: What the fake really honours: the deadline (on its virtual clock), the log cap and the
    #: labels that find orphans. No kernel setting: preflight refuses the fake on purpose.
    enforces: frozenset[str] = frozenset({"labels", "log_max_bytes", "wall_clock_seconds"})

    def __init__(
        self,
        handler: Handler,
        *,
        images: Collection[str] | None = None,
        failures: Mapping[str, Exception] | None = None,
    ) -> None:
        unknown = set(failures or {}) - set(STEPS)
        if unknown:
            raise ValueError(f"no such step: {sorted(unknown)}")
        self._handler = handler
        self._images = None if images is None else frozenset(images)
        self._failures = dict(failures or {})
        self._containers: dict[str, _Container] = {}
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        """Every step asked of the engine, in order: (step, container name or controller id)."""
        self.specs: list[ContainerSpec] = []
        """Every spec a sandbox was created from."""

    # --- bookkeeping ------------------------------------------------------------------

    def _record(self, step: str, subject: str) -> None:
        with self._lock:
            self.calls.append((step, subject))
        failure = self._failures.get(step)
        if failure is not None:
            raise failure

    def steps(self) -> list[str]:
        """The recorded step names, in order."""
        with self._lock:
            return [step for step, _ in self.calls]

    def _get(self, handle: SandboxHandle) -> _Container:
        with self._lock:
            container = self._containers.get(handle.id)
        if container is None:
            raise SandboxError(f"no such sandbox: {handle.name}")
        return container

    @property
    def live(self) -> list[SandboxHandle]:
        """The sandboxes that exist now (created and not removed)."""
        with self._lock:
            return [c.handle for c in self._containers.values()]

    # --- the Protocol -----------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        """Create (not run) a sandbox of ``spec``; ImageNotFoundError if ``images`` lacks its image."""
        self._record("create", spec.name)
        if self._images is not None and spec.image not in self._images:
            raise ImageNotFoundError(f"image {spec.image!r} is not on the fake engine")
        handle = SandboxHandle(
            id=secrets.token_hex(32), name=spec.name, run_id=spec.labels.get(LABEL_RUN, "")
        )
        with self._lock:
            if any(c.spec.name == spec.name for c in self._containers.values()):
                raise SandboxError(f"a sandbox named {spec.name} already exists")
            self._containers[handle.id] = _Container(spec=spec, handle=handle)
            self.specs.append(spec)
        return handle

    def start(self, handle: SandboxHandle) -> None:
        """Mark the sandbox running; its command runs in ``wait``."""
        self._record("start", handle.name)
        container = self._get(handle)
        if container.state != "created":
            raise SandboxError(f"{handle.name} is {container.state}, not created")
        container.state = "running"

    def wait(
        self,
        handle: SandboxHandle,
        *,
        timeout_seconds: float,
        on_log: Callable[[str], None] | None = None,
    ) -> SandboxOutcome:
        """Play the command with the handler; a kill at the deadline, SandboxError if removed meanwhile."""
        self._record("wait", handle.name)
        container = self._get(handle)
        if container.state != "running":
            raise SandboxError(f"{handle.name} is {container.state}, not running")
        sandbox = FakeSandbox(container, timeout_seconds, on_log)
        timed_out = False
        try:
            ended = self._handler(sandbox)
        except _Killed:
            timed_out = True
            ended = Exit(exit_code=EXIT_SIGKILL)
        except _Removed:
            raise SandboxError(f"{handle.name} was removed while running") from None
        result = ended if isinstance(ended, Exit) else Exit(exit_code=ended)
        container.state = "exited"
        container.exit_code = result.exit_code
        container.oom = result.oom
        return SandboxOutcome(
            exit_code=result.exit_code,
            oom_killed=result.oom or (result.exit_code == EXIT_SIGKILL and not timed_out),
            oom_confirmed=result.oom,
            timed_out=timed_out,
            duration_seconds=round(sandbox.elapsed, 3),
            log_tail=sandbox.tail,
            log_truncated=sandbox.log_truncated,
        )

    def logs(self, handle: SandboxHandle) -> Iterator[str]:
        """Everything the command printed so far."""
        self._record("logs", handle.name)
        yield from list(self._get(handle).log)

    def collect(self, handle: SandboxHandle, caps: Mapping[str, int]) -> CollectedOutput:
        """Read the out folder as the Docker backend does: no link followed, caps held."""
        self._record("collect", handle.name)
        container = self._get(handle)
        if container.state == "running":
            raise SandboxError(f"{handle.name} is still running")
        out = next((m.source for m in container.spec.mounts if m.target == OUTDIR), None)
        if out is None:
            raise SandboxError(f"{handle.name} has no {OUTDIR} mount to collect from")
        return read_output_files(out, caps)

    def inspect(self, handle: SandboxHandle) -> dict[str, Any]:
        """A docker-inspect-like description: the image's fake content id, labels, state and spec."""
        self._record("inspect", handle.name)
        container = self._get(handle)
        spec = container.spec
        return {
            "Id": handle.id,
            "Name": f"/{spec.name}",
            "Image": "sha256:" + hashlib.sha256(spec.image.encode()).hexdigest(),
            "Config": {"Image": spec.image, "Labels": dict(spec.labels), "User": spec.user},
            "State": {
                "Status": container.state,
                "Running": container.state == "running",
                "ExitCode": container.exit_code,
                "OOMKilled": container.oom,
            },
            "Spec": spec.model_dump(mode="json"),
        }

    def remove(self, handle: SandboxHandle) -> None:
        """Remove the sandbox (a running handler sees it at its next sleep); gone is fine."""
        self._record("remove", handle.name)
        with self._lock:
            container = self._containers.pop(handle.id, None)
        if container is not None:
            container.removed.set()

    def _orphans(self, controller_id: str | None) -> list[_Container]:
        with self._lock:
            containers = list(self._containers.values())
        return [
            c
            for c in containers
            if c.spec.labels.get(LABEL_MANAGED) == "1"
            and (controller_id is None or c.spec.labels.get(LABEL_CONTROLLER) == controller_id)
        ]

    def find_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Every sandbox labelled as Taskbox's (of one controller if given)."""
        self._record("find_orphans", controller_id or "")
        return [
            OrphanContainer(
                id=c.handle.id,
                name=c.spec.name,
                status=c.state,
                run_id=c.spec.labels.get(LABEL_RUN, ""),
                task_key=c.spec.labels.get(LABEL_TASK, ""),
                controller_id=c.spec.labels.get(LABEL_CONTROLLER, ""),
            )
            for c in self._orphans(controller_id)
        ]

    def remove_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Remove what ``find_orphans`` finds and return it."""
        found = self.find_orphans(controller_id)
        self._record("remove_orphans", controller_id or "")
        for orphan in found:
            with self._lock:
                container = self._containers.pop(orphan.id, None)
            if container is not None:
                container.removed.set()
            log.info("removed orphan sandbox %s (run %s)", orphan.name, orphan.run_id)
        return found
