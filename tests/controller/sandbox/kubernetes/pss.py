"""A Pod Security Standards checker (baseline and restricted, as published for Kubernetes v1.37), for tests.

Written from https://kubernetes.io/docs/concepts/security/pod-security-standards/ : one
function per control, each returning the field paths that break it (empty: the Pod passes).
The wildcard ``containers[*]`` of the standard covers ``containers``, ``initContainers`` and
``ephemeralContainers``. The Linux-only controls (privilege escalation, restricted seccomp,
restricted capabilities) do not apply to a Pod with ``spec.os.name: windows``, as the
standard says. The user-namespace relaxation of runAsNonRoot/runAsUser (behind a feature
gate) is not applied: a Pod here must pass without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Pod = dict[str, Any]
Control = Callable[[Pod], list[str]]

CONTAINER_KINDS = ("containers", "initContainers", "ephemeralContainers")

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _spec(pod: Pod) -> dict[str, Any]:
    return pod.get("spec") or {}


def _pod_sc(pod: Pod) -> dict[str, Any]:
    return _spec(pod).get("securityContext") or {}


def _containers(pod: Pod) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container of every kind, with its field path (``spec.initContainers[0]``)."""
    for kind in CONTAINER_KINDS:
        for index, container in enumerate(_spec(pod).get(kind) or []):
            yield f"spec.{kind}[{index}]", container


def _sc(container: dict[str, Any]) -> dict[str, Any]:
    return container.get("securityContext") or {}


def _linux(pod: Pod) -> bool:
    return ((_spec(pod).get("os") or {}).get("name")) != "windows"


# --------------------------------------------------------------------------- baseline


def host_process(pod: Pod) -> list[str]:
    """HostProcess: windowsOptions.hostProcess undefined or false everywhere."""
    bad = []
    if (_pod_sc(pod).get("windowsOptions") or {}).get("hostProcess") not in (None, False):
        bad.append("spec.securityContext.windowsOptions.hostProcess")
    for path, c in _containers(pod):
        if (_sc(c).get("windowsOptions") or {}).get("hostProcess") not in (None, False):
            bad.append(f"{path}.securityContext.windowsOptions.hostProcess")
    return bad


def host_namespaces(pod: Pod) -> list[str]:
    """Host Namespaces: hostNetwork, hostPID, hostIPC undefined or false."""
    return [
        f"spec.{field}"
        for field in ("hostNetwork", "hostPID", "hostIPC")
        if _spec(pod).get(field) not in (None, False)
    ]


def privileged_containers(pod: Pod) -> list[str]:
    """Privileged Containers: securityContext.privileged undefined or false."""
    return [
        f"{path}.securityContext.privileged"
        for path, c in _containers(pod)
        if _sc(c).get("privileged") not in (None, False)
    ]


def capabilities_baseline(pod: Pod) -> list[str]:
    """Capabilities: nothing added beyond the baseline list."""
    return [
        f"{path}.securityContext.capabilities.add[{index}]"
        for path, c in _containers(pod)
        for index, cap in enumerate((_sc(c).get("capabilities") or {}).get("add") or [])
        if cap not in BASELINE_CAPABILITIES
    ]


def host_path_volumes(pod: Pod) -> list[str]:
    """HostPath Volumes: spec.volumes[*].hostPath undefined."""
    return [
        f"spec.volumes[{index}].hostPath"
        for index, volume in enumerate(_spec(pod).get("volumes") or [])
        if volume.get("hostPath") is not None
    ]


def host_ports(pod: Pod) -> list[str]:
    """Host Ports: containers[*].ports[*].hostPort undefined or 0."""
    bad = []
    for path, c in _containers(pod):
        for index, port in enumerate(c.get("ports") or []):
            if port.get("hostPort") not in (None, 0):
                bad.append(f"{path}.ports[{index}].hostPort")
    return bad


def host_probes(pod: Pod) -> list[str]:
    """Host Probes / Lifecycle Hooks: no ``host`` in probes' or hooks' httpGet and tcpSocket."""
    bad = []
    for path, c in _containers(pod):
        handlers = [
            (probe, c.get(probe)) for probe in ("livenessProbe", "readinessProbe", "startupProbe")
        ]
        lifecycle = c.get("lifecycle") or {}
        handlers += [
            (f"lifecycle.{hook}", lifecycle.get(hook)) for hook in ("postStart", "preStop")
        ]
        bad += [
            f"{path}.{name}.{action}.host"
            for name, handler in handlers
            for action in ("httpGet", "tcpSocket")
            if ((handler or {}).get(action) or {}).get("host") not in (None, "")
        ]
    return bad


def apparmor(pod: Pod) -> list[str]:
    """AppArmor: profile type undefined, RuntimeDefault or Localhost; annotations likewise."""
    bad = []
    if (_pod_sc(pod).get("appArmorProfile") or {}).get("type") not in (None, *APPARMOR_ALLOWED):
        bad.append("spec.securityContext.appArmorProfile.type")
    for path, c in _containers(pod):
        if (_sc(c).get("appArmorProfile") or {}).get("type") not in (None, *APPARMOR_ALLOWED):
            bad.append(f"{path}.securityContext.appArmorProfile.type")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            bad.append(f"metadata.annotations[{key!r}]")
    return bad


def selinux(pod: Pod) -> list[str]:
    """SELinux: type empty or one of the container types; user and role never set."""
    contexts = [("spec.securityContext", _pod_sc(pod))]
    contexts += [(f"{path}.securityContext", _sc(c)) for path, c in _containers(pod)]
    bad = []
    for path, sc in contexts:
        options = sc.get("seLinuxOptions") or {}
        if (options.get("type") or "") not in SELINUX_TYPES:
            bad.append(f"{path}.seLinuxOptions.type")
        bad += [f"{path}.seLinuxOptions.{f}" for f in ("user", "role") if options.get(f)]
    return bad


