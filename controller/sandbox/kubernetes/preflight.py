"""Cluster checks for the Kubernetes backend: what the API says about the namespace, the network plugin, the runtime.

:func:`cluster_facts` asks the API (``Engine.facts`` for this backend) and never
raises for a cluster that answers badly: what it could not read is recorded as an
error string. :func:`cluster_checks` turns those facts into ``Check`` records and is
pure (unit-tested with plain dicts):

- ``kube.api``: the API answers;
- ``kube.namespace``: the namespace exists and enforces Pod Security ``restricted``;
- ``kube.cni``: a network plugin that enforces NetworkPolicy runs (a known agent
  DaemonSet: Calico, Cilium, Antrea, kube-router, Weave Net); flannel alone is
  refused, anything else is a warning (it cannot tell);
- ``kube.default-deny``: the namespace's standing deny-all policy for Taskbox Pods;
- ``kube.runtime-class``: the RuntimeClass the settings name exists;
- ``kube.policy-runtime-classes``: every RuntimeClass a policy names exists.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx2
from lightkube import ALL_NS, ApiError
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Namespace
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.node_v1 import RuntimeClass

from controller.errors import SandboxError
from controller.hostcheck import Check, Level
from controller.sandbox.spec import LABEL_MANAGED

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from lightkube import Client

log = logging.getLogger(__name__)

PSS_ENFORCE = "pod-security.kubernetes.io/enforce"

#: Network plugins that enforce NetworkPolicy, by a word in their agent DaemonSet's name.
ENFORCING_CNI = {
    "calico": "Calico",
    "cilium": "Cilium",
    "antrea": "Antrea",
    "kube-router": "kube-router",
    "weave": "Weave Net",
}
#: Network plugins known NOT to enforce NetworkPolicy on their own.
NON_ENFORCING_CNI = {"flannel": "flannel"}


def _error(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status.code}: {exc.status.message}"
    return f"{type(exc).__name__}: {exc}"


def _ask(what: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return what(), None
    except (ApiError, httpx2.HTTPError, OSError) as exc:
        return None, _error(exc)


def cluster_facts(
    client: Client,
    http: httpx2.Client,
    namespace: str,
    runtime_class: str | None,
    policy_runtime_classes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What the API says, as plain data (what could not be read is an ``*_error`` string).

    ``policy_runtime_classes`` maps each policy that names a RuntimeClass to it: a policy's
    class wins over the setting's for its Pods, so each must exist too.
    """
    facts: dict[str, Any] = {"namespace_name": namespace, "runtime_class_name": runtime_class}
    version, facts["version_error"] = _ask(lambda: http.get("/version").raise_for_status().json())
    facts["ServerVersion"] = (version or {}).get("gitVersion")
    found, facts["namespace_error"] = _ask(lambda: client.get(Namespace, namespace).to_dict())
    facts["namespace"] = found
    sets, facts["daemonsets_error"] = _ask(
        lambda: [d.to_dict() for d in client.list(DaemonSet, namespace=ALL_NS)]
    )
    facts["daemonsets"] = sets
    policies, facts["policies_error"] = _ask(
        lambda: [p.to_dict() for p in client.list(NetworkPolicy, namespace=namespace)]
    )
    facts["policies"] = policies
    if runtime_class is not None:
        found_class, facts["runtime_class_error"] = _ask(
            lambda: client.get(RuntimeClass, runtime_class).to_dict()
        )
        facts["runtime_class"] = found_class
    wanted = dict(policy_runtime_classes or {})
    facts["policy_runtime_classes"] = wanted
    found_classes: dict[str, str | None] = {}
    for name in sorted(set(wanted.values())):

        def lookup(name: str = name) -> Any:
            return client.get(RuntimeClass, name).to_dict()

        _, found_classes[name] = _ask(lookup)  # no error: it exists
    facts["policy_runtime_class_errors"] = found_classes
    return facts


def ping(http: httpx2.Client) -> None:
    """Raise SandboxError unless the API server answers ``/version``."""
    try:
        http.get("/version").raise_for_status()
    except httpx2.HTTPError as exc:
        raise SandboxError(f"the Kubernetes API does not answer: {exc}") from exc


