"""The executor ``taskbox serve`` runs B3's tasks with: the real TaskRunner, with the bench's labels.

Set ``TASKBOX_EXECUTOR_MODULE=bench.api_executor``. It is ``controller.runs``'
executor (a :class:`TaskRunner` on the Docker engine, the model the settings
name) but on :class:`BenchBackend`, so every container carries
the suite run's bench labels and controller id (``bench.harness``): the bench samples their
memory and its cleanup finds them, whatever happens to the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.harness import CONTROLLER_ID, BenchBackend
from controller.runs import TaskRunner, make_readiness_probes
from controller.sandbox.docker import DockerImages, docker_client

if TYPE_CHECKING:
    from controller.settings import Settings

#: ``/readyz`` checks are the controller's own (the engine answers, the image is built).
__all__ = ["make_executor", "make_readiness_probes"]


def make_executor(settings: Settings) -> TaskRunner:
    """A TaskRunner over the engine the settings name, its containers labelled as the bench's."""
    client = docker_client(settings)
    return TaskRunner(
        settings,
        BenchBackend(client),
        DockerImages(client),
        model=settings.model_upstream,
        controller_id=CONTROLLER_ID,
    )