def proc_mount(pod: Pod) -> list[str]:
    """/proc Mount Type: procMount undefined or Default."""
    return [
        f"{path}.securityContext.procMount"
        for path, c in _containers(pod)
        if _sc(c).get("procMount") not in (None, "Default")
    ]


def seccomp_baseline(pod: Pod) -> list[str]:
    """Seccomp (baseline): the profile is never explicitly Unconfined."""
    bad = []
    if (_pod_sc(pod).get("seccompProfile") or {}).get("type") not in (None, *SECCOMP_ALLOWED):
        bad.append("spec.securityContext.seccompProfile.type")
    for path, c in _containers(pod):
        if (_sc(c).get("seccompProfile") or {}).get("type") not in (None, *SECCOMP_ALLOWED):
            bad.append(f"{path}.securityContext.seccompProfile.type")
    return bad


def sysctls(pod: Pod) -> list[str]:
    """Sysctls: only the safe, namespaced set."""
    return [
        f"spec.securityContext.sysctls[{index}].name"
        for index, sysctl in enumerate(_pod_sc(pod).get("sysctls") or [])
        if sysctl.get("name") not in SAFE_SYSCTLS
    ]


# --------------------------------------------------------------------------- restricted


def volume_types(pod: Pod) -> list[str]:
    """Volume Types: every volume sets one of the allowed sources, and no other."""
    bad = []
    for index, volume in enumerate(_spec(pod).get("volumes") or []):
        sources = {k for k, v in volume.items() if k != "name" and v is not None}
        if not sources or not sources <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"spec.volumes[{index}]")
    return bad


def privilege_escalation(pod: Pod) -> list[str]:
    """Privilege Escalation: allowPrivilegeEscalation explicitly false (Linux)."""
    if not _linux(pod):
        return []
    return [
        f"{path}.securityContext.allowPrivilegeEscalation"
        for path, c in _containers(pod)
        if _sc(c).get("allowPrivilegeEscalation") is not False
    ]


def running_as_non_root(pod: Pod) -> list[str]:
    """Running as Non-root: runAsNonRoot true on the Pod (containers may then leave it unset) or on every container."""
    pod_value = _pod_sc(pod).get("runAsNonRoot")
    bad = ["spec.securityContext.runAsNonRoot"] if pod_value is False else []
    for path, c in _containers(pod):
        value = _sc(c).get("runAsNonRoot")
        if value is False or (value is None and pod_value is not True):
            bad.append(f"{path}.securityContext.runAsNonRoot")
    return bad


def running_as_non_root_user(pod: Pod) -> list[str]:
    """Running as Non-root user: runAsUser never 0."""
    bad = ["spec.securityContext.runAsUser"] if _pod_sc(pod).get("runAsUser") == 0 else []
    bad += [
        f"{path}.securityContext.runAsUser"
        for path, c in _containers(pod)
        if _sc(c).get("runAsUser") == 0
    ]
    return bad


def seccomp_restricted(pod: Pod) -> list[str]:
    """Seccomp (restricted): RuntimeDefault or Localhost on the Pod, or on every container; never absent (Linux)."""
    if not _linux(pod):
        return []
    pod_type = (_pod_sc(pod).get("seccompProfile") or {}).get("type")
    bad = []
    if pod_type is not None and pod_type not in SECCOMP_ALLOWED:
        bad.append("spec.securityContext.seccompProfile.type")
    for path, c in _containers(pod):
        value = (_sc(c).get("seccompProfile") or {}).get("type")
        if (value is not None and value not in SECCOMP_ALLOWED) or (
            value is None and pod_type not in SECCOMP_ALLOWED
        ):
            bad.append(f"{path}.securityContext.seccompProfile.type")
    return bad


def capabilities_restricted(pod: Pod) -> list[str]:
    """Capabilities (restricted): drop includes ALL; add at most NET_BIND_SERVICE (Linux)."""
    if not _linux(pod):
        return []
    bad = []
    for path, c in _containers(pod):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{path}.securityContext.capabilities.drop")
        for index, cap in enumerate(caps.get("add") or []):
            if cap != "NET_BIND_SERVICE":
                bad.append(f"{path}.securityContext.capabilities.add[{index}]")
    return bad


BASELINE: dict[str, Control] = {
    "HostProcess": host_process,
    "Host Namespaces": host_namespaces,
    "Privileged Containers": privileged_containers,
    "Capabilities (baseline)": capabilities_baseline,
    "HostPath Volumes": host_path_volumes,
    "Host Ports": host_ports,
    "Host Probes / Lifecycle Hooks": host_probes,
    "AppArmor": apparmor,
    "SELinux": selinux,
    "/proc Mount Type": proc_mount,
    "Seccomp (baseline)": seccomp_baseline,
    "Sysctls": sysctls,
}
RESTRICTED: dict[str, Control] = {
    "Volume Types": volume_types,
    "Privilege Escalation": privilege_escalation,
    "Running as Non-root": running_as_non_root,
    "Running as Non-root user": running_as_non_root_user,
    "Seccomp (restricted)": seccomp_restricted,
    "Capabilities (restricted)": capabilities_restricted,
}


def violations(pod: Pod, level: str = "restricted") -> dict[str, list[str]]:
    """The controls ``pod`` breaks at ``level`` (``baseline`` or ``restricted``), with the offending paths."""
    if level not in ("baseline", "restricted"):
        raise ValueError(f"no Pod Security level {level!r}")
    controls = BASELINE | (RESTRICTED if level == "restricted" else {})
    found = {name: control(pod) for name, control in controls.items()}
    return {name: paths for name, paths in found.items() if paths}
