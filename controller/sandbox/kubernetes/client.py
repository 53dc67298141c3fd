"""The lightkube client for the cluster the settings name: a kubeconfig file, or the in-cluster service account.

lightkube rather than the official ``kubernetes`` package: typed resource models
(mypy --strict sees every call), one client for sync and async, and httpx
underneath, so the tests run the real client against a fake API server over real
HTTP on loopback. The official client's strength, ``exec``/``attach`` over
websockets, is not needed: files travel through the controller's exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx2
from lightkube import Client, ConfigError, KubeConfig
from lightkube.config import client_adapter
from pydantic import ValidationError

from controller.errors import SandboxError
from controller.sandbox.kubernetes.target import KubernetesTarget
from controller.sandbox.kubernetes.target import target_from_settings as explained_target

if TYPE_CHECKING:
    from lightkube.config.kubeconfig import SingleConfig

    from controller.settings import Settings

#: Every API call but a followed log gives up after this many seconds.
API_TIMEOUT_SECONDS = 10.0


def kube_config(settings: Settings) -> SingleConfig:
    """The cluster configuration: ``TASKBOX_KUBERNETES_KUBECONFIG``, else in-cluster, ``KUBECONFIG`` or ~/.kube/config."""
    try:
        config = (
            KubeConfig.from_file(settings.kubernetes_kubeconfig)
            if settings.kubernetes_kubeconfig is not None
            else KubeConfig.from_env()
        )
        single = config.get(settings.kubernetes_context)
    except (ConfigError, OSError, KeyError, ValueError) as exc:
        raise SandboxError(f"no usable Kubernetes configuration: {exc}") from exc
    if single is None:
        raise SandboxError("the Kubernetes configuration names no context to use")
    return single


def kube_client(config: SingleConfig, namespace: str) -> Client:
    """A lightkube client on ``config`` whose default namespace is ``namespace``."""
    return Client(config, namespace=namespace, timeout=httpx2.Timeout(API_TIMEOUT_SECONDS))


def raw_client(config: SingleConfig) -> httpx2.Client:
    """An httpx client with the same server, TLS and credentials, for byte streams lightkube reads as lines.

    A Pod's log is read as bytes (a line with no newline could otherwise grow
    without bound in memory); the read timeout is off, as for any followed log.
    """
    timeout = httpx2.Timeout(API_TIMEOUT_SECONDS, read=None)
    return client_adapter.Client(config, client_adapter.ConnectionParams(timeout=timeout))


def target_from_settings(settings: Settings) -> KubernetesTarget:
    """The :class:`KubernetesTarget` a running backend uses; SandboxError when the settings cannot describe one.

    ``target.target_from_settings`` (what ``policy explain`` shows), with two differences:
    the exchange URL is required, and the spec's image wins (it is already the cluster
    reference, ``KubernetesImages.image_id``, and a missing image must stay missing).
    """
    if not settings.kubernetes_exchange_url:
        raise SandboxError(
            "TASKBOX_KUBERNETES_EXCHANGE_URL is not set: the Pods need the exchange's address"
        )
    try:
        shown = explained_target(settings)
        return KubernetesTarget.model_validate(
            {
                **shown.model_dump(),
                "image": None,
                "exchange_port": settings.kubernetes_exchange_port,
            }
        )
    except ValidationError as exc:
        raise SandboxError(f"the Kubernetes settings do not describe a target: {exc}") from exc
