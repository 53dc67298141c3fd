"""Preflight for a cluster: the namespace's Pod Security label, the network plugin, the deny-all policy, the RuntimeClass.

The facts come from the fake API over real HTTP (the real lightkube client); the
verdicts are pure functions of them.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.errors import SandboxError
from controller.hostcheck import Level
from controller.sandbox.engines import engine_host_checks
from controller.sandbox.kubernetes import preflight
from controller.sandbox.kubernetes.client import kube_client, raw_client, target_from_settings
from controller.sandbox.kubernetes.manifests import build_namespace_policy
from controller.sandbox.kubernetes.target import KubernetesTarget
from controller.settings import Settings
from tests.controller.sandbox.kubernetes.fake_api import (
    POLICIES,
    FakeCluster,
    daemonset,
    fake_config,
    make_app,
    serve,
)

NAMESPACE = "taskbox"


@pytest.fixture
def cluster() -> FakeCluster:
    """A fake cluster whose namespace enforces restricted, with no plugin and no policy yet."""
    return FakeCluster(namespace=NAMESPACE)


def facts_of(cluster: FakeCluster, runtime_class: str | None = None) -> dict[str, Any]:
    """What cluster_facts reads from the fake API."""
    with serve(make_app(cluster)) as url:
        config = fake_config(url)
        client, http = kube_client(config, NAMESPACE), raw_client(config)
        try:
            return preflight.cluster_facts(client, http, NAMESPACE, runtime_class)
        finally:
            client.close()
            http.close()


def verdicts(facts: dict[str, Any]) -> dict[str, Level]:
    """Each check's level, by name."""
    return {check.name: check.level for check in preflight.cluster_checks(facts)}


def test_a_ready_cluster_passes(cluster: FakeCluster) -> None:
    """restricted namespace, Calico running, the deny-all policy and the named RuntimeClass: every check is ok."""
    cluster.daemonsets = [daemonset("calico-node")]
    cluster.runtime_classes = {"gvisor"}
    deny_all = build_namespace_policy(KubernetesTarget(namespace=NAMESPACE))
    cluster.objects[POLICIES]["taskbox-deny-all"] = deny_all
    facts = facts_of(cluster, "gvisor")
    assert facts["ServerVersion"] == "v1.37.0-fake"
    assert verdicts(facts) == {
        "kube.api": Level.OK,
        "kube.namespace": Level.OK,
        "kube.cni": Level.OK,
        "kube.default-deny": Level.OK,
        "kube.runtime-class": Level.OK,
        "kube.policy-runtime-classes": Level.OK,
    }


@pytest.mark.parametrize("enforce", [None, "baseline", "privileged"])
def test_namespace_without_restricted_is_refused(cluster: FakeCluster, enforce: str | None) -> None:
    """A namespace that does not enforce Pod Security restricted is refused, with the label to set."""
    cluster.namespace_labels = {} if enforce is None else {preflight.PSS_ENFORCE: enforce}
    checks = {c.name: c for c in preflight.cluster_checks(facts_of(cluster))}
    assert checks["kube.namespace"].level is Level.REFUSE
    assert "restricted" in checks["kube.namespace"].remedy


def test_missing_namespace_is_refused() -> None:
    """A namespace that does not exist is refused."""
    facts = facts_of(FakeCluster(namespace="elsewhere"))
    assert verdicts(facts)["kube.namespace"] is Level.REFUSE


@pytest.mark.parametrize(
    ("name", "image", "level"),
    [
        ("cilium", "", Level.OK),
        ("antrea-agent", "", Level.OK),
        ("kube-router", "", Level.OK),
        ("weave-net", "", Level.OK),
        ("canal", "docker.io/calico/node:v3.28", Level.OK),  # flannel with Calico's policy engine
        ("kube-flannel-ds", "", Level.REFUSE),
        ("kindnet", "", Level.WARN),
        ("some-agent", "", Level.WARN),
    ],
)
def test_network_plugin(cluster: FakeCluster, name: str, image: str, level: Level) -> None:
    """A known enforcing plugin is ok, flannel alone is refused, anything else a warning (it cannot tell)."""
    cluster.daemonsets = [daemonset("kube-proxy"), daemonset(name, image=image)]
    assert verdicts(facts_of(cluster))["kube.cni"] is level


