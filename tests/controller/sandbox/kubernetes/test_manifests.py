"""The exact Pod and NetworkPolicy of a sandbox: policy + plan -> ContainerSpec -> manifests.

Every manifest built here (both phases, both example policies, with and without a
RuntimeClass, user namespaces and DNS) validates against the Kubernetes 1.37 schemas and
passes the Pod Security Standards checker of pss.py, which is itself tested with one bad
Pod per control.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no type information shipped
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from controller.cli import cli
from controller.cli.policy import explain_task, kubernetes_manifests
from controller.policy.loader import load_policy_file
from controller.policy.planner import MountEntry, MountPlan, Role
from controller.policy.schema import Policy
from controller.sandbox.kubernetes import manifests as m
from controller.sandbox.kubernetes.target import (
    DnsEgress,
    KubernetesTarget,
    is_dns_label,
    is_label_key,
    is_label_value,
    target_from_settings,
)
from controller.sandbox.spec import (
    LABEL_RUN,
    LABEL_TASK,
    MIB,
    PHASE_AGENT,
    PHASE_JUDGE,
    ContainerSpec,
    StagingPaths,
    build_container_spec,
)
from controller.settings import PROJECT_ROOT, Settings
from taskbox_wire.paths import BASE_DIR, F2P_DIR, GATEWAY_DIR, judge_command
from taskbox_wire.pod import (
    ENV_EXCHANGE_TOKEN,
    ENV_EXCHANGE_URL,
    ENV_RLIMITS,
    INIT_CONTAINER,
    MAIN_CONTAINER,
    STAGE_IN_COMMAND,
    wrapped_command,
)
from tests.conftest import RepoFactory
from tests.controller.sandbox.kubernetes import pss

K8S_VERSION = "1.37"
RUN_ID = "BE-7-20261206030000-0a1b2c3d"
POLICY_FILES = sorted((PROJECT_ROOT / "policies").glob("*.yaml"))
EXCHANGE_TOKEN = "tok-123"  # noqa: S105 - a test token
SECRET = "sk-ant-api03-THIS-MUST-NEVER-APPEAR"  # noqa: S105 - a sentinel to search for


def unit_policy(**extra: Any) -> Policy:
    """A policy with odd limits, so each value in a manifest can only come from it."""
    return Policy.model_validate(
        {
            "name": "unit",
            "image": "taskbox-sandbox:latest",
            "uid": 10001,
            "gid": 10002,
            "limits": {
                "memory_mb": 300,
                "cpus": 1.5,
                "pids": 77,
                "nofile": 512,
                "file_size_mb": 32,
                "wall_clock_seconds": 45,
                "log_max_mb": 3,
            },
            "max": {"memory_mb": 512, "cpus": 2, "pids": 128, "wall_clock_seconds": 60},
            "tmpfs": [{"path": "/tmp", "size_mb": 8}, {"path": "/home/sandbox", "size_mb": 4}],
            "deny": [],
            "model": {
                "allowed_models": ["m"],
                "default_model": "m",
                "max_tokens_per_request": 100,
                "max_total_tokens": 1000,
                "max_requests": 10,
                "max_rounds": 2,
            },
            **extra,
        }
    )


def plan_for(policy: Policy, task_key: str = "BE-7") -> MountPlan:
    return MountPlan(
        task_key=task_key,
        base_commit="0" * 40,
        policy=policy.name,
        policy_digest=policy.digest(),
        read_only=[
            MountEntry(path="README.md", kind="file", role=Role.RELEVANT, exists_at_base=True)
        ],
        read_write=[
            MountEntry(path="app/api", kind="dir", role=Role.OWNS, exists_at_base=True),
            MountEntry(path="tests/test_x.py", kind="file", role=Role.OWNS, exists_at_base=False),
        ],
    )


def spec_for(
    policy: Policy, phase: str, *, run_id: str = RUN_ID, task_key: str = "BE-7"
) -> ContainerSpec:
    """The ContainerSpec a run builds for the phase, staging laid out as controller/staging.py does."""
    root = Path("/runs") / run_id / "stage"
    staging = StagingPaths.under(root)
    command = ["python", "-m", "taskbox_runner"]
    if phase == PHASE_JUDGE:
        staging = staging.model_copy(
            update={
                "gateway": None,
                "extra_read_only": {BASE_DIR: root / "base", F2P_DIR: root / "f2p"},
            }
        )
        command = judge_command()
    return build_container_spec(
        policy=policy,
        plan=plan_for(policy, task_key),
        staging=staging,
        image="taskbox-sandbox:latest",
        run_id=run_id,
        command=command,
        controller_id="ctl",
        phase=phase,
    )


def pod_for(
    spec: ContainerSpec,
    target: KubernetesTarget | None = None,
    *,
    phase: str = PHASE_AGENT,
    token: str | None = EXCHANGE_TOKEN,
    runtime_class: str | None = None,
) -> dict[str, Any]:
    return m.build_pod(
        spec,
        target or KubernetesTarget(),
        run_id=spec.labels[LABEL_RUN],
        phase=phase,
        exchange_token=token,
        runtime_class=runtime_class,
    )


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod["spec"]["containers"] + pod["spec"]["initContainers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, leaf or key) in a manifest, for searches over the whole document."""
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            items.append((f"{path}.{key}", key))
            items += walk(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            items += walk(inner, f"{path}[{index}]")
    else:
        items.append((path, value))
    return items


# --------------------------------------------------------------------------- exact values


def test_the_pod_has_the_restricted_security_settings_exactly() -> None:
    """Pod and both containers: non-root 10001, no escalation, no capabilities, seccomp, read-only root."""
    pod = pod_for(spec_for(unit_policy(), PHASE_AGENT), runtime_class="gvisor")
    spec = pod["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10002,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for name in (INIT_CONTAINER, MAIN_CONTAINER):
        assert container(pod, name)["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10002,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["hostNetwork"] is False
    assert spec["hostPID"] is False
    assert spec["hostIPC"] is False
    assert spec["shareProcessNamespace"] is False
    assert spec["hostUsers"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["activeDeadlineSeconds"] == 45 + 60
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert spec["os"] == {"name": "linux"}
    assert "serviceAccountName" not in spec
    assert not any(key in {"hostPath", "hostPort", "hostAliases"} for _, key in walk(pod))


def test_requests_equal_limits_from_the_policy() -> None:
    """cpu 1.5 -> 1500m, memory 300 MiB, ephemeral storage = stage + log; the same in both containers."""
    target = KubernetesTarget(stage_size_mb=100)
    pod = pod_for(spec_for(unit_policy(), PHASE_AGENT), target)
    expected = {"cpu": "1500m", "memory": "300Mi", "ephemeral-storage": "103Mi"}
    for name in (INIT_CONTAINER, MAIN_CONTAINER):
        assert container(pod, name)["resources"] == {"requests": expected, "limits": expected}


def test_volumes_are_empty_dirs_with_size_limits() -> None:
    """The stage volume, each tmpfs (memory-backed) and /dev/shm: emptyDirs with a size limit, nothing else."""
    pod = pod_for(spec_for(unit_policy(), PHASE_AGENT), KubernetesTarget(stage_size_mb=100))
    assert pod["spec"]["volumes"] == [
        {"name": "stage", "emptyDir": {"sizeLimit": "100Mi"}},
        {"name": "tmpfs-0-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
        {"name": "tmpfs-1-home-sandbox", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


def test_the_agent_mounts_are_stage_sub_paths_and_no_gateway_folder() -> None:
    """Read-only /work and /taskbox, writable owned paths and /out; the gateway socket folder is absent."""
    pod = pod_for(spec_for(unit_policy(), PHASE_AGENT))
    main = container(pod, MAIN_CONTAINER)
    assert main["volumeMounts"] == [
        {"name": "stage", "mountPath": "/work", "subPath": "work", "readOnly": True},
        {
            "name": "stage",
            "mountPath": "/work/app/api",
            "subPath": "work/app/api",
            "readOnly": False,
        },
        {
            "name": "stage",
            "mountPath": "/work/tests/test_x.py",
            "subPath": "work/tests/test_x.py",
            "readOnly": False,
        },
        {"name": "stage", "mountPath": "/out", "subPath": "out", "readOnly": False},
        {"name": "stage", "mountPath": "/taskbox", "subPath": "taskbox", "readOnly": True},
        {"name": "tmpfs-0-tmp", "mountPath": "/tmp"},
        {"name": "tmpfs-1-home-sandbox", "mountPath": "/home/sandbox"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    assert all(mount["mountPath"] != GATEWAY_DIR for mount in main["volumeMounts"])
    assert container(pod, INIT_CONTAINER)["volumeMounts"] == [
        {"name": "stage", "mountPath": "/stage"}
    ]


def test_the_judge_mounts_base_and_f2p_read_only() -> None:
    """The judge's Pod mounts its two extra trees read-only and has no gateway anywhere."""
    pod = pod_for(spec_for(unit_policy(), PHASE_JUDGE), phase=PHASE_JUDGE)
    mounts = {v["mountPath"]: v for v in container(pod, MAIN_CONTAINER)["volumeMounts"]}
    assert mounts["/base"] == {
        "name": "stage",
        "mountPath": "/base",
        "subPath": "base",
        "readOnly": True,
    }
    assert mounts["/f2p"] == {
        "name": "stage",
        "mountPath": "/f2p",
        "subPath": "f2p",
        "readOnly": True,
    }
    assert GATEWAY_DIR not in mounts


def test_commands_and_environment() -> None:
    """The init container stages in with the run's URL and token; the main one runs the wrapped command."""
    spec = spec_for(unit_policy(), PHASE_AGENT)
    target = KubernetesTarget(exchange_url="http://10.0.0.5:30080")
    pod = pod_for(spec, target, token=EXCHANGE_TOKEN)
    init = container(pod, INIT_CONTAINER)
    main = container(pod, MAIN_CONTAINER)
    assert init["command"] == list(STAGE_IN_COMMAND)
    assert main["command"] == wrapped_command(spec.command)
    assert main["workingDir"] == "/work"
    init_env = {e["name"]: e["value"] for e in init["env"]}
    main_env = {e["name"]: e["value"] for e in main["env"]}
    assert init_env[ENV_EXCHANGE_URL] == f"http://10.0.0.5:30080/exchange/{RUN_ID}"
    assert init_env[ENV_EXCHANGE_TOKEN] == EXCHANGE_TOKEN
    # The token is the init container's only: the command never sees it.
    assert ENV_EXCHANGE_TOKEN not in main_env
    assert ENV_EXCHANGE_URL not in main_env
    assert EXCHANGE_TOKEN not in json.dumps(main)
    assert {k: v for k, v in main_env.items() if k != ENV_RLIMITS} == spec.environment
    assert json.loads(main_env[ENV_RLIMITS]) == {
        "nofile": [512, 512],
        "fsize": [32 * MIB, 32 * MIB],
        "core": [0, 0],
        "nproc": [77, 77],
    }
    for c in (init, main):
        assert c["image"] == "taskbox-sandbox:latest"
        assert c["imagePullPolicy"] == "IfNotPresent"


def test_the_target_image_replaces_the_engine_image() -> None:
    """A cluster pulls the target's reference; the spec's (a local image id) is not used then."""
    reference = "registry.example/taskbox-sandbox@sha256:" + "a" * 64
    pod = pod_for(spec_for(unit_policy(), PHASE_AGENT), KubernetesTarget(image=reference))
    assert {c["image"] for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]} == {
        reference
    }


def test_without_user_namespaces_there_is_no_host_users_field_and_no_nproc() -> None:
    """hostUsers is left to its default, and RLIMIT_NPROC (shared by every Pod of the uid) is not set."""
    pod = pod_for(spec_for(unit_policy(), PHASE_AGENT), KubernetesTarget(user_namespaces=False))
    assert "hostUsers" not in pod["spec"]
    env = {e["name"]: e["value"] for e in container(pod, MAIN_CONTAINER)["env"]}
    assert "nproc" not in json.loads(env[ENV_RLIMITS])


def test_no_runtime_class_leaves_the_cluster_default() -> None:
    """Without a RuntimeClass the field is absent; an invalid name is refused."""
    spec = spec_for(unit_policy(), PHASE_AGENT)
    assert "runtimeClassName" not in pod_for(spec)["spec"]
    with pytest.raises(ValueError, match="DNS-1123"):
        pod_for(spec, runtime_class="gVisor_")


def test_the_api_key_appears_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a real-looking key in the controller's environment, no manifest carries it or names it."""
    monkeypatch.setenv("TASKBOX_ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    target = target_from_settings(Settings(_env_file=None))  # type: ignore[call-arg]  # pydantic-settings' keyword
    for phase in (PHASE_AGENT, PHASE_JUDGE):
        spec = spec_for(unit_policy(), phase)
        text = m.to_yaml(
            m.manifests(
                spec, target, run_id=RUN_ID, phase=phase, exchange_token=None, runtime_class=None
            )
        )
        assert SECRET not in text
        assert "ANTHROPIC" not in text.upper()
        assert "api_key" not in text.lower()


def test_every_container_spec_field_is_mapped() -> None:
    """SPEC_FIELDS names every ContainerSpec field: a new field fails here until it is mapped."""
    assert set(m.SPEC_FIELDS) == set(ContainerSpec.model_fields)


def test_the_spec_and_the_call_must_agree() -> None:
    """A phase or run id that is not the spec's is refused, not silently used."""
    spec = spec_for(unit_policy(), PHASE_AGENT)
    target = KubernetesTarget()
    with pytest.raises(ValueError, match="phase"):
        m.build_pod(
            spec, target, run_id=RUN_ID, phase=PHASE_JUDGE, exchange_token=None, runtime_class=None
        )
    with pytest.raises(ValueError, match="no sandbox phase"):
        m.build_network_policy(spec, target, phase="judge-static")
    with pytest.raises(ValueError, match="run"):
        m.build_pod(
            spec, target, run_id="other", phase=PHASE_AGENT, exchange_token=None, runtime_class=None
        )


def test_a_mount_outside_the_stage_is_refused_not_dropped() -> None:
    """A bind mount the stage volume has no place for raises instead of vanishing from the Pod."""
    spec = spec_for(unit_policy(), PHASE_AGENT)
    extra = spec.mounts[0].model_copy(update={"target": "/etc/extra"})
    odd = spec.model_copy(update={"mounts": [*spec.mounts, extra]})
    with pytest.raises(ValueError, match="not a staged folder"):
        pod_for(odd)


# --------------------------------------------------------------------------- names and labels


@pytest.mark.parametrize(
    "task_key",
    ["BE-7", "x" * 64, "BE-7-", "Z_", "A_b-C"],
)
def test_labels_are_valid_and_exact_values_are_kept(task_key: str) -> None:
    """Every label key and value is valid Kubernetes syntax; the exact spec labels come back from the metadata."""
    run_id = f"{task_key}-20261206030000-0a1b2c3d"
    spec = spec_for(unit_policy(), PHASE_AGENT, run_id=run_id, task_key=task_key)
    for document in (
        pod_for(spec),
        m.build_network_policy(spec, KubernetesTarget(), phase=PHASE_AGENT),
    ):
        metadata = document["metadata"]
        assert is_dns_label(metadata["name"])
        for key, value in metadata["labels"].items():
            assert is_label_key(key), key
            assert is_label_value(value), value
        for key in metadata.get("annotations", {}):
            assert is_label_key(key), key
        assert m.spec_labels(metadata) == spec.labels
    assert m.spec_labels(pod_for(spec)["metadata"])[LABEL_TASK] == task_key


def test_stand_ins_never_collide() -> None:
    """Values differing only in characters a label cannot hold get different label forms and Pod names."""
    values = ["sha256:ab", "sha256/ab", "sha256_ab", "SHA256-ab", "x" * 64, "x" * 65]
    assert len({m.label_value(v) for v in values}) == len(values)
    names = ["taskbox-BE-1-r", "taskbox-be-1-r", "taskbox-BE_1-r"]
    assert len({m.kube_name(v) for v in names}) == len(names)
    assert all(is_dns_label(m.kube_name(v)) for v in [*names, "---", "Ω", "a" * 300])
    assert all(is_label_value(m.label_value(v)) for v in [*values, "---", "Ω", "-a-", ""])


def test_the_selector_picks_the_pod_of_one_run_and_phase() -> None:
    """The NetworkPolicy selects its own Pod (by managed, run and phase) and neither other phase's."""
    agent = spec_for(unit_policy(), PHASE_AGENT)
    judge = spec_for(unit_policy(), PHASE_JUDGE)
    policy = m.build_network_policy(agent, KubernetesTarget(), phase=PHASE_AGENT)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    agent_labels = pod_for(agent)["metadata"]["labels"]
    judge_labels = pod_for(judge, phase=PHASE_JUDGE)["metadata"]["labels"]
    assert selector.items() <= agent_labels.items()
    assert not selector.items() <= judge_labels.items()
    assert set(selector) == {"org.taskbox.managed", "org.taskbox.run", "org.taskbox.phase"}


# --------------------------------------------------------------------------- NetworkPolicy


def test_the_agent_reaches_the_exchange_and_the_gateway_only() -> None:
    """No ingress; egress only to the controller's pods on the exchange and gateway ports."""
    target = KubernetesTarget(exchange_port=7001, gateway_port=7002)
    policy = m.build_network_policy(spec_for(unit_policy(), PHASE_AGENT), target, phase=PHASE_AGENT)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["egress"] == [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "taskbox"}
                    },
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/name": "taskbox-controller"}
                    },
                }
            ],
            "ports": [{"protocol": "TCP", "port": 7001}, {"protocol": "TCP", "port": 7002}],
        }
    ]


def test_the_judge_has_no_route_to_the_gateway() -> None:
    """The judge's policy opens the exchange port only (issue 13, item 7)."""
    target = KubernetesTarget(exchange_port=7001, gateway_port=7002)
    policy = m.build_network_policy(spec_for(unit_policy(), PHASE_JUDGE), target, phase=PHASE_JUDGE)
    ports = [p for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert ports == [{"protocol": "TCP", "port": 7001}]
    assert policy["spec"]["ingress"] == []


def test_the_agent_opens_its_own_runs_gateway_port_only() -> None:
    """A spec with the run's gateway port: the agent's policy opens that port, not the controller-wide one."""
    target = KubernetesTarget(exchange_port=7001, gateway_port=7002)
    spec = spec_for(unit_policy(), PHASE_AGENT).model_copy(update={"gateway_port": 41234})
    policy = m.build_network_policy(spec, target, phase=PHASE_AGENT)
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert ports == [7001, 41234]
    assert kubernetes_validate.validate(policy, K8S_VERSION, strict=True) == K8S_VERSION


def test_a_gateway_port_never_reaches_the_judge_or_the_exchange_port() -> None:
    """A judge spec with a gateway port, or a gateway port equal to the exchange's, is refused, not built."""
    target = KubernetesTarget(exchange_port=7001, gateway_port=7002)
    judge = spec_for(unit_policy(), PHASE_JUDGE).model_copy(update={"gateway_port": 41234})
    with pytest.raises(ValueError, match="no route to a gateway"):
        m.build_network_policy(judge, target, phase=PHASE_JUDGE)
    clash = spec_for(unit_policy(), PHASE_AGENT).model_copy(update={"gateway_port": 7001})
    with pytest.raises(ValueError, match="exchange's port"):
        m.build_network_policy(clash, target, phase=PHASE_AGENT)
    with pytest.raises(ValueError, match="no gateway"):
        build_container_spec(
            policy=unit_policy(),
            plan=plan_for(unit_policy()),
            staging=StagingPaths.under(Path("/runs/x/stage")),
            image="taskbox-sandbox:latest",
            run_id=RUN_ID,
            command=judge_command(),
            phase=PHASE_JUDGE,
            gateway_port=41234,
        )


def test_dns_and_outside_controllers_only_when_configured() -> None:
    """A named exchange host needs DNS egress (to kube-dns only); CIDRs add ipBlock peers."""
    target = KubernetesTarget(
        exchange_url="http://taskbox.taskbox.svc:8765",
        dns=DnsEgress(),
        controller_cidrs=("172.18.0.1/32",),
    )
    spec = spec_for(unit_policy(), PHASE_JUDGE)
    policy = m.build_network_policy(spec, target, phase=PHASE_JUDGE)
    first, dns = policy["spec"]["egress"]
    assert {"ipBlock": {"cidr": "172.18.0.1/32"}} in first["to"]
    assert dns == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    assert pod_for(spec, target, phase=PHASE_JUDGE)["spec"]["dnsPolicy"] == "ClusterFirst"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"exchange_port": 8765, "gateway_port": 8765}, "must differ"),
        ({"exchange_url": "http://controller.taskbox.svc:8765"}, "names a host"),
        ({"exchange_url": "https://10.0.0.1:8765"}, "http://"),
        ({"exchange_url": "http://10.0.0.1:8765/exchange"}, "no path"),
        ({"controller_cidrs": ("10.0.0.0/33",)}, "does not appear|not a valid"),
        ({"controller_pod_labels": {"app": "bad value"}}, "label value"),
        ({"controller_pod_labels": {}, "controller_cidrs": ()}, "reaches nothing"),
        ({"namespace": "Taskbox"}, "pattern"),
        ({"extra": 1}, "Extra inputs"),
    ],
)
def test_a_bad_target_is_refused(values: dict[str, Any], message: str) -> None:
    """Targets that would open the gateway to the judge, need DNS silently or are malformed fail to load."""
    with pytest.raises(ValidationError, match=message):
        KubernetesTarget.model_validate(values)


