"""The whole conformance suite against a real cluster (``-m kubernetes``); skipped unless KUBECONFIG names one.

It cannot run on the machines Taskbox is built on (no cluster can be installed
there). On kind or k3s (see README): load or push the sandbox image, label the
namespace ``pod-security.kubernetes.io/enforce=restricted``, make the exchange
reachable from the Pods, then::

    KUBECONFIG=~/.kube/config TASKBOX_SANDBOX_BACKEND=kubernetes \
    TASKBOX_KUBERNETES_EXCHANGE_HOST=0.0.0.0 TASKBOX_KUBERNETES_EXCHANGE_URL=http://<host ip>:8765 \
    TASKBOX_KUBERNETES_CONTROLLER_CIDRS=<host ip>/32 TASKBOX_KUBERNETES_IMAGE=taskbox-sandbox:latest \
    .venv/bin/pytest -m kubernetes tests/controller/sandbox/kubernetes/test_real_cluster.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.sandbox import conformance
from controller.sandbox.conformance import Scene, checks_for, run_check
from controller.sandbox.engines import Engine, open_engine
from controller.settings import Settings
from tests.controller.sandbox.conftest import make_scene

pytestmark = pytest.mark.kubernetes

_KUBECONFIG = os.environ.get("KUBECONFIG", "")
_REASON = (
    "no cluster: KUBECONFIG does not name a file"
    if not (_KUBECONFIG and Path(_KUBECONFIG.split(os.pathsep)[0]).is_file())
    else "TASKBOX_KUBERNETES_EXCHANGE_URL is not set: Pods could not reach the exchange"
    if not os.environ.get("TASKBOX_KUBERNETES_EXCHANGE_URL")
    else ""
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """The cluster the environment names, as the controller would open it."""
    if _REASON:
        pytest.skip(_REASON)
    opened = open_engine(Settings(sandbox_backend="kubernetes"))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def cluster_scene(
    tmp_path_factory: pytest.TempPathFactory, policies_dir: Path, engine: Engine
) -> Iterator[Scene]:
    """The Docker tests' task, staged for real, with the image the cluster pulls."""
    root = tmp_path_factory.mktemp("k8s-real")
    made = make_scene(root, policies_dir, '{"host": "canary"}')
    made.image = engine.images.image_id(made.image) or made.image
    yield made
    made.cleanup()


@pytest.mark.parametrize("name", [c.name for c in conformance.CHECKS])
def test_real_cluster_conformance(name: str, engine: Engine, cluster_scene: Scene) -> None:
    """Each check the backend's declaration calls for passes on the real cluster, leaving nothing behind."""
    check = next(c for c in conformance.CHECKS if c.name == name)
    if check not in checks_for(engine.backend):
        pytest.skip(f"{name} verifies {sorted(check.verifies)}, not all declared by the backend")
    run_check(check, engine.backend, cluster_scene)
