"""The image operations ``controller/image.py`` needs, on the same Docker engine."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import requests
from docker.errors import DockerException, ImageNotFound, NotFound

from controller.errors import ImageBuildError, ImageNotFoundError, SandboxError
from controller.sandbox.spec import (
    LABEL_MANAGED,
    LABEL_RUN,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    import docker

    from controller.settings import Settings
from controller.sandbox.docker.backend import LABEL_ROLE
from controller.sandbox.docker.client import docker_client

log = logging.getLogger(__name__)


class DockerImages:
    """The image operations ``controller/image.py`` needs, on the same engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> DockerImages:
        """Image operations on the engine the settings name."""
        return cls(docker_client(settings))

    def _inspect_image(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self._client.api.inspect_image(ref)  # type: ignore[no-untyped-call]  # untyped in the stub
        return result

    def image_id(self, ref: str) -> str | None:
        """The content id of ``ref``, or None when the engine does not have it."""
        try:
            return str(self._inspect_image(ref)["Id"])
        except (ImageNotFound, NotFound):
            return None
        except DockerException as exc:
            raise SandboxError(f"cannot inspect image {ref}: {exc}") from exc

    def image_labels(self, ref: str) -> dict[str, str]:
        """The labels of ``ref`` (empty when it has none or does not exist)."""
        try:
            config = self._inspect_image(ref).get("Config") or {}
        except (ImageNotFound, NotFound):
            return {}
        except DockerException as exc:
            raise SandboxError(f"cannot inspect image {ref}: {exc}") from exc
        return dict(config.get("Labels") or {})

    def try_pull(self, ref: str) -> bool:
        """Pull ``ref``; False (not an error) when no registry answers."""
        try:
            self._client.images.pull(ref)
        except DockerException as exc:
            log.info("cannot pull %s: %s", ref, exc)
            return False
        return True

    def import_rootfs(self, tarball: Path, ref: str, changes: list[str]) -> str:
        """``docker import`` a root filesystem tarball as ``ref``; returns the image id."""
        repository, _, tag = ref.rpartition(":")
        try:
            self._client.api.import_image_from_file(
                str(tarball), repository=repository, tag=tag, changes=changes
            )
        except DockerException as exc:
            raise ImageBuildError(f"docker import of {tarball} failed: {exc}") from exc
        image_id = self.image_id(ref)
        if image_id is None:
            raise ImageBuildError(f"docker import of {tarball} did not produce {ref}")
        return image_id

    def build(
        self,
        context: Path,
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        network: bool = False,
        on_output: Callable[[str], None] | None = None,
    ) -> str:
        """Build ``context`` with the classic builder (no BuildKit) and tag it; returns the image id.

        Without ``network`` the build's RUN steps get no network at all.
        """
        try:
            stream = self._client.api.build(
                path=str(context),
                dockerfile=dockerfile,
                tag=tag,
                buildargs=dict(buildargs or {}),
                labels=dict(labels or {}),
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                network_mode=None if network else "none",
                use_config_proxy=False,
            )
            for event in stream:
                if "error" in event:
                    detail = event.get("errorDetail", {}).get("message") or event["error"]
                    raise ImageBuildError(f"docker build of {tag} failed: {detail.strip()}")
                text = event.get("stream")
                if text and on_output is not None:
                    on_output(text)
        except DockerException as exc:
            raise ImageBuildError(f"docker build of {tag} failed: {exc}") from exc
        image_id = self.image_id(tag)
        if image_id is None:
            raise ImageBuildError(f"docker build finished but {tag} does not exist")
        return image_id

    def run_probe(self, image: str, command: list[str], *, timeout_seconds: int = 60) -> str:
        """Run a throwaway, locked-down container of ``image`` and return its output.

        Used to ask an image about itself (its Python version); raises ImageBuildError
        when the command fails.
        """
        container = None
        try:
            container = self._client.containers.create(
                image=image,
                command=command,
                user="65534:65534",
                network_disabled=True,
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                pids_limit=64,
                mem_limit=512 * 1024 * 1024,
                labels={LABEL_MANAGED: "1", LABEL_ROLE: "probe", LABEL_RUN: "probe"},
            )
            container.start()
            status = container.wait(timeout=timeout_seconds)
            output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        except ImageNotFound as exc:
            raise ImageNotFoundError(f"image {image!r} does not exist") from exc
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise ImageBuildError(f"probing {image} failed: {exc}") from exc
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except DockerException as exc:
                    log.warning("cannot remove probe container %s: %s", container.id, exc)
        if status.get("StatusCode") != 0:
            raise ImageBuildError(f"probing {image} with {command[0]} failed: {output.strip()}")
        return output
