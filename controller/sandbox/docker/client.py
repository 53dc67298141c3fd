"""The docker SDK client for the engine the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import docker
from docker.errors import DockerException

from controller.errors import SandboxError

if TYPE_CHECKING:
    from controller.settings import Settings


def docker_client(settings: Settings) -> docker.DockerClient:
    """A client for the engine the settings name (``DOCKER_HOST`` or the local socket by default)."""
    try:
        if settings.docker_host:
            return docker.DockerClient(base_url=settings.docker_host)
        return docker.from_env()
    except DockerException as exc:
        raise SandboxError(
            f"cannot reach the Docker engine: {exc} (is dockerd running? try scripts/ensure-docker)"
        ) from exc
