"""The Docker sandbox steps (docker SDK): create exactly as the spec says, start, wait with a kill at
the deadline, stream capped logs, collect output without following links, remove, find by label.

``create_kwargs`` is pure (a unit test asserts its arguments exactly).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig, Mount
from docker.types import Ulimit as DockerUlimit

from controller.errors import ImageNotFoundError, SandboxError
from controller.sandbox.backend import (
    EXIT_SIGKILL,
    MANDATORY_SETTINGS,
    CollectedOutput,
    OrphanContainer,
    SandboxHandle,
    SandboxOutcome,
)
from controller.sandbox.output import CappedLog, read_output_files
from controller.sandbox.spec import (
    LABEL_CONTROLLER,
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_TASK,
)
from taskbox_wire.paths import OUTDIR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

    import docker

    from controller.sandbox.spec import ContainerSpec
    from controller.settings import Settings


from controller.sandbox.docker.client import docker_client

log = logging.getLogger(__name__)

#: Grace for the engine to report a killed container as stopped.
KILL_WAIT_SECONDS = 10
#: How long the log reader may lag behind the container's exit.
LOG_JOIN_SECONDS = 5
#: Output forwarded to the log callback when the spec gives no cap.
DEFAULT_LOG_CAP_BYTES = 10 * 1024 * 1024
#: Label of throwaway containers that only ask an image a question (its Python version).
LABEL_ROLE = "org.taskbox.role"


def create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """The exact ``docker.containers.create`` arguments for ``spec``; nothing is added or widened.

    ``network_disabled`` rather than ``network_mode="none"``: inside, both leave only
    ``lo``, but the engine then skips building a network sandbox (faster start).
    No ports, devices, extra capabilities or host namespaces are ever passed.

    Raises SandboxError for a spec that names a RuntimeClass: Docker has none, and
    running the engine's default runtime instead would quietly give the sandbox less
    isolation than its policy asks for. (``gateway_port`` is ignored: a Docker sandbox
    reaches its gateway through the mounted socket.)
    """
    if spec.runtime_class is not None:
        raise SandboxError(
            f"{spec.name}: the policy asks for the RuntimeClass {spec.runtime_class!r}, which "
            "only the Kubernetes backend provides; Docker runs the engine's default runtime "
            "(set it in daemon.json, see SECURITY.md) and has no per-sandbox RuntimeClass"
        )
    return {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "user": spec.user,
        "working_dir": spec.working_dir,
        "environment": dict(spec.environment),
        "labels": dict(spec.labels),
        "network_disabled": spec.network_disabled,
        "read_only": spec.read_only_root,
        "privileged": spec.privileged,
        "cap_drop": list(spec.cap_drop),
        "security_opt": list(spec.security_opt),
        "tmpfs": {t.target: t.option_string() for t in spec.tmpfs},
        "mounts": [
            Mount(
                target=m.target,
                source=str(m.source),
                type="bind",
                read_only=m.read_only,
                propagation="rprivate",
            )
            for m in spec.mounts
        ],
        "mem_limit": spec.memory_bytes,
        "memswap_limit": spec.memory_swap_bytes,
        "nano_cpus": spec.nano_cpus,
        "pids_limit": spec.pids_limit,
        "shm_size": spec.shm_bytes,
        "ulimits": [DockerUlimit(name=u.name, soft=u.soft, hard=u.hard) for u in spec.ulimits],
        "init": spec.init,
        "ipc_mode": spec.ipc_mode,
        "restart_policy": {"Name": "no"},
        "log_config": LogConfig(
            type="json-file", config={"max-size": str(spec.log_max_bytes), "max-file": "1"}
        ),
        "stdin_open": False,
        "tty": False,
    }


class _LogPump(CappedLog):
    """Reads a container's output in a thread into a :class:`CappedLog`."""

    def __init__(self, chunks: Iterator[bytes], cap: int) -> None:
        super().__init__(cap)
        self._chunks = chunks
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="taskbox-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                self.feed(chunk)
        except Exception as exc:  # noqa: BLE001 - a log reader must never take the run down
            self.error = exc
        finally:
            # The attach stream owns a hijacked engine socket. docker-py's CancellableStream.close()
            # shuts the socket but leaves the HTTP response (and so the socket object) to the
            # garbage collector; closing the response releases it now.
            response = getattr(self._chunks, "_response", None)
            if response is not None:
                response.close()


