"""The Docker engine's own host checks: what ``docker info`` and ``docker version`` answer.

Engine and runc versions (with the distribution's changelog deciding for backported
builds), seccomp, user namespaces, LSMs, cgroup controllers, swarm, the engine's address
and its own warnings. Pure functions of the engine's answers, unit-tested with fakes;
``controller.sandbox.engines.engine_host_checks`` runs them for the Docker backend.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.hostcheck import Check, Level, Version, dotted, parse_version

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


#: CVE-2024-21626 ("Leaky Vessels": a leaked fd gives the host file system), fixed in runc 1.1.12.
RUNC_LEAKY_VESSELS_FIXED: Version = (1, 1, 12)


RUNC_LEAKY_VESSELS_CVE = "CVE-2024-21626"


#: Masked-path and procfs write-redirect races (CVE-2025-31133, -52565, -52881), fixed in runc 1.2.8.
RUNC_PROCFS_RACES_FIXED: Version = (1, 2, 8)


RUNC_PROCFS_RACES_CVES = ("CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881")


#: The engine release line that bundles the Leaky Vessels fixes (and fixes CVE-2024-24557).
ENGINE_FIXED: Version = (25, 0, 2)


#: The Debian changelog of the host's runc package (Ubuntu uses the same path).
RUNC_CHANGELOG = Path("/usr/share/doc/runc/changelog.Debian.gz")


DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"


_DISTRO_BUILD = re.compile(r"(\+ds|dfsg|deb\d|ubuntu|\.el\d|\.fc\d|~|\+b\d|-\d+[a-z])")


def runc_build(info: Mapping[str, Any], version: Mapping[str, Any] | None) -> str | None:
    """The runc build the engine runs: ``docker version``'s component, else ``docker info``'s commit."""
    for component in (version or {}).get("Components") or []:
        if component.get("Name") == "runc":
            details = component.get("Details") or {}
            return str(details.get("GitCommit") or component.get("Version") or "") or None
    commit = (info.get("RuncCommit") or {}).get("ID")
    return str(commit) if commit and commit != "N/A" else None


def check_engine_version(server_version: str | None) -> Check:
    """Engines before 25.0.2 miss the Leaky Vessels-era engine fixes and recursively read-only binds."""
    parsed = parse_version(server_version)
    if parsed is None:
        return Check(
            name="engine.version",
            level=Level.WARN,
            summary=f"cannot read the engine version ({server_version!r})",
            remedy="run a supported Docker Engine (25.0.2 or newer)",
        )
    if parsed < ENGINE_FIXED:
        return Check(
            name="engine.version",
            level=Level.WARN,
            summary=f"Docker Engine {server_version} is older than {dotted(ENGINE_FIXED)}",
            detail=(
                "Engines before 25.0.2 lack the engine-side fixes of January 2024 (CVE-2024-24557 "
                "build-cache poisoning) and recursively read-only bind mounts; 20.10 and 23.0 are "
                "out of support. The runc it drives is checked separately (engine.runc)."
            ),
            remedy="upgrade to a supported Docker Engine (25.0.2 or newer; 27.x or later preferred)",
        )
    return Check(name="engine.version", level=Level.OK, summary=f"Docker Engine {server_version}")


def _changelog_fixes(changelog: str | None, build: str, cves: Sequence[str]) -> bool | None:
    """Whether a distribution changelog for exactly ``build`` lists every CVE; None when it cannot say."""
    if not changelog:
        return None
    first = changelog.split("\n", 1)[0]
    match = re.match(r"runc \(([^)]+)\)", first)
    if match is None or match.group(1) != build:
        return None  # the changelog is of another build than the engine's: it proves nothing
    return all(cve in changelog for cve in cves)


def check_runc(build: str | None, changelog: str | None = None) -> Check:
    """runc against the fixed versions of its known container escapes (see the module docstring)."""
    parsed = parse_version(build)
    if build is None or parsed is None:
        return Check(
            name="engine.runc",
            level=Level.WARN,
            summary=f"cannot tell which runc the engine runs ({build!r})",
            remedy=f"make sure runc is {dotted(RUNC_PROCFS_RACES_FIXED)} or newer",
        )
    if parsed >= RUNC_PROCFS_RACES_FIXED:
        return Check(name="engine.runc", level=Level.OK, summary=f"runc {build}")
    distro = bool(_DISTRO_BUILD.search(build)) and not build.startswith("v")
    leaky_fixed: bool | None = parsed >= RUNC_LEAKY_VESSELS_FIXED or None
    races_fixed: bool | None = None
    source = "its version number"
    if distro:
        from_changelog = _changelog_fixes(changelog, build, [RUNC_LEAKY_VESSELS_CVE])
        if leaky_fixed is None and from_changelog is not None:
            leaky_fixed, source = from_changelog, "the package's Debian changelog"
        races_fixed = _changelog_fixes(changelog, build, RUNC_PROCFS_RACES_CVES)
    elif leaky_fixed is None:
        leaky_fixed = False
    if leaky_fixed is False:
        return Check(
            name="engine.runc",
            level=Level.REFUSE,
            summary=f"runc {build} is open to {RUNC_LEAKY_VESSELS_CVE} (container escape), by {source}",
            detail="A process in the container can reach the host file system through a leaked file descriptor.",
            remedy=f"upgrade runc to {dotted(RUNC_PROCFS_RACES_FIXED)} or newer (at least {dotted(RUNC_LEAKY_VESSELS_FIXED)})",
        )
    if leaky_fixed is None:
        return Check(
            name="engine.runc",
            level=Level.WARN,
            summary=f"runc {build} is a distribution build below {dotted(RUNC_LEAKY_VESSELS_FIXED)}: "
            f"whether the {RUNC_LEAKY_VESSELS_CVE} fix is backported is unknown",
            detail="No changelog of this exact build was readable (remote engine, or not a Debian package).",
            remedy=f"check your distribution's advisory for {RUNC_LEAKY_VESSELS_CVE}, or install runc {dotted(RUNC_PROCFS_RACES_FIXED)}+",
        )
    if races_fixed:
        return Check(
            name="engine.runc",
            level=Level.OK,
            summary=f"runc {build}: every known escape fix is backported (per {source})",
        )
    return Check(
        name="engine.runc",
        level=Level.WARN,
        summary=f"runc {build} has the {RUNC_LEAKY_VESSELS_CVE} fix (per {source}) but not the "
        f"masked-path races fixed in {dotted(RUNC_PROCFS_RACES_FIXED)}",
        detail=(
            f"{', '.join(RUNC_PROCFS_RACES_CVES)}: a container can redirect runc's writes to /proc "
            "while it sets up masked paths. Exploiting them needs a hostile image or mount setup; "
            "Taskbox runs only its own image with a fixed mount list, which narrows but does not close them."
        ),
        remedy=f"upgrade runc to {dotted(RUNC_PROCFS_RACES_FIXED)} or newer",
    )


def _security_options(info: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``SecurityOptions`` as name -> its other key=value pairs."""
    options: dict[str, dict[str, str]] = {}
    for raw in info.get("SecurityOptions") or []:
        pairs = dict(part.partition("=")[::2] for part in str(raw).split(","))
        name = pairs.pop("name", "")
        if name:
            options[name] = pairs
    return options