# --------------------------------------------------------------------------- schemas and PSS

TARGETS = {
    "default": KubernetesTarget(),
    "no-userns": KubernetesTarget(user_namespaces=False),
    "dns-alpha": KubernetesTarget(
        exchange_url="http://taskbox.taskbox.svc:8765",
        dns=DnsEgress(),
        alpha_mount_options=True,
        service_account="taskbox-sandbox",
        controller_cidrs=("172.18.0.1/32",),
    ),
}


@pytest.mark.parametrize(
    ("policy_file", "phase", "runtime_class", "target_name"),
    list(
        itertools.product(
            POLICY_FILES, (PHASE_AGENT, PHASE_JUDGE), (None, "gvisor", "kata"), sorted(TARGETS)
        )
    ),
    ids=lambda value: value.stem if isinstance(value, Path) else str(value),
)
def test_every_manifest_validates_and_is_restricted(
    policy_file: Path, phase: str, runtime_class: str | None, target_name: str
) -> None:
    """Pod and NetworkPolicy validate strictly against the 1.37 schemas; the Pod passes PSS restricted (and so baseline)."""
    policy = load_policy_file(policy_file)
    if runtime_class is not None:
        policy = policy.model_copy(update={"runtime_class": runtime_class})
    spec = spec_for(policy, phase)
    documents = m.manifests(
        spec,
        TARGETS[target_name],
        run_id=RUN_ID,
        phase=phase,
        exchange_token=None,
        runtime_class=policy.runtime_class,
    )
    for document in documents:
        assert kubernetes_validate.validate(document, K8S_VERSION, strict=True) == K8S_VERSION
    policy_doc, pod = documents
    assert policy_doc["kind"] == "NetworkPolicy"
    assert pod["kind"] == "Pod"
    assert pss.violations(pod, "restricted") == {}
    assert pss.violations(pod, "baseline") == {}
    assert pod["spec"].get("runtimeClassName") == runtime_class
    assert yaml.safe_load_all(m.to_yaml(documents)) is not None
    assert list(yaml.safe_load_all(m.to_yaml(documents))) == documents


