"""B5's executor for ``taskbox serve`` while ``controller.runs`` has no ``make_executor`` yet.

It is the real one: a :class:`TaskRunner` on the Docker engine. B5 only reads
(``/healthz``, ``/v1/tasks``), so no task runs during the measurement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.runs import TaskRunner
from controller.sandbox.docker import DockerBackend, DockerImages

if TYPE_CHECKING:
    from controller.settings import Settings


def make_executor(settings: Settings) -> TaskRunner:
    """A TaskRunner over the engine the settings name."""
    backend = DockerBackend.from_settings(settings)
    return TaskRunner(settings, backend, DockerImages(backend.client), controller_id="bench")
