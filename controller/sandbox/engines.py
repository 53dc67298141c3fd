"""The one place that picks a sandbox engine: ``open_engine(settings)``, keyed on ``TASKBOX_SANDBOX_BACKEND``.

Nothing outside ``controller/sandbox/`` names a concrete backend; callers get an
:class:`Engine` (the sandbox steps, the image operations and a liveness check)
and the one lifecycle (``lifecycle.run_sandbox``) does the rest. A new backend
adds its package beside ``docker/`` and one branch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from controller.errors import SandboxError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from controller.hostcheck import Check
    from controller.image import ImageEngine
    from controller.sandbox.backend import SandboxBackend
    from controller.settings import Settings


@dataclass(frozen=True)
class TcpGateway:
    """A run's gateway as a TCP endpoint: where it binds, and the host its sandbox dials."""

    bind_host: str
    """The address each run's listener binds (port 0: a free one per run)."""
    sandbox_host: str
    """The controller's address as the sandbox reaches it (an IP: the sandbox has no DNS)."""

    def url(self, port: int) -> str:
        """``http://HOST:PORT``, what ``RunConfig.gateway_url`` says to the runner."""
        host = f"[{self.sandbox_host}]" if ":" in self.sandbox_host else self.sandbox_host
        return f"http://{host}:{port}"


@dataclass(frozen=True)
class SandboxWiring:
    """How the task runner connects a sandbox of this engine: its gateway and its files' owner."""

    gateway: TcpGateway | None = None
    """None: the gateway is a Unix socket in a bind-mounted folder (Docker). Else each
    agent run binds its own TCP listener and the sandbox dials it (a Pod has no host mount)."""
    hand_over: bool = True
    """Staging gives the owned paths, ``/out`` and the run's secrets to the sandbox uid
    (``chown``: the controller must be root). False where the sandbox's own side unpacks the
    files as that uid (a Pod's init container), so a non-root controller can stage."""


#: Docker's wiring: the socket is bind-mounted, the staged folders are the sandbox's own.
DOCKER_WIRING = SandboxWiring()


def sandbox_wiring(settings: Settings) -> SandboxWiring:
    """The wiring of the engine ``settings.sandbox_backend`` names; pure (reads no cluster)."""
    if settings.sandbox_backend == "docker":
        return DOCKER_WIRING
    if settings.sandbox_backend == "kubernetes":
        from controller.sandbox.kubernetes.target import target_from_settings  # noqa: PLC0415

        target = target_from_settings(settings)
        host = urlsplit(target.exchange_url).hostname or ""
        return SandboxWiring(
            gateway=TcpGateway(bind_host=settings.kubernetes_exchange_host, sandbox_host=host),
            hand_over=False,
        )
    raise SandboxError(f"unknown sandbox backend {settings.sandbox_backend!r}")


@dataclass(frozen=True)
class Engine:
    """One engine as the controller uses it."""

    name: str
    """The backend's name, as ``TASKBOX_SANDBOX_BACKEND`` says it."""
    backend: SandboxBackend
    """The sandbox steps (create, start, wait, collect, remove, list by label)."""
    images: ImageEngine
    """Image lookups and builds on the same engine."""
    ping: Callable[[], None]
    """Raises SandboxError when the engine does not answer (the API's readiness probe)."""
    facts: Callable[[], tuple[Mapping[str, Any], Mapping[str, Any]]]
    """The engine's own description (Docker's ``info`` and ``version``) for preflight's
    host checks; raises SandboxError when the engine does not answer."""
    close: Callable[[], None]
    """Release the engine connection."""
    wiring: SandboxWiring = DOCKER_WIRING
    """How the task runner connects this engine's sandboxes (``sandbox_wiring``)."""


def open_engine(settings: Settings) -> Engine:
    """The engine ``settings.sandbox_backend`` names; raises SandboxError when it cannot be reached."""
    if settings.sandbox_backend == "docker":
        # Imported here: only a controller that runs sandboxes needs the docker SDK.
        from controller.sandbox.docker import (  # noqa: PLC0415
            DockerBackend,
            DockerImages,
            docker_client,
        )

        client = docker_client(settings)

        def ping() -> None:
            try:
                client.ping()
            except Exception as exc:
                raise SandboxError(f"the Docker engine does not answer: {exc}") from exc

        def facts() -> tuple[Mapping[str, Any], Mapping[str, Any]]:
            try:
                return client.info(), client.version()
            except Exception as exc:
                raise SandboxError(f"the Docker engine does not answer: {exc}") from exc

        return Engine(
            name="docker",
            backend=DockerBackend(client),
            images=DockerImages(client),
            ping=ping,
            facts=facts,
            close=client.close,
        )
    if settings.sandbox_backend == "kubernetes":
        return _open_kubernetes(settings)
    raise SandboxError(f"unknown sandbox backend {settings.sandbox_backend!r}")