def check_api(facts: Mapping[str, Any]) -> Check:
    """The API server must answer."""
    if facts.get("version_error") and facts.get("namespace_error"):
        return Check(
            name="kube.api",
            level=Level.REFUSE,
            summary=f"the Kubernetes API does not answer: {facts['version_error']}",
            remedy="check TASKBOX_KUBERNETES_KUBECONFIG (or the in-cluster service account)",
        )
    version = facts.get("ServerVersion") or "version unknown"
    return Check(name="kube.api", level=Level.OK, summary=f"the Kubernetes API answers ({version})")


def check_namespace(facts: Mapping[str, Any]) -> Check:
    """The namespace must exist and enforce Pod Security ``restricted`` (nothing weaker is admitted there)."""
    name = facts.get("namespace_name")
    namespace = facts.get("namespace")
    if namespace is None:
        return Check(
            name="kube.namespace",
            level=Level.REFUSE,
            summary=f"cannot read the namespace {name}: {facts.get('namespace_error')}",
            remedy=f"kubectl create namespace {name} (and label it, see below)",
        )
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    enforce = labels.get(PSS_ENFORCE)
    if enforce != "restricted":
        return Check(
            name="kube.namespace",
            level=Level.REFUSE,
            summary=f"the namespace {name} enforces Pod Security {enforce or 'nothing'}, not restricted",
            detail="Taskbox's Pods meet `restricted`; the label makes the API server refuse any Pod "
            "in the namespace that does not, whoever creates it.",
            remedy=f"kubectl label namespace {name} {PSS_ENFORCE}=restricted",
        )
    return Check(
        name="kube.namespace",
        level=Level.OK,
        summary=f"the namespace {name} enforces Pod Security restricted",
    )


