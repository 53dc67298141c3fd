"""Everything Docker-only: the one package of Taskbox that imports ``docker``.

``backend.py`` runs sandboxes (the steps of ``controller.sandbox.backend.SandboxBackend``),
``images.py`` builds and inspects images, ``client.py`` reaches the engine. The rest of
the controller opens an engine through ``controller.sandbox.engines.open_engine``.
"""

from controller.sandbox.docker.backend import LABEL_ROLE, DockerBackend, create_kwargs
from controller.sandbox.docker.client import docker_client
from controller.sandbox.docker.images import DockerImages

__all__ = ["LABEL_ROLE", "DockerBackend", "DockerImages", "create_kwargs", "docker_client"]