def _open_kubernetes(settings: Settings) -> Engine:
    """The cluster the ``TASKBOX_KUBERNETES_*`` settings name; the exchange is served from the first Pod on."""
    # Imported here: only a controller that runs Pods needs lightkube.
    from controller.policy.loader import list_policies  # noqa: PLC0415
    from controller.sandbox.kubernetes import preflight  # noqa: PLC0415
    from controller.sandbox.kubernetes.backend import (  # noqa: PLC0415
        KubernetesBackend,
        KubernetesImages,
    )
    from controller.sandbox.kubernetes.client import (  # noqa: PLC0415
        kube_client,
        kube_config,
        raw_client,
        target_from_settings,
    )
    from controller.sandbox.kubernetes.exchange import Exchange, ExchangeServer  # noqa: PLC0415

    target = target_from_settings(settings)
    config = kube_config(settings)
    client = kube_client(config, target.namespace)
    http = raw_client(config)
    exchange = Exchange()
    server = ExchangeServer(
        exchange, settings.kubernetes_exchange_host, settings.kubernetes_exchange_port
    )
    backend = KubernetesBackend(
        client,
        target,
        exchange,
        log_http=http,
        exchange_server=server,
        runtime_class=settings.kubernetes_runtime_class,
        out_cap=settings.kubernetes_exchange_max_out_bytes,
    )

    def facts() -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        named = {
            policy.name: policy.runtime_class
            for policy in list_policies(settings.policies_dir)
            if policy.runtime_class is not None
        }
        found = preflight.cluster_facts(
            client, http, target.namespace, settings.kubernetes_runtime_class, named
        )
        return found, {}

    def close() -> None:
        server.stop()
        exchange.close()
        client.close()
        http.close()

    return Engine(
        name="kubernetes",
        backend=backend,
        images=KubernetesImages(settings.image, settings.kubernetes_image or settings.image),
        ping=lambda: preflight.ping(http),
        facts=facts,
        close=close,
        wiring=sandbox_wiring(settings),
    )


@dataclass(frozen=True)
class EngineHostChecks:
    """What an engine's own description says about this host, for preflight."""

    checks: list[Check]
    socket_path: Path | None
    """The engine's Unix socket on this host (no sandbox mount may reach it), if known."""


def engine_host_checks(
    settings: Settings, info: Mapping[str, Any], version: Mapping[str, Any] | None
) -> EngineHostChecks:
    """The backend's own host checks from its description (``Engine.facts``); pure but for files it reads."""
    if settings.sandbox_backend == "docker":
        from controller.sandbox.docker import preflight  # noqa: PLC0415 - only for this backend

        socket_path = preflight.engine_socket_path(settings.docker_host)
        checks = preflight.engine_checks(
            info,
            version,
            runc_changelog=preflight.read_changelog(engine_is_local=socket_path is not None),
            docker_host=settings.docker_host,
        )
        return EngineHostChecks(checks=checks, socket_path=socket_path)
    if settings.sandbox_backend == "kubernetes":
        from controller.sandbox.kubernetes import preflight as kube  # noqa: PLC0415

        # No engine socket on this host: a Pod has no host mount at all.
        return EngineHostChecks(checks=kube.cluster_checks(info), socket_path=None)
    raise SandboxError(f"unknown sandbox backend {settings.sandbox_backend!r}")


def engine_runtime_build(
    settings: Settings, info: Mapping[str, Any], version: Mapping[str, Any] | None
) -> str | None:
    """The container runtime's build the engine reports (runc's, for Docker), for the report."""
    if settings.sandbox_backend == "docker":
        from controller.sandbox.docker import preflight  # noqa: PLC0415 - only for this backend

        return preflight.runc_build(info, version)
    return None
