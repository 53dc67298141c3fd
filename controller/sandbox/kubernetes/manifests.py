"""The Pod and the NetworkPolicy of one sandbox, built by pure functions from the ContainerSpec and the target.

A security reviewer reads this file (and docs/kubernetes.md) to know what every Pod
gets, as ``spec.py`` is read for Docker; unit tests assert the exact values, validate
every manifest against the Kubernetes 1.37 schemas and run a Pod Security Standards
checker over it. Nothing here talks to a cluster.

Where each ``ContainerSpec`` field goes is :data:`SPEC_FIELDS` (a test keeps it complete:
a new field fails it until it is mapped or its gap is written down); docs/kubernetes.md
has the same table with the reasons.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

import yaml

from controller.sandbox.kubernetes.target import MAX_NAME, is_dns_label, is_label_value
from controller.sandbox.spec import (
    LABEL_MANAGED,
    LABEL_PHASE,
    LABEL_RUN,
    MIB,
    PHASE_AGENT,
    PHASE_JUDGE,
)
from taskbox_wire.paths import GATEWAY_DIR
from taskbox_wire.pod import (
    ENV_EXCHANGE_TOKEN,
    ENV_EXCHANGE_URL,
    ENV_RLIMITS,
    EXCHANGE_IN,
    INIT_CONTAINER,
    MAIN_CONTAINER,
    STAGE_DIR,
    STAGE_IN_COMMAND,
    STAGE_VOLUME,
    exchange_path,
    stage_subpath,
    wrapped_command,
)

if TYPE_CHECKING:
    from controller.sandbox.kubernetes.target import KubernetesTarget
    from controller.sandbox.spec import ContainerSpec

#: The phases a Pod can be built for; only the agent's reaches the gateway.
PHASES = (PHASE_AGENT, PHASE_JUDGE)

#: Every ``ContainerSpec`` field and what it becomes in the Pod (or how it is covered where
#: Kubernetes has no field for it).
SPEC_FIELDS: dict[str, str] = {
    "name": "metadata.name of the Pod and the NetworkPolicy, as a DNS-1123 label (pod_name)",
    "image": "containers[*].image: target.image (what the cluster pulls), else the spec's image",
    "command": "the main container's command, wrapped by the in-pod helper (wrapped_command)",
    "user": "runAsUser/runAsGroup of the Pod and both containers; runAsNonRoot: true",
    "working_dir": "the main container's workingDir",
    "environment": "env of both containers (init: + exchange URL and token; main: + TASKBOX_RLIMITS)",
    "labels": "metadata.labels (stand-ins for non-label values, exact in metadata.annotations); "
    "the NetworkPolicy's podSelector: managed + run + phase",
    "mounts": "sub-paths of the stage emptyDir, readOnly as in the spec; the gateway folder is "
    "not mounted (a TCP endpoint in a cluster)",
    "tmpfs": "emptyDir medium Memory with sizeLimit; noexec/nosuid/nodev only with "
    "target.alpha_mount_options (bindMountOptions), nosuid is moot under no_new_privs",
    "read_only_root": "readOnlyRootFilesystem: true (both containers)",
    "network_disabled": "NetworkPolicy: no ingress, egress only to the controller's exchange "
    "(and gateway: agent only); dnsPolicy None with a loopback nameserver",
    "cap_drop": "capabilities.drop [ALL] (both containers)",
    "security_opt": "allowPrivilegeEscalation: false (no_new_privs) and seccomp RuntimeDefault",
    "privileged": "privileged: false (both containers)",
    "memory_bytes": "resources requests = limits memory (Guaranteed QoS)",
    "memory_swap_bytes": "no field: a Guaranteed-QoS Pod gets no swap from the kubelet",
    "nano_cpus": "resources requests = limits cpu, in millicores (rounded down)",
    "pids_limit": "no field: the kubelet's podPidsLimit; RLIMIT_NPROC (TASKBOX_RLIMITS) "
    "under user namespaces",
    "shm_bytes": "an emptyDir medium Memory at /dev/shm with that sizeLimit",
    "ulimits": "no field: TASKBOX_RLIMITS, set as hard limits by the in-pod helper",
    "init": "no field: the in-pod helper is PID 1 and reaps its children",
    "ipc_mode": "hostIPC: false: the Pod's own IPC namespace",
    "log_max_bytes": "no field: the kubelet's containerLogMaxSize; counted in ephemeral-storage",
    "wall_clock_seconds": "activeDeadlineSeconds (+ target.deadline_grace_seconds); the "
    "controller enforces the exact deadline itself",
    "runtime_class": "runtimeClassName (the policy's; else the controller's "
    "TASKBOX_KUBERNETES_RUNTIME_CLASS; else the cluster's default runtime)",
    "gateway_port": "the agent's NetworkPolicy egress port to the gateway: the run's own TCP "
    "listener (else target.gateway_port); the judge's policy has none",
}

"""The main container's resource limits as JSON, ``{"nofile": [soft, hard], ...}``: Kubernetes
has no ulimit field, so the in-pod helper sets them (hard, so the command cannot raise them)
before it starts the command."""

SHM_VOLUME = "dshm"
"""The memory-backed emptyDir at /dev/shm that caps shared memory as Docker's ``--shm-size``."""
SHM_DIR = "/dev/shm"  # noqa: S108 - a path inside the Pod