def test_no_deny_all_policy_is_a_warning(cluster: FakeCluster) -> None:
    """Without a standing deny-all policy preflight warns; a policy that allows egress does not count."""
    cluster.objects[POLICIES]["allow-some"] = {
        "metadata": {"name": "allow-some"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": []}]},
    }
    assert verdicts(facts_of(cluster))["kube.default-deny"] is Level.WARN


def test_missing_runtime_class_is_refused(cluster: FakeCluster) -> None:
    """A RuntimeClass the settings name but the cluster lacks is refused; none named is ok (runc)."""
    cluster.runtime_classes = {"kata"}
    assert verdicts(facts_of(cluster, "gvisor"))["kube.runtime-class"] is Level.REFUSE
    assert verdicts(facts_of(cluster, "kata"))["kube.runtime-class"] is Level.OK
    assert verdicts(facts_of(cluster, None))["kube.runtime-class"] is Level.OK


def test_a_runtime_class_a_policy_names_must_exist(cluster: FakeCluster) -> None:
    """Each RuntimeClass a policy names is looked up: a missing one is refused with the policy's name; all present is ok."""
    cluster.runtime_classes = {"kata"}
    with serve(make_app(cluster)) as url:
        config = fake_config(url)
        client, http = kube_client(config, NAMESPACE), raw_client(config)
        try:
            facts = preflight.cluster_facts(
                client, http, NAMESPACE, None, {"strict": "gvisor", "vm": "kata"}
            )
            present = preflight.cluster_facts(client, http, NAMESPACE, None, {"vm": "kata"})
        finally:
            client.close()
            http.close()
    refused = preflight.check_policy_runtime_classes(facts)
    assert refused.level is Level.REFUSE
    assert "gvisor (policy strict" in refused.summary
    assert "kata" not in refused.summary
    assert verdicts(present)["kube.policy-runtime-classes"] is Level.OK
    assert verdicts(facts_of(cluster))["kube.policy-runtime-classes"] is Level.OK


def test_unreachable_api_is_refused() -> None:
    """An API that does not answer is one refusal, and ping raises SandboxError."""
    with serve(make_app(FakeCluster())) as url:
        pass  # the server is gone: nothing listens at url now
    config = fake_config(url)
    client, http = kube_client(config, NAMESPACE), raw_client(config)
    try:
        facts = preflight.cluster_facts(client, http, NAMESPACE, None)
        assert verdicts(facts) == {"kube.api": Level.REFUSE}
        with pytest.raises(SandboxError, match="does not answer"):
            preflight.ping(http)
    finally:
        client.close()
        http.close()


def test_forbidden_daemonsets_is_a_warning() -> None:
    """When the controller may not list DaemonSets (RBAC), the plugin check warns instead of guessing."""
    facts: dict[str, Any] = {
        "namespace_name": NAMESPACE,
        "ServerVersion": "v1.37.0",
        "namespace": {"metadata": {"labels": {preflight.PSS_ENFORCE: "restricted"}}},
        "daemonsets": None,
        "daemonsets_error": "HTTP 403: forbidden",
        "policies": [],
        "runtime_class_name": None,
    }
    checks = {c.name: c for c in preflight.cluster_checks(facts)}
    assert checks["kube.cni"].level is Level.WARN
    assert "403" in checks["kube.cni"].summary


def test_engine_routes_kubernetes_checks() -> None:
    """engine_host_checks answers the kubernetes backend with the cluster checks and no engine socket."""
    settings = Settings(
        sandbox_backend="kubernetes", kubernetes_exchange_url="http://10.0.0.1:8765"
    )
    result = engine_host_checks(settings, {"version_error": "x", "namespace_error": "y"}, {})
    assert [c.name for c in result.checks] == ["kube.api"]
    assert result.socket_path is None


def test_settings_build_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TASKBOX_KUBERNETES_* variables become the target; the spec's image is kept (no override)."""
    monkeypatch.setenv("TASKBOX_SANDBOX_BACKEND", "kubernetes")
    monkeypatch.setenv("TASKBOX_KUBERNETES_NAMESPACE", "sandboxes")
    monkeypatch.setenv("TASKBOX_KUBERNETES_CONTROLLER_NAMESPACE", "control")
    monkeypatch.setenv("TASKBOX_KUBERNETES_CONTROLLER_SELECTOR", "app=taskbox, tier=controller")
    monkeypatch.setenv("TASKBOX_KUBERNETES_CONTROLLER_CIDRS", "172.18.0.1/32, 10.1.0.0/16")
    monkeypatch.setenv("TASKBOX_KUBERNETES_EXCHANGE_URL", "http://10.96.0.20:8765")
    monkeypatch.setenv("TASKBOX_KUBERNETES_EXCHANGE_PORT", "8765")
    monkeypatch.setenv("TASKBOX_KUBERNETES_GATEWAY_PORT", "8766")
    monkeypatch.setenv("TASKBOX_KUBERNETES_USER_NAMESPACES", "false")
    target = target_from_settings(Settings())
    assert target.namespace == "sandboxes"
    assert target.controller_namespace == "control"
    assert target.controller_pod_labels == {"app": "taskbox", "tier": "controller"}
    assert target.controller_cidrs == ("172.18.0.1/32", "10.1.0.0/16")
    assert (target.exchange_url, target.exchange_port, target.gateway_port) == (
        "http://10.96.0.20:8765",
        8765,
        8766,
    )
    assert target.user_namespaces is False
    assert target.image is None
    assert target.dns is None


def test_settings_that_describe_no_target() -> None:
    """No exchange URL, or a host name without DNS egress, is SandboxError naming the setting."""
    with pytest.raises(SandboxError, match="EXCHANGE_URL"):
        target_from_settings(Settings(sandbox_backend="kubernetes"))
    named = Settings(
        sandbox_backend="kubernetes", kubernetes_exchange_url="http://taskbox.taskbox.svc:8765"
    )
    with pytest.raises(SandboxError, match="names a host"):
        target_from_settings(named)
    with_dns = named.model_copy(update={"kubernetes_dns": True})
    assert target_from_settings(with_dns).dns is not None