def _daemonset_names(daemonsets: list[Mapping[str, Any]]) -> list[str]:
    names = []
    for item in daemonsets:
        meta = item.get("metadata") or {}
        containers = (((item.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "containers"
        ) or []
        images = " ".join(str(c.get("image", "")) for c in containers)
        names.append(f"{meta.get('namespace', '')}/{meta.get('name', '')} {images}".lower())
    return names


def check_cni(facts: Mapping[str, Any]) -> Check:
    """A NetworkPolicy-enforcing network plugin must run, or every Pod's policy is a no-op."""
    daemonsets = facts.get("daemonsets")
    if daemonsets is None:
        return Check(
            name="kube.cni",
            level=Level.WARN,
            summary=f"cannot list DaemonSets to tell the network plugin: {facts.get('daemonsets_error')}",
            remedy="make sure the cluster's network plugin enforces NetworkPolicy (Calico, Cilium, Antrea, ...)",
        )
    seen = _daemonset_names(daemonsets)
    enforcing = sorted(
        {label for word, label in ENFORCING_CNI.items() if any(word in s for s in seen)}
    )
    if enforcing:
        return Check(
            name="kube.cni",
            level=Level.OK,
            summary=f"a NetworkPolicy-enforcing network plugin runs: {', '.join(enforcing)}",
        )
    plain = sorted(
        {label for word, label in NON_ENFORCING_CNI.items() if any(word in s for s in seen)}
    )
    if plain:
        return Check(
            name="kube.cni",
            level=Level.REFUSE,
            summary=f"the network plugin ({', '.join(plain)}) does not enforce NetworkPolicy",
            detail="Every sandbox Pod would reach the whole network: its NetworkPolicy is ignored.",
            remedy="add a policy engine (Calico in 'canal' mode with flannel) or use Cilium, Calico or Antrea",
        )
    kindnet = any("kindnet" in s for s in seen)
    return Check(
        name="kube.cni",
        level=Level.WARN,
        summary="cannot tell whether the network plugin enforces NetworkPolicy",
        detail="No agent DaemonSet of Calico, Cilium, Antrea, kube-router or Weave Net was found; "
        "a managed cluster may run its plugin out of sight (GKE Dataplane V2, EKS VPC CNI with "
        "network policy on)."
        + (" kindnet enforces NetworkPolicy only in recent kind releases." if kindnet else ""),
        remedy="check that a NetworkPolicy denying egress really blocks a test Pod",
    )


def _is_deny_all(policy: Mapping[str, Any]) -> bool:
    spec = policy.get("spec") or {}
    selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
    selects = not selector or selector == {LABEL_MANAGED: "1"}
    types = set(spec.get("policyTypes") or [])
    return (
        selects
        and not (spec.get("podSelector") or {}).get("matchExpressions")
        and {"Ingress", "Egress"} <= types
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def check_default_deny(facts: Mapping[str, Any]) -> Check:
    """A standing deny-all policy keeps a Pod whose own policy is not there (yet) off the network."""
    policies = facts.get("policies")
    name = facts.get("namespace_name")
    if policies is None:
        return Check(
            name="kube.default-deny",
            level=Level.WARN,
            summary=f"cannot list the NetworkPolicies of {name}: {facts.get('policies_error')}",
        )
    found = [p["metadata"]["name"] for p in policies if _is_deny_all(p)]
    if found:
        return Check(
            name="kube.default-deny",
            level=Level.OK,
            summary=f"the namespace {name} has a deny-all NetworkPolicy ({found[0]})",
        )
    return Check(
        name="kube.default-deny",
        level=Level.WARN,
        summary=f"the namespace {name} has no standing deny-all NetworkPolicy",
        detail="Each Pod's own policy is created before the Pod, but a network plugin applies it "
        "asynchronously; a deny-all policy for every Taskbox Pod closes that window.",
        remedy="apply the namespace policy `taskbox policy explain --backend kubernetes` prints "
        "(taskbox-deny-all)",
    )


def check_runtime_class(facts: Mapping[str, Any]) -> Check:
    """The RuntimeClass the settings name must exist, or no Pod could be admitted."""
    name = facts.get("runtime_class_name")
    if name is None:
        return Check(
            name="kube.runtime-class",
            level=Level.OK,
            summary="no RuntimeClass named: the cluster's default runtime runs the Pods",
            detail="runc shares the node's kernel: a kernel bug is an escape.",
            remedy="name a gVisor or Kata RuntimeClass in TASKBOX_KUBERNETES_RUNTIME_CLASS where the cluster has one",
        )
    if facts.get("runtime_class") is None:
        return Check(
            name="kube.runtime-class",
            level=Level.REFUSE,
            summary=f"the RuntimeClass {name} does not exist: {facts.get('runtime_class_error')}",
            remedy=f"install the runtime and its RuntimeClass {name}, or unset TASKBOX_KUBERNETES_RUNTIME_CLASS",
        )
    handler = facts["runtime_class"].get("handler", "")
    return Check(
        name="kube.runtime-class",
        level=Level.OK,
        summary=f"the RuntimeClass {name} exists (handler {handler})",
    )


def check_policy_runtime_classes(facts: Mapping[str, Any]) -> Check:
    """Every RuntimeClass a policy names must exist, or the API server refuses that policy's Pods."""
    wanted: Mapping[str, str] = facts.get("policy_runtime_classes") or {}
    errors: Mapping[str, str | None] = facts.get("policy_runtime_class_errors") or {}
    missing = {name: error for name, error in errors.items() if error is not None}
    if not wanted:
        return Check(
            name="kube.policy-runtime-classes",
            level=Level.OK,
            summary="no policy names a RuntimeClass",
        )
    if missing:
        named_by = {
            name: sorted(p for p, c in wanted.items() if c == name) for name in sorted(missing)
        }
        return Check(
            name="kube.policy-runtime-classes",
            level=Level.REFUSE,
            summary="RuntimeClasses the policies name do not exist: "
            + "; ".join(
                f"{name} (policy {', '.join(named_by[name])}: {missing[name]})" for name in named_by
            ),
            remedy="install the runtime and its RuntimeClass, or remove runtime_class from those policies",
        )
    return Check(
        name="kube.policy-runtime-classes",
        level=Level.OK,
        summary="every RuntimeClass the policies name exists: "
        + ", ".join(f"{c} ({p})" for p, c in sorted(wanted.items())),
    )


def cluster_checks(facts: Mapping[str, Any]) -> list[Check]:
    """Every check the facts answer (pure)."""
    api = check_api(facts)
    if api.level is Level.REFUSE:
        return [api]
    return [
        api,
        check_namespace(facts),
        check_cni(facts),
        check_default_deny(facts),
        check_runtime_class(facts),
        check_policy_runtime_classes(facts),
    ]