#: Where the Pod's resolver points when it has no DNS: nothing listens there, so a lookup
#: fails at once instead of waiting for a resolver the NetworkPolicy blocks.
NO_DNS_NAMESERVER = "127.0.0.1"

NAMESPACE_POLICY = "taskbox-deny-all"
"""The standing deny-all NetworkPolicy's name (see :func:`build_namespace_policy`)."""

TOKEN_PLACEHOLDER = "<the run's single-use exchange token>"  # noqa: S105 - a placeholder, not a secret
"""The exchange token's value when none is given (``policy explain``)."""

_RUN_ID = re.compile(r"^(?!\.\.?$)[A-Za-z0-9_.-]+$")


def _digest(value: str) -> str:
    # 64 bits: a stand-in another value would share cannot be found by trying.
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def label_value(value: str) -> str:
    """``value`` when it is a valid label value; otherwise a valid, distinct stand-in for it.

    The stand-in keeps what it can of the value (characters outside the label alphabet
    become ``-``) and ends with a digest of the whole value, so two values never share
    one; the exact value is kept in an annotation of the same key.
    """
    if is_label_value(value):
        return value
    digest = _digest(value)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[: MAX_NAME - len(digest) - 1]
    slug = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", slug)
    return f"{slug}-{digest}" if slug else digest


def kube_name(value: str) -> str:
    """``value`` when it is a DNS-1123 label; otherwise a valid, distinct name derived from it."""
    if is_dns_label(value):
        return value
    digest = _digest(value)
    slug = re.sub(r"[^a-z0-9]+", "-", value.lower())[: MAX_NAME - len(digest) - 1].strip("-")
    return f"{slug}-{digest}" if slug else f"taskbox-{digest}"


def pod_name(spec: ContainerSpec) -> str:
    """The Pod's (and its NetworkPolicy's) name: the spec's name as a DNS-1123 label."""
    return kube_name(spec.name)


def pod_labels(spec: ContainerSpec) -> dict[str, str]:
    """The spec's labels with every value in label form (see :func:`label_value`)."""
    return {key: label_value(value) for key, value in spec.labels.items()}


def pod_annotations(spec: ContainerSpec) -> dict[str, str]:
    """The exact values of the labels whose label form differs, by the same key."""
    return {key: value for key, value in spec.labels.items() if label_value(value) != value}


def spec_labels(metadata: dict[str, Any]) -> dict[str, str]:
    """The spec's labels back from a Pod's or NetworkPolicy's metadata (annotations win).

    What recovery reads to learn a found Pod's run id, task key and controller.
    """
    labels: dict[str, str] = dict(metadata.get("labels") or {})
    annotations: dict[str, str] = metadata.get("annotations") or {}
    return {key: annotations.get(key, value) for key, value in labels.items()}


def run_selector(spec: ContainerSpec) -> dict[str, str]:
    """The labels that select exactly this sandbox's Pod: managed, run and phase."""
    labels = pod_labels(spec)
    return {key: labels[key] for key in (LABEL_MANAGED, LABEL_RUN, LABEL_PHASE)}