class DockerBackend:
    """Runs sandboxes on one Docker engine; see :class:`SandboxBackend` for the contract."""

    #: Every setting of a ContainerSpec: ``create_kwargs`` hands each to the engine, the wall
    #: clock and the log cap are enforced in ``wait``; the conformance suite checks them.
    #: Every mandatory setting, and the working folder, /dev/shm size, init and IPC mode too.
    enforces: frozenset[str] = MANDATORY_SETTINGS | {"working_dir", "shm_bytes", "init", "ipc_mode"}

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._out_dirs: dict[str, Path] = {}
        self._started: dict[str, float] = {}
        self._log_caps: dict[str, int] = {}
        self._pumps: dict[str, _LogPump] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> DockerBackend:
        """A backend on the engine the settings name."""
        return cls(docker_client(settings))

    @property
    def client(self) -> docker.DockerClient:
        """The engine client (for image operations that share it)."""
        return self._client

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        """Create the container exactly as ``create_kwargs(spec)`` says."""
        try:
            container = self._client.containers.create(**create_kwargs(spec))
        except ImageNotFound as exc:
            raise ImageNotFoundError(
                f"image {spec.image!r} is not on the engine: run `taskbox image build`"
            ) from exc
        except DockerException as exc:
            raise SandboxError(f"the engine refused to create {spec.name}: {exc}") from exc
        out = next((m.source for m in spec.mounts if m.target == OUTDIR), None)
        with self._lock:
            self._log_caps[str(container.id)] = spec.log_max_bytes
            if out is not None:
                self._out_dirs[str(container.id)] = out
        return SandboxHandle(id=str(container.id), name=spec.name, run_id=spec.labels[LABEL_RUN])

    def start(self, handle: SandboxHandle) -> None:
        """Start the container and the wall clock."""
        api = self._client.api
        with self._lock:
            cap = self._log_caps.get(handle.id, DEFAULT_LOG_CAP_BYTES)
        try:
            # Attached before start: the output is read as it is written, not from the
            # json-file log, whose max-size rotation may drop what a follower reads late.
            stream = api.attach(handle.id, stdout=True, stderr=True, stream=True, logs=True)
            pump = _LogPump(stream, cap)
            pump.start()
            started = time.monotonic()
            api.start(handle.id)
        except DockerException as exc:
            raise SandboxError(f"the engine could not start {handle.name}: {exc}") from exc
        with self._lock:
            self._started[handle.id] = started
            self._pumps[handle.id] = pump

    def wait(
        self,
        handle: SandboxHandle,
        *,
        timeout_seconds: float,
        on_log: Callable[[str], None] | None = None,
    ) -> SandboxOutcome:
        """Stream output until exit or the deadline; kill at the deadline (never a graceful stop)."""
        with self._lock:
            started = self._started.get(handle.id, time.monotonic())
            pump = self._pumps.pop(handle.id, None)
            cap = self._log_caps.get(handle.id, DEFAULT_LOG_CAP_BYTES)
        if pump is None:  # started elsewhere: follow the engine's log instead
            try:
                stream = self._client.api.logs(
                    handle.id, stream=True, follow=True, stdout=True, stderr=True
                )
            except DockerException as exc:
                raise SandboxError(f"cannot read the log of {handle.name}: {exc}") from exc
            pump = _LogPump(stream, cap)
            pump.start()
        pump.set_callback(on_log)
        timed_out = False
        remaining = max(0.0, started + timeout_seconds - time.monotonic())
        try:
            status: Mapping[str, Any] | None = self._wait_for_exit(handle, max(remaining, 0.001))
        except requests.exceptions.RequestException as exc:
            if time.monotonic() < started + timeout_seconds - 1:
                # Not the deadline: the engine connection failed. Kill rather than leave it running.
                self._kill(handle)
                raise SandboxError(
                    f"lost the engine while waiting for {handle.name}: {exc}"
                ) from exc
            # The read timed out: the deadline passed. SIGKILL, not stop: a PID 1 that
            # ignores SIGTERM (or is ptrace-stopped) must not buy itself a grace period.
            timed_out = True
            self._kill(handle)
            status = self._wait_after_kill(handle)
        except DockerException as exc:
            raise SandboxError(f"waiting for {handle.name} failed: {exc}") from exc
        duration = time.monotonic() - started
        pump.join(LOG_JOIN_SECONDS)
        if pump.error is not None:
            log.warning("log stream of %s ended early: %s", handle.name, pump.error)
        exit_code = status.get("StatusCode") if status else None
        oom_confirmed = self._engine_says_oom(handle)
        return SandboxOutcome(
            exit_code=exit_code,
            oom_killed=oom_confirmed or (exit_code == EXIT_SIGKILL and not timed_out),
            oom_confirmed=oom_confirmed,
            timed_out=timed_out,
            duration_seconds=round(duration, 3),
            log_tail=pump.tail(),
            log_truncated=pump.truncated,
        )

    def _kill(self, handle: SandboxHandle) -> None:
        try:
            self._client.api.kill(handle.id)
        except NotFound:
            return
        except APIError as exc:
            # 409: it exited on its own between the timeout and the kill.
            log.debug("kill of %s: %s", handle.name, exc)

    def _wait_for_exit(self, handle: SandboxHandle, timeout: float) -> Mapping[str, Any]:
        """The engine's wait; raises a requests error when ``timeout`` seconds pass first."""
        # requests takes a float timeout (sub-second deadlines matter); the stub says int.
        result: Mapping[str, Any] = self._client.api.wait(handle.id, timeout=timeout)  # type: ignore[arg-type]
        return result

    def _wait_after_kill(self, handle: SandboxHandle) -> Mapping[str, Any] | None:
        try:
            result = self._wait_for_exit(handle, KILL_WAIT_SECONDS)
        except (requests.exceptions.RequestException, DockerException) as exc:
            log.warning("%s did not report its end after the kill: %s", handle.name, exc)
            return None
        return result

    def _engine_says_oom(self, handle: SandboxHandle) -> bool:
        try:
            state = self._client.api.inspect_container(handle.id)["State"]
        except DockerException:
            return False
        return bool(state.get("OOMKilled"))

    def logs(self, handle: SandboxHandle) -> Iterator[str]:
        """The engine's stored log so far (bounded by the json-file max-size)."""
        try:
            data = self._client.api.logs(handle.id, stdout=True, stderr=True, stream=False)
        except DockerException as exc:
            raise SandboxError(f"cannot read the log of {handle.name}: {exc}") from exc
        yield data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    def collect(self, handle: SandboxHandle, caps: Mapping[str, int]) -> CollectedOutput:
        """Read the output files from the run's out folder once the container has stopped."""
        if self.inspect(handle)["State"].get("Running"):
            raise SandboxError(
                f"{handle.name} is still running; output is collected after it stops"
            )
        with self._lock:
            out_dir = self._out_dirs.get(handle.id)
        if out_dir is None:
            raise SandboxError(f"{handle.name} has no {OUTDIR} mount to collect from")
        return read_output_files(out_dir, caps)

    def inspect(self, handle: SandboxHandle) -> dict[str, Any]:
        """``docker inspect`` of the container."""
        try:
            result: dict[str, Any] = self._client.api.inspect_container(handle.id)
        except DockerException as exc:
            raise SandboxError(f"cannot inspect {handle.name}: {exc}") from exc
        return result

    def remove(self, handle: SandboxHandle) -> None:
        """Force-remove (kills first if running); a container already gone is fine."""
        with self._lock:
            self._out_dirs.pop(handle.id, None)
            self._started.pop(handle.id, None)
            self._log_caps.pop(handle.id, None)
            self._pumps.pop(handle.id, None)
        try:
            self._client.api.remove_container(handle.id, force=True, v=True)
        except NotFound:
            return
        except DockerException as exc:
            raise SandboxError(f"cannot remove {handle.name}: {exc}") from exc

    def find_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Every container labelled ``org.taskbox.managed=1`` (of one controller if given)."""
        labels = [f"{LABEL_MANAGED}=1"]
        if controller_id is not None:
            labels.append(f"{LABEL_CONTROLLER}={controller_id}")
        try:
            found = self._client.api.containers(all=True, filters={"label": labels})
        except DockerException as exc:
            raise SandboxError(f"cannot list containers: {exc}") from exc
        orphans = []
        for item in found:
            item_labels = item.get("Labels") or {}
            names = item.get("Names") or [""]
            orphans.append(
                OrphanContainer(
                    id=item["Id"],
                    name=names[0].lstrip("/"),
                    status=item.get("Status", ""),
                    run_id=item_labels.get(LABEL_RUN, ""),
                    task_key=item_labels.get(LABEL_TASK, ""),
                    controller_id=item_labels.get(LABEL_CONTROLLER, ""),
                )
            )
        return orphans

    def remove_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Force-remove every orphan found; returns what was removed."""
        removed = []
        for orphan in self.find_orphans(controller_id):
            try:
                self._client.api.remove_container(orphan.id, force=True, v=True)
            except NotFound:
                continue
            except DockerException as exc:
                raise SandboxError(f"cannot remove {orphan.name}: {exc}") from exc
            log.info("removed orphan sandbox %s (run %s)", orphan.name, orphan.run_id)
            removed.append(orphan)
        return removed