def check_seccomp(info: Mapping[str, Any]) -> Check:
    """Seccomp must be on with a real profile: it is what blocks keyctl, bpf, unshare and friends."""
    seccomp = _security_options(info).get("seccomp")
    if seccomp is None:
        return Check(
            name="engine.seccomp",
            level=Level.REFUSE,
            summary="seccomp is off: sandboxes would run without a system-call filter",
            remedy="use an engine built with seccomp and do not set `seccomp-profile: unconfined`",
        )
    profile = seccomp.get("profile", "default")
    if profile == "unconfined":
        return Check(
            name="engine.seccomp",
            level=Level.REFUSE,
            summary="the engine's default seccomp profile is `unconfined`",
            remedy='remove `"seccomp-profile": "unconfined"` from /etc/docker/daemon.json',
        )
    return Check(name="engine.seccomp", level=Level.OK, summary=f"seccomp on (profile {profile})")


def check_user_namespaces(info: Mapping[str, Any]) -> Check:
    """Report user namespaces: remapping (or a rootless engine) turns an escape into an unprivileged uid."""
    options = _security_options(info)
    if "rootless" in options:
        return Check(
            name="engine.userns",
            level=Level.OK,
            summary="rootless engine: root in the engine is not host root",
        )
    if "userns" in options:
        return Check(name="engine.userns", level=Level.OK, summary="userns-remap is on")
    return Check(
        name="engine.userns",
        level=Level.WARN,
        summary="user namespaces are off: the sandbox uid (10001) is the same uid on the host",
        detail="A process that escapes the container is host uid 10001 (not root), with whatever that uid may touch.",
        remedy='set `"userns-remap": "default"` in /etc/docker/daemon.json, or run a rootless engine (see SECURITY.md)',
    )


def check_lsm(info: Mapping[str, Any]) -> Check:
    """AppArmor or SELinux is a second wall behind seccomp and capabilities; its absence is a warning."""
    options = _security_options(info)
    present = [name for name in ("apparmor", "selinux") if name in options]
    if present:
        return Check(
            name="engine.lsm", level=Level.OK, summary=f"{' and '.join(present)} confine containers"
        )
    return Check(
        name="engine.lsm",
        level=Level.WARN,
        summary="neither AppArmor nor SELinux confines containers on this host",
        remedy="boot a kernel with AppArmor (docker-default profile) or SELinux (container-selinux)",
    )


