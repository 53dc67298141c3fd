"""One sandbox's life, written once above every engine: create, start, wait, collect, remove.

Every container Taskbox starts (the agent's, the judge's two, ``taskbox sandbox
run``, preflight's probe) goes through :func:`run_sandbox`, so the decisions are
made in one place whatever the backend:

- the inspect right after create is the record of what the sandbox really got;
- the wall-clock deadline is the spec's, enforced by ``wait`` (a kill, never a stop);
- a cancel removes the container at once, and an engine error caused by that
  removal is a cancellation, not a failure;
- output is collected only from a sandbox that ended by itself (not on cancel
  or timeout), as checked bytes within the caps;
- the container is removed in every case, exception or not.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from controller.errors import SandboxError
from controller.sandbox.backend import CollectedOutput, SandboxHandle, SandboxOutcome, SandboxRun

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from controller.sandbox.backend import SandboxBackend
    from controller.sandbox.spec import ContainerSpec

log = logging.getLogger(__name__)

#: How often the cancel watcher looks at the cancel event (and how long stopping it may wait).
CANCEL_POLL_SECONDS = 0.05


class _CancelWatcher:
    """Removes the sandbox as soon as the run is cancelled."""

    def __init__(
        self, cancel: threading.Event, backend: SandboxBackend, handle: SandboxHandle
    ) -> None:
        self._cancel = cancel
        self._backend = backend
        self._handle = handle
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name=f"cancel-{handle.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            if self._cancel.wait(CANCEL_POLL_SECONDS):
                log.info("cancelling %s", self._handle.name)
                try:
                    self._backend.remove(self._handle)
                except SandboxError:
                    log.exception("could not remove %s on cancel", self._handle.name)
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def run_sandbox(
    backend: SandboxBackend,
    spec: ContainerSpec,
    *,
    collect: Mapping[str, int] | None = None,
    on_log: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    on_created: Callable[[dict[str, Any]], None] | None = None,
    on_started: Callable[[], None] | None = None,
) -> SandboxRun:
    """Run one sandbox from create to remove; the container never outlives this call.

    ``collect`` names the output files to read (name -> size cap) once the sandbox
    ended by itself; ``on_created`` receives the engine's inspect of the created
    container (before start), ``on_started`` is called once it runs. A failing,
    killed or timed-out command is not an error (see the outcome); raises
    ImageNotFoundError or SandboxError when the engine fails.
    """
    cancel = cancel or threading.Event()
    handle = backend.create(spec)
    try:
        inspected = backend.inspect(handle)
        if on_created is not None:
            on_created(inspected)
        watcher = _CancelWatcher(cancel, backend, handle)
        backend.start(handle)
        if on_started is not None:
            on_started()
        watcher.start()
        try:
            outcome = backend.wait(handle, timeout_seconds=spec.wall_clock_seconds, on_log=on_log)
        except SandboxError:
            if not cancel.is_set():
                raise
            outcome = SandboxOutcome(
                exit_code=None, oom_killed=False, timed_out=False, duration_seconds=0
            )
        finally:
            watcher.stop()
        output = CollectedOutput()
        if collect and not cancel.is_set() and not outcome.timed_out:
            output = backend.collect(handle, collect)
    finally:
        backend.remove(handle)
    return SandboxRun(
        handle=handle,
        image_id=str(inspected.get("Image", "")),
        outcome=outcome,
        output=output,
        inspect=inspected,
        cancelled=cancel.is_set(),
    )