def quantity_bytes(value: int) -> str:
    """A byte count as a Kubernetes quantity: ``256Mi`` when whole MiB, else plain bytes."""
    return f"{value // MIB}Mi" if value % MIB == 0 else str(value)


def quantity_cpu(nano_cpus: int) -> str:
    """A CPU quota as millicores (the API's resolution), rounded down, at least ``1m``."""
    return f"{max(1, nano_cpus // 1_000_000)}m"


def _user(spec: ContainerSpec) -> tuple[int, int]:
    uid, _, gid = spec.user.partition(":")
    user, group = int(uid), int(gid or uid)
    if user <= 0 or group <= 0:
        raise ValueError(f"the sandbox user {spec.user!r} must be a non-root uid:gid")
    return user, group


def _check_phase(spec: ContainerSpec, phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"no sandbox phase {phase!r} (one of {', '.join(PHASES)})")
    if spec.labels.get(LABEL_PHASE) != phase:
        raise ValueError(
            f"the spec is labelled for phase {spec.labels.get(LABEL_PHASE)!r}, not {phase!r}"
        )


def exchange_url(target: KubernetesTarget, run_id: str) -> str:
    """The init container's ``TASKBOX_EXCHANGE_URL``: ``http://HOST:PORT/exchange/<run id>``."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} cannot be part of a URL path as it is")
    run_path = exchange_path(run_id, EXCHANGE_IN).rsplit("/", 1)[0]
    return f"{target.exchange_url}{run_path}"


def rlimits(spec: ContainerSpec, target: KubernetesTarget) -> dict[str, list[int]]:
    """The limits the in-pod helper sets: the spec's ulimits, and nproc = pids under user namespaces.

    RLIMIT_NPROC counts the processes of a uid; only in its own user namespace is the
    sandbox's uid not shared with other Pods on the node, so only there is it a per-Pod cap.
    """
    limits: dict[str, list[int]] = {u.name: [u.soft, u.hard] for u in spec.ulimits}
    if target.user_namespaces and "nproc" not in limits:
        limits["nproc"] = [spec.pids_limit, spec.pids_limit]
    return limits


def _security_context(uid: int, gid: int) -> dict[str, Any]:
    # Both containers get the full set, so each is "restricted" on its own: PSS allows the
    # container fields to fall back on the Pod's, but a reader should not have to merge them.
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": values[name]} for name in sorted(values)]


def _tmpfs_volume_name(index: int, target: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-")
    return f"tmpfs-{index}-{slug}"[:MAX_NAME].rstrip("-")


def _volumes(spec: ContainerSpec, target: KubernetesTarget) -> list[dict[str, Any]]:
    """The stage volume, one memory-backed emptyDir per tmpfs, and /dev/shm's."""
    volumes: list[dict[str, Any]] = [
        {
            "name": STAGE_VOLUME,
            "emptyDir": {"sizeLimit": quantity_bytes(target.stage_size_mb * MIB)},
        }
    ]
    for index, tmpfs in enumerate(spec.tmpfs):
        empty_dir: dict[str, Any] = {
            "medium": "Memory",
            "sizeLimit": quantity_bytes(tmpfs.size_bytes),
        }
        if target.alpha_mount_options:
            empty_dir["mode"] = tmpfs.mode
        volumes.append({"name": _tmpfs_volume_name(index, tmpfs.target), "emptyDir": empty_dir})
    volumes.append(
        {
            "name": SHM_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": quantity_bytes(spec.shm_bytes)},
        }
    )
    return volumes


def _main_mounts(spec: ContainerSpec, target: KubernetesTarget) -> list[dict[str, Any]]:
    """Each bind mount as a sub-path of the stage volume (in the spec's order: parents first)."""
    mounts: list[dict[str, Any]] = []
    for bind in spec.mounts:
        if bind.target == GATEWAY_DIR:
            continue  # the gateway is a TCP endpoint in a cluster, not a socket folder
        mounts.append(
            {
                "name": STAGE_VOLUME,
                "mountPath": bind.target,
                # stage_subpath raises for a folder the stage volume has no place for: a mount
                # is never dropped silently.
                "subPath": stage_subpath(bind.target),
                "readOnly": bind.read_only,
            }
        )
    for index, tmpfs in enumerate(spec.tmpfs):
        mount: dict[str, Any] = {
            "name": _tmpfs_volume_name(index, tmpfs.target),
            "mountPath": tmpfs.target,
        }
        if target.alpha_mount_options:
            mount["bindMountOptions"] = [o for o in tmpfs.options if o != "rw"]
        mounts.append(mount)
    mounts.append({"name": SHM_VOLUME, "mountPath": SHM_DIR})
    return mounts