def check_cgroups(info: Mapping[str, Any]) -> list[Check]:
    """Memory, pids and CPU controllers must exist, or the policy's limits silently do nothing."""
    checks = []
    for key, name, what in (
        ("MemoryLimit", "cgroup.memory", "memory limits"),
        ("PidsLimit", "cgroup.pids", "pids limits (fork bombs)"),
        ("CpuCfsQuota", "cgroup.cpu", "CPU quotas"),
    ):
        if info.get(key):
            checks.append(Check(name=name, level=Level.OK, summary=f"{what} enforced"))
        else:
            checks.append(
                Check(
                    name=name,
                    level=Level.REFUSE,
                    summary=f"the engine cannot enforce {what}",
                    remedy="enable the controller (cgroup v2 with memory, pids and cpu delegated, or the v1 hierarchy)",
                )
            )
    if info.get("SwapLimit"):
        checks.append(
            Check(name="cgroup.swap", level=Level.OK, summary="swap is limited with memory")
        )
    else:
        checks.append(
            Check(
                name="cgroup.swap",
                level=Level.WARN,
                summary="swap accounting is off: a sandbox may swap beyond its memory limit",
                remedy="boot with swapaccount=1 (cgroup v1) or use cgroup v2",
            )
        )
    return checks


def check_swarm(info: Mapping[str, Any]) -> Check:
    """CIS 5.1: an engine that is also a swarm node has more ways in than Taskbox needs."""
    state = (info.get("Swarm") or {}).get("LocalNodeState", "inactive")
    if state in ("", "inactive"):
        return Check(name="engine.swarm", level=Level.OK, summary="swarm mode is off")
    return Check(
        name="engine.swarm",
        level=Level.WARN,
        summary=f"the engine is a swarm node ({state})",
        remedy="run sandboxes on an engine that is not part of a swarm",
    )


def check_engine_address(docker_host: str | None) -> Check:
    """A TCP engine address without TLS lets anyone on the network run containers (host root)."""
    address = docker_host or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_ENGINE_SOCKET}"
    if address.startswith("tcp://") and os.environ.get("DOCKER_TLS_VERIFY") != "1":
        return Check(
            name="engine.address",
            level=Level.WARN,
            summary=f"the engine is reached over plain TCP ({address}) without DOCKER_TLS_VERIFY",
            remedy="use the local Unix socket, ssh://, or TCP with mutual TLS",
        )
    return Check(name="engine.address", level=Level.OK, summary=f"engine at {address}")


def check_engine_warnings(info: Mapping[str, Any]) -> Check | None:
    """The engine's own warnings (no swap limit, bridge netfilter, ...), passed on."""
    warnings = [str(w) for w in info.get("Warnings") or []]
    if not warnings:
        return None
    return Check(
        name="engine.warnings",
        level=Level.WARN,
        summary=f"the engine reports {len(warnings)} warning(s)",
        detail="; ".join(warnings),
    )


def check_runtimes(info: Mapping[str, Any]) -> Check:
    """Which runtimes exist: a user-space kernel (runsc) or microVM (kata) is a stronger wall than runc."""
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    default = info.get("DefaultRuntime", "runc")
    strong = [r for r in runtimes if r.startswith(("runsc", "kata"))]
    summary = f"default runtime {default}; available: {', '.join(runtimes) or 'none listed'}"
    if default.startswith(("runsc", "kata")):
        return Check(name="engine.runtime", level=Level.OK, summary=summary)
    return Check(
        name="engine.runtime",
        level=Level.OK,
        summary=summary,
        detail=(
            "runc shares the host kernel: a kernel bug is an escape. "
            + (f"{', '.join(strong)} is installed: make it the default runtime." if strong else "")
        ).strip(),
        remedy="" if strong else "see SECURITY.md for gVisor (runsc) or Kata Containers",
    )


def engine_checks(
    info: Mapping[str, Any],
    version: Mapping[str, Any] | None = None,
    *,
    runc_changelog: str | None = None,
    docker_host: str | None = None,
) -> list[Check]:
    """Every check that ``docker info`` and ``docker version`` answer (pure: unit-tested with fakes)."""
    checks = [
        check_engine_address(docker_host),
        check_engine_version(str(info.get("ServerVersion") or "") or None),
        check_runc(runc_build(info, version), runc_changelog),
        check_seccomp(info),
        check_user_namespaces(info),
        check_lsm(info),
        *check_cgroups(info),
        check_swarm(info),
        check_runtimes(info),
    ]
    warnings = check_engine_warnings(info)
    return [*checks, warnings] if warnings is not None else checks


def engine_socket_path(docker_host: str | None) -> Path | None:
    """The engine's Unix socket on this host, if it is reached through one."""
    address = docker_host or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_ENGINE_SOCKET}"
    if not address.startswith("unix://"):
        return None
    return Path(os.path.realpath(address.removeprefix("unix://")))


def read_changelog(*, engine_is_local: bool) -> str | None:
    if not engine_is_local or not RUNC_CHANGELOG.is_file():
        return None
    try:
        with gzip.open(RUNC_CHANGELOG, "rt", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None