def test_the_namespace_policy_validates() -> None:
    """The standing deny-all policy is valid and denies both directions for managed Pods."""
    policy = m.build_namespace_policy(KubernetesTarget())
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    assert policy["spec"]["egress"] == []
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_the_schema_validation_can_fail() -> None:
    """The validator refuses a Pod with an unknown field and a NetworkPolicy with a bad type (it is not a no-op)."""
    spec = spec_for(unit_policy(), PHASE_AGENT)
    pod = pod_for(spec)
    pod["spec"]["containers"][0]["securityContext"]["noNewPrivileges"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    policy = m.build_network_policy(spec, KubernetesTarget(), phase=PHASE_AGENT)
    policy["spec"]["policyTypes"] = "Egress"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- the PSS checker itself


def _set(path: str, value: Any) -> Any:
    """A mutation that sets a dotted path (``spec.containers.0.securityContext.x``) in a Pod."""

    def apply(pod: dict[str, Any]) -> None:
        keys = path.split(".")
        node: Any = pod
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value

    return apply


def _delete(path: str) -> Any:
    def apply(pod: dict[str, Any]) -> None:
        keys = path.split(".")
        node: Any = pod
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[keys[-1]]

    return apply


def _both(*mutations: Any) -> Any:
    def apply(pod: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(pod)

    return apply


MAIN = "spec.containers.0"
INIT = "spec.initContainers.0"

#: One deliberately bad Pod per control (a mutation of a good one), with the path it must report.
BAD_PODS: list[tuple[str, Any, str]] = [
    ("HostProcess", _set("spec.securityContext.windowsOptions", {"hostProcess": True}),
     "spec.securityContext.windowsOptions.hostProcess"),
    ("HostProcess", _set(f"{INIT}.securityContext.windowsOptions", {"hostProcess": True}),
     "spec.initContainers[0].securityContext.windowsOptions.hostProcess"),
    ("Host Namespaces", _set("spec.hostNetwork", value=True), "spec.hostNetwork"),
    ("Host Namespaces", _set("spec.hostPID", value=True), "spec.hostPID"),
    ("Host Namespaces", _set("spec.hostIPC", value=True), "spec.hostIPC"),
    ("Privileged Containers", _set(f"{MAIN}.securityContext.privileged", value=True),
     "spec.containers[0].securityContext.privileged"),
    ("Capabilities (baseline)", _set(f"{MAIN}.securityContext.capabilities.add", ["SYS_ADMIN"]),
     "spec.containers[0].securityContext.capabilities.add[0]"),
    ("HostPath Volumes", _set("spec.volumes.0", {"name": "stage", "hostPath": {"path": "/"}}),
     "spec.volumes[0].hostPath"),
    ("Host Ports", _set(f"{MAIN}.ports", [{"containerPort": 80, "hostPort": 8080}]),
     "spec.containers[0].ports[0].hostPort"),
    ("Host Probes / Lifecycle Hooks",
     _set(f"{MAIN}.livenessProbe", {"httpGet": {"host": "10.0.0.1", "port": 80}}),
     "spec.containers[0].livenessProbe.httpGet.host"),
    ("Host Probes / Lifecycle Hooks",
     _set(f"{INIT}.lifecycle", {"preStop": {"tcpSocket": {"host": "169.254.169.254", "port": 80}}}),
     "spec.initContainers[0].lifecycle.preStop.tcpSocket.host"),
    ("AppArmor", _set("spec.securityContext.appArmorProfile", {"type": "Unconfined"}),
     "spec.securityContext.appArmorProfile.type"),
    ("AppArmor", _set("metadata.annotations", {f"{pss.APPARMOR_ANNOTATION}sandbox": "unconfined"}),
     f"metadata.annotations[{pss.APPARMOR_ANNOTATION + 'sandbox'!r}]"),
    ("SELinux", _set(f"{MAIN}.securityContext.seLinuxOptions", {"type": "spc_t"}),
     "spec.containers[0].securityContext.seLinuxOptions.type"),
    ("SELinux", _set("spec.securityContext.seLinuxOptions", {"user": "system_u"}),
     "spec.securityContext.seLinuxOptions.user"),
    ("SELinux", _set(f"{INIT}.securityContext.seLinuxOptions", {"role": "sysadm_r"}),
     "spec.initContainers[0].securityContext.seLinuxOptions.role"),
    ("/proc Mount Type", _set(f"{MAIN}.securityContext.procMount", "Unmasked"),
     "spec.containers[0].securityContext.procMount"),
    ("Seccomp (baseline)", _set(f"{MAIN}.securityContext.seccompProfile", {"type": "Unconfined"}),
     "spec.containers[0].securityContext.seccompProfile.type"),
    ("Sysctls", _set("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
     "spec.securityContext.sysctls[0].name"),
    ("Volume Types", _set("spec.volumes.0", {"name": "stage", "nfs": {"server": "x", "path": "/"}}),
     "spec.volumes[0]"),
    ("Volume Types", _set("spec.volumes.0", {"name": "stage", "emptyDir": {}, "gitRepo": {"repository": "x"}}),
     "spec.volumes[0]"),
    ("Privilege Escalation", _delete(f"{INIT}.securityContext.allowPrivilegeEscalation"),
     "spec.initContainers[0].securityContext.allowPrivilegeEscalation"),
    ("Privilege Escalation", _set(f"{MAIN}.securityContext.allowPrivilegeEscalation", value=True),
     "spec.containers[0].securityContext.allowPrivilegeEscalation"),
    ("Running as Non-root", _set(f"{MAIN}.securityContext.runAsNonRoot", value=False),
     "spec.containers[0].securityContext.runAsNonRoot"),
    ("Running as Non-root",
     _both(_delete("spec.securityContext.runAsNonRoot"), _delete(f"{INIT}.securityContext.runAsNonRoot")),
     "spec.initContainers[0].securityContext.runAsNonRoot"),
    ("Running as Non-root user", _set(f"{MAIN}.securityContext.runAsUser", 0),
     "spec.containers[0].securityContext.runAsUser"),
    ("Running as Non-root user", _set("spec.securityContext.runAsUser", 0),
     "spec.securityContext.runAsUser"),
    ("Seccomp (restricted)",
     _both(_delete("spec.securityContext.seccompProfile"), _delete(f"{MAIN}.securityContext.seccompProfile")),
     "spec.containers[0].securityContext.seccompProfile.type"),
    ("Seccomp (restricted)", _set("spec.securityContext.seccompProfile", {"type": "Unconfined"}),
     "spec.securityContext.seccompProfile.type"),
    ("Capabilities (restricted)", _set(f"{INIT}.securityContext.capabilities", {"drop": ["NET_RAW"]}),
     "spec.initContainers[0].securityContext.capabilities.drop"),
    ("Capabilities (restricted)", _set(f"{MAIN}.securityContext.capabilities.add", ["CHOWN"]),
     "spec.containers[0].securityContext.capabilities.add[0]"),
]  # fmt: skip


@pytest.fixture(scope="module")
def good_pod() -> dict[str, Any]:
    return pod_for(spec_for(unit_policy(), PHASE_AGENT))


@pytest.mark.parametrize(
    ("control", "mutation", "path"),
    BAD_PODS,
    ids=[f"{i}-{c}" for i, (c, _, _) in enumerate(BAD_PODS)],
)
def test_the_checker_catches_each_control(
    good_pod: dict[str, Any], control: str, mutation: Any, path: str
) -> None:
    """A Pod broken in one control is reported for that control, at the offending field."""
    pod = copy.deepcopy(good_pod)
    mutation(pod)
    found = pss.violations(pod, "restricted")
    assert path in found.get(control, []), found
    level = "baseline" if control in pss.BASELINE else "restricted"
    assert path in pss.violations(pod, level).get(control, [])


def test_every_control_has_a_bad_pod() -> None:
    """The bad-Pod table covers every control of both levels, so none can pass everything unseen."""
    assert {control for control, _, _ in BAD_PODS} == set(pss.BASELINE) | set(pss.RESTRICTED)


def test_the_default_pod_is_baseline_but_not_restricted() -> None:
    """A minimally specified Pod passes baseline (as the standard says) and fails the restricted controls."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
    assert pss.violations(pod, "baseline") == {}
    assert set(pss.violations(pod, "restricted")) == {
        "Privilege Escalation",
        "Running as Non-root",
        "Seccomp (restricted)",
        "Capabilities (restricted)",
    }


def test_windows_pods_skip_the_linux_only_controls() -> None:
    """With spec.os.name windows, privilege escalation, restricted seccomp and capabilities do not apply."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"os": {"name": "windows"}, "securityContext": {"runAsNonRoot": True},
                    "containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
    assert pss.violations(pod, "restricted") == {}


# --------------------------------------------------------------------------- policy and CLI


def test_runtime_class_is_optional_and_checked() -> None:
    """runtime_class defaults to None, must be a DNS-1123 name, and leaves the digest alone while unset."""
    policy = unit_policy()
    assert policy.runtime_class is None
    assert unit_policy(runtime_class="gvisor").runtime_class == "gvisor"
    assert unit_policy(runtime_class="gvisor").digest() != policy.digest()
    with pytest.raises(ValidationError):
        unit_policy(runtime_class="GVisor")
    # The digest of a policy without it is computed exactly as before the field existed.
    body = policy.model_dump(mode="json")
    del body["runtime_class"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert policy.digest() == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _write_task(tmp_path: Path) -> Path:
    task = {
        "taskKey": "BE-7",
        "description": "add a route",
        "ownsPaths": ["app/api/", "tests/test_api.py"],
        "contextJson": {"BE-7-ctx": {"relevant_files": ["README.md"], "world_state": "x"}},
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    return path


def test_cli_explain_kubernetes_prints_the_builders_manifests(
    tmp_path: Path, make_repo: RepoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``policy explain --backend kubernetes`` is YAML whose documents are exactly the builders' (agent, then judge)."""
    repo, _ = make_repo({"README.md": "hi\n", "app/api/__init__.py": "", "app/main.py": "x = 1\n"})
    task_file = _write_task(tmp_path)
    env = {
        "TASKBOX_RUNS_DIR": str(tmp_path / "runs"),
        "TASKBOX_KUBERNETES_NAMESPACE": "sandboxes",
        "TASKBOX_ANTHROPIC_API_KEY": SECRET,
        "COLUMNS": "250",
    }
    result = CliRunner().invoke(
        cli,
        ["policy", "explain", str(task_file), "--repo", str(repo), "--backend", "kubernetes"],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    shown = [d for d in yaml.safe_load_all(result.stdout) if d is not None]

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings' keyword
    ex = explain_task(task_file, repo, "HEAD", None, settings.runs_dir / "<run-id>" / "stage")
    assert ex.judge_spec is not None
    target = target_from_settings(settings).model_copy(update={"image": ex.image})
    expected = [
        document
        for phase, spec in ((PHASE_AGENT, ex.spec), (PHASE_JUDGE, ex.judge_spec))
        for document in m.manifests(
            spec, target, run_id="explain", phase=phase, exchange_token=None, runtime_class=None
        )
    ]
    assert shown == expected
    assert [d for _, docs in kubernetes_manifests(ex, settings) for d in docs] == expected
    assert [(d["kind"], d["metadata"]["labels"]["org.taskbox.phase"]) for d in shown] == [
        ("NetworkPolicy", PHASE_AGENT),
        ("Pod", PHASE_AGENT),
        ("NetworkPolicy", PHASE_JUDGE),
        ("Pod", PHASE_JUDGE),
    ]
    assert {d["metadata"]["namespace"] for d in shown} == {"sandboxes"}
    assert "# phase agent" in result.stdout
    assert "# phase judge" in result.stdout
    assert SECRET not in result.output
    for document in shown:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_cli_explain_docker_is_unchanged(tmp_path: Path, make_repo: RepoFactory) -> None:
    """The default backend still prints the tables, and --json with kubernetes is refused."""
    repo, _ = make_repo({"README.md": "hi\n", "app/api/__init__.py": ""})
    task_file = _write_task(tmp_path)
    env = {"TASKBOX_RUNS_DIR": str(tmp_path / "runs"), "COLUMNS": "250"}
    default = CliRunner().invoke(
        cli, ["policy", "explain", str(task_file), "--repo", str(repo)], env=env
    )
    assert default.exit_code == 0, default.output
    assert "Container settings" in default.output
    assert "apiVersion" not in default.output
    refused = CliRunner().invoke(
        cli,
        [
            "policy",
            "explain",
            str(task_file),
            "--repo",
            str(repo),
            "--json",
            "--backend",
            "kubernetes",
        ],
        env=env,
    )
    assert refused.exit_code != 0
    assert "--backend kubernetes prints YAML" in refused.output


# --------------------------------------------------------------------------- the design page

DOCS = PROJECT_ROOT / "docs" / "kubernetes.md"


def test_the_docs_show_the_namespace_policy_the_code_builds() -> None:
    """docs/kubernetes.md's YAML validates, its deny-all policy is build_namespace_policy's, its table names every spec field."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    documents = [d for b in blocks for d in yaml.safe_load_all(b) if d is not None]
    shown = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert shown == [m.build_namespace_policy(KubernetesTarget())]
    assert {d["kind"] for d in documents} == {"Namespace", "NetworkPolicy", "Role", "ClusterRole"}
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    for field in ContainerSpec.model_fields:
        assert f"| `{field}` |" in text, field


def test_the_docs_name_every_kubernetes_setting() -> None:
    """Every kubernetes_* setting of the controller is described under "Running the backend"."""
    text = DOCS.read_text(encoding="utf-8").split("## Running the backend", 1)[1]
    names = [n for n in Settings.model_fields if n.startswith("kubernetes_")]
    assert names
    for name in names:
        assert f"`TASKBOX_{name.upper()}`" in text, name


def test_the_target_follows_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each TASKBOX_KUBERNETES_* setting lands in the target the manifests are built from."""
    for key, value in {
        "TASKBOX_KUBERNETES_NAMESPACE": "sandboxes",
        "TASKBOX_KUBERNETES_IMAGE": "registry.example/taskbox-sandbox:1",
        "TASKBOX_KUBERNETES_CONTROLLER_NAMESPACE": "taskbox-system",
        "TASKBOX_KUBERNETES_CONTROLLER_SELECTOR": "app=ctl,tier=control",
        "TASKBOX_KUBERNETES_CONTROLLER_CIDRS": "172.18.0.1/32",
        "TASKBOX_KUBERNETES_EXCHANGE_URL": "http://10.1.2.3:9000",
        "TASKBOX_KUBERNETES_EXCHANGE_PORT": "9000",
        "TASKBOX_KUBERNETES_GATEWAY_PORT": "9001",
        "TASKBOX_KUBERNETES_USER_NAMESPACES": "false",
    }.items():
        monkeypatch.setenv(key, value)
    target = target_from_settings(Settings(_env_file=None))  # type: ignore[call-arg]  # pydantic-settings' keyword
    assert (
        target.model_dump()
        == KubernetesTarget(
            namespace="sandboxes",
            image="registry.example/taskbox-sandbox:1",
            controller_namespace="taskbox-system",
            controller_pod_labels={"app": "ctl", "tier": "control"},
            controller_cidrs=("172.18.0.1/32",),
            exchange_url="http://10.1.2.3:9000",
            exchange_port=9000,
            gateway_port=9001,
            user_namespaces=False,
        ).model_dump()
    )


def test_hostile_paths_come_out_escaped_and_exact() -> None:
    """An owned path with escape, bidi and non-ASCII characters is escaped in the YAML and reads back unchanged."""
    hostile = "app/\x1b[2J\u202eyp.py\u200b é"
    policy = unit_policy()
    plan = plan_for(policy).model_copy(
        update={
            "read_write": [
                MountEntry(path=hostile, kind="file", role=Role.OWNS, exists_at_base=True)
            ]
        }
    )
    spec = build_container_spec(
        policy=policy,
        plan=plan,
        staging=StagingPaths.under(Path("/runs/r/stage")),
        image="taskbox-sandbox:latest",
        run_id=RUN_ID,
        command=["python", "-m", "taskbox_runner"],
    )
    documents = m.manifests(
        spec,
        KubernetesTarget(),
        run_id=RUN_ID,
        phase=PHASE_AGENT,
        exchange_token=None,
        runtime_class=None,
    )
    text = m.to_yaml(documents)
    assert text.isascii()
    assert not any(ord(c) < 0x20 and c != "\n" for c in text)
    mounts = {v["mountPath"]: v for v in container(documents[1], MAIN_CONTAINER)["volumeMounts"]}
    assert mounts[f"/work/{hostile}"]["subPath"] == f"work/{hostile}"
    assert list(yaml.safe_load_all(text)) == documents


def test_a_policy_file_may_name_a_runtime_class(tmp_path: Path) -> None:
    """``runtime_class: gvisor`` in a policy file (over ``extends: default``) reaches the Pod."""
    for source in POLICY_FILES:
        (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "sandboxed.yaml").write_text("extends: default\nruntime_class: gvisor\n")
    policy = load_policy_file(tmp_path / "sandboxed.yaml")
    assert policy.runtime_class == "gvisor"
    spec = spec_for(policy, PHASE_AGENT)
    assert pod_for(spec, runtime_class=policy.runtime_class)["spec"]["runtimeClassName"] == "gvisor"