def _resources(spec: ContainerSpec, target: KubernetesTarget) -> dict[str, dict[str, str]]:
    """Requests equal to limits in every container: Guaranteed QoS (and so no swap)."""
    resources = {
        "cpu": quantity_cpu(spec.nano_cpus),
        "memory": quantity_bytes(spec.memory_bytes),
        # The stage volume and the container's log count against the Pod's ephemeral storage;
        # past it the kubelet evicts the Pod.
        "ephemeral-storage": quantity_bytes(target.stage_size_mb * MIB + spec.log_max_bytes),
    }
    return {"requests": dict(resources), "limits": dict(resources)}


def _pod_level(target: KubernetesTarget, runtime_class: str | None) -> dict[str, Any]:
    """The Pod-wide settings that do not depend on the spec."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
    }
    if target.user_namespaces:
        pod_spec["hostUsers"] = False
    if runtime_class is not None:
        pod_spec["runtimeClassName"] = runtime_class
    if target.service_account is not None:
        pod_spec["serviceAccountName"] = target.service_account
    if target.dns is None:
        pod_spec["dnsPolicy"] = "None"
        pod_spec["dnsConfig"] = {"nameservers": [NO_DNS_NAMESERVER]}
    else:
        pod_spec["dnsPolicy"] = "ClusterFirst"
    pod_spec["os"] = {"name": "linux"}
    pod_spec["nodeSelector"] = {"kubernetes.io/os": "linux"}
    return pod_spec


def build_pod(
    spec: ContainerSpec,
    target: KubernetesTarget,
    *,
    run_id: str,
    phase: str,
    exchange_token: str | None,
    runtime_class: str | None,
) -> dict[str, Any]:
    """The Pod of one sandbox: Pod Security ``restricted``, files in through the exchange, no host path.

    ``exchange_token`` is the single-use token of ``in.tar`` (None shows a placeholder, for
    ``policy explain``); ``runtime_class`` is the policy's RuntimeClass (None: the cluster's
    default runtime). Raises ValueError when the spec cannot be expressed as a Pod.
    """
    _check_phase(spec, phase)
    if spec.labels.get(LABEL_RUN) != run_id:
        raise ValueError(
            f"the spec is labelled for run {spec.labels.get(LABEL_RUN)!r}, not {run_id!r}"
        )
    if runtime_class is not None and not is_dns_label(runtime_class):
        raise ValueError(f"runtime class {runtime_class!r} is not a DNS-1123 name")
    uid, gid = _user(spec)

    def container(name: str, command: list[str], working_dir: str) -> dict[str, Any]:
        # Fresh objects for each container: a shared one would come out as a YAML alias.
        return {
            "name": name,
            "image": target.image or spec.image,
            "imagePullPolicy": target.image_pull_policy,
            "command": command,
            "workingDir": working_dir,
            "securityContext": _security_context(uid, gid),
            "resources": _resources(spec, target),
            "stdin": False,
            "tty": False,
        }

    init_env = {
        **spec.environment,
        ENV_EXCHANGE_URL: exchange_url(target, run_id),
        ENV_EXCHANGE_TOKEN: exchange_token if exchange_token is not None else TOKEN_PLACEHOLDER,
    }
    init_container = container(INIT_CONTAINER, list(STAGE_IN_COMMAND), STAGE_DIR) | {
        "env": _env(init_env),
        "volumeMounts": [{"name": STAGE_VOLUME, "mountPath": STAGE_DIR}],
    }
    main_env = {**spec.environment, ENV_RLIMITS: json.dumps(rlimits(spec, target), sort_keys=True)}
    main_container = container(MAIN_CONTAINER, wrapped_command(spec.command), spec.working_dir) | {
        "env": _env(main_env),
        "volumeMounts": _main_mounts(spec, target),
    }
    pod_spec = _pod_level(target, runtime_class) | {
        "activeDeadlineSeconds": spec.wall_clock_seconds + target.deadline_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [init_container],
        "containers": [main_container],
        "volumes": _volumes(spec, target),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(spec, target),
        "spec": pod_spec,
    }


def _metadata(spec: ContainerSpec, target: KubernetesTarget) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": pod_name(spec),
        "namespace": target.namespace,
        "labels": pod_labels(spec),
    }
    annotations = pod_annotations(spec)
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _controller_peers(target: KubernetesTarget) -> list[dict[str, Any]]:
    peers: list[dict[str, Any]] = []
    if target.controller_pod_labels:
        peers.append(
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": target.controller_namespace}
                },
                "podSelector": {"matchLabels": dict(target.controller_pod_labels)},
            }
        )
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in target.controller_cidrs]
    return peers


def build_network_policy(
    spec: ContainerSpec, target: KubernetesTarget, *, phase: str
) -> dict[str, Any]:
    """The NetworkPolicy of one sandbox's Pod: no ingress; egress to the controller's exchange only,
    and for the agent also to its gateway (the judge has no route to the gateway at all).

    The agent's gateway port is the spec's (the run's own listener) when it has one, else
    the target's. Raises ValueError for a judge spec with a gateway port, or a gateway port
    equal to the exchange's.
    """
    _check_phase(spec, phase)
    if spec.gateway_port is not None and phase != PHASE_AGENT:
        raise ValueError(f"the {phase} sandbox has no route to a gateway, so no gateway port")
    gateway_port = spec.gateway_port if spec.gateway_port is not None else target.gateway_port
    if gateway_port == target.exchange_port:
        # One port for both would open the gateway to the judge's Pod (issue 13, item 7).
        raise ValueError(f"the gateway port {gateway_port} is the exchange's port")
    ports = [{"protocol": "TCP", "port": target.exchange_port}]
    if phase == PHASE_AGENT:
        ports.append({"protocol": "TCP", "port": gateway_port})
    egress: list[dict[str, Any]] = [{"to": _controller_peers(target), "ports": ports}]
    if target.dns is not None:
        egress.append(
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": target.dns.namespace}
                        },
                        "podSelector": {"matchLabels": dict(target.dns.pod_labels)},
                    }
                ],
                "ports": [
                    {"protocol": "UDP", "port": target.dns.port},
                    {"protocol": "TCP", "port": target.dns.port},
                ],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, target),
        "spec": {
            "podSelector": {"matchLabels": run_selector(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def build_namespace_policy(target: KubernetesTarget) -> dict[str, Any]:
    """A standing deny-all NetworkPolicy for every Taskbox Pod of the namespace.

    Applied once when the namespace is set up: a Pod whose own policy is missing (not
    created yet, or deleted) still reaches nothing. Policies add up, so each run's
    policy then opens only its own ports.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        # Not labelled managed: recovery removes what carries that label, and this one stays.
        "metadata": {
            "name": NAMESPACE_POLICY,
            "namespace": target.namespace,
            "labels": {"app.kubernetes.io/part-of": "taskbox"},
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_MANAGED: "1"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def manifests(
    spec: ContainerSpec,
    target: KubernetesTarget,
    *,
    run_id: str,
    phase: str,
    exchange_token: str | None,
    runtime_class: str | None,
) -> list[dict[str, Any]]:
    """The NetworkPolicy and the Pod of one sandbox, in the order they are created."""
    return [
        build_network_policy(spec, target, phase=phase),
        build_pod(
            spec,
            target,
            run_id=run_id,
            phase=phase,
            exchange_token=exchange_token,
            runtime_class=runtime_class,
        ),
    ]


class _PlainDumper(yaml.SafeDumper):
    """Writes every object in full: a reviewer reads each container's settings where they are."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002 - the signature PyYAML calls
        return True


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """Documents as multi-document YAML; non-ASCII and control characters come out escaped."""
    return yaml.dump_all(
        documents,
        Dumper=_PlainDumper,
        sort_keys=False,
        explicit_start=True,
        allow_unicode=False,
        width=100,
    )
