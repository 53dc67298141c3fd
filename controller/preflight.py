"""Start-up checks of the host: refuse, or warn loudly, when the engine cannot hold a sandbox safely.

Three sources: ``docker info``/``docker version`` (engine and runc versions, seccomp,
user namespaces, LSMs, cgroup controllers), the container settings every sandbox
gets (no engine socket among the mounts), and one tiny sandbox built exactly as a
run's, which reports from inside what the kernel really enforced. Before those, the
backend's own declaration: a backend that cannot enforce every mandatory container
setting is refused (and no probe sandbox is started on it). Each check is a
:class:`Check` with a level; ``refuse`` means the controller must not run tasks.

runc builds of distributions (``1.1.5+ds1-1+deb12u1``) keep an old upstream number
while carrying backported fixes, so a version number alone cannot tell. When the
engine is local and the runc package's Debian changelog is present and names the
build the engine runs, the changelog decides (a fix listed there counts as fixed,
its absence as unfixed). Otherwise a distribution build below the fixed upstream
version is a warning, never a refusal: we cannot know, and say so.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from controller.errors import SandboxError, TaskboxError
from controller.policy.loader import load_policy
from controller.policy.planner import MountPlan
from controller.sandbox.backend import MANDATORY_SETTINGS
from controller.sandbox.engines import open_engine
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import ContainerSpec, StagingPaths, build_container_spec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from controller.policy.schema import Policy
    from controller.sandbox.backend import SandboxBackend
    from controller.sandbox.engines import Engine
    from controller.settings import Settings

log = logging.getLogger(__name__)

Version = tuple[int, int, int]

#: CVE-2024-21626 ("Leaky Vessels": a leaked fd gives the host file system), fixed in runc 1.1.12.
RUNC_LEAKY_VESSELS_FIXED: Version = (1, 1, 12)
RUNC_LEAKY_VESSELS_CVE = "CVE-2024-21626"
#: Masked-path and procfs write-redirect races (CVE-2025-31133, -52565, -52881), fixed in runc 1.2.8.
RUNC_PROCFS_RACES_FIXED: Version = (1, 2, 8)
RUNC_PROCFS_RACES_CVES = ("CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881")
#: The engine release line that bundles the Leaky Vessels fixes (and fixes CVE-2024-24557).
ENGINE_FIXED: Version = (25, 0, 2)
#: Per release line of git, the first release with the May 2024 fixes (CVE-2024-32002, -32004,
#: -32020, -32021, -32465: local clones and hooks run during clone).
GIT_FIXED_LINES: dict[tuple[int, int], int] = {
    (2, 39): 4,
    (2, 40): 2,
    (2, 41): 1,
    (2, 42): 2,
    (2, 43): 4,
    (2, 44): 1,
    (2, 45): 1,
}
GIT_FIRST_FIXED_LINE = (2, 39)
#: The Debian changelog of the host's runc package (Ubuntu uses the same path).
RUNC_CHANGELOG = Path("/usr/share/doc/runc/changelog.Debian.gz")
DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"
PROBE_TIMEOUT_SECONDS = 60
MIB = 1024 * 1024

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_DISTRO_BUILD = re.compile(r"(\+ds|dfsg|deb\d|ubuntu|\.el\d|\.fc\d|~|\+b\d|-\d+[a-z])")


class Level(StrEnum):
    """How bad a finding is; ``refuse`` stops the controller."""

    OK = "ok"
    WARN = "warn"
    REFUSE = "refuse"


_RANK = {Level.OK: 0, Level.WARN: 1, Level.REFUSE: 2}


class Check(BaseModel):
    """One finding: what was checked, how it came out, and what to do about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    level: Level
    summary: str
    detail: str = ""
    remedy: str = ""


class PreflightReport(BaseModel):
    """Every check, the worst level, and the facts a security team wants on one screen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checks: list[Check]
    engine_version: str | None = None
    runc_version: str | None = None
    cgroup_version: str | None = None
    default_runtime: str | None = None

    @property
    def level(self) -> Level:
        """The worst level of any check (``ok`` when there are none)."""
        return max((c.level for c in self.checks), key=_RANK.__getitem__, default=Level.OK)

    @property
    def refused(self) -> bool:
        """Whether the controller must not run tasks on this host."""
        return self.level is Level.REFUSE

    def dump(self) -> dict[str, Any]:
        """The JSON form ``taskbox preflight --json`` prints."""
        return {"level": self.level.value, **self.model_dump(mode="json")}


def parse_version(raw: str | None) -> Version | None:
    """The first ``X.Y[.Z]`` in ``raw`` (a leading ``v`` and build suffixes are ignored)."""
    if not raw:
        return None
    match = _VERSION.search(raw)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def _dotted(version: Version) -> str:
    return ".".join(str(part) for part in version)


# --------------------------------------------------------------------------- engine facts


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
            summary=f"Docker Engine {server_version} is older than {_dotted(ENGINE_FIXED)}",
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
            remedy=f"make sure runc is {_dotted(RUNC_PROCFS_RACES_FIXED)} or newer",
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
            remedy=f"upgrade runc to {_dotted(RUNC_PROCFS_RACES_FIXED)} or newer (at least {_dotted(RUNC_LEAKY_VESSELS_FIXED)})",
        )
    if leaky_fixed is None:
        return Check(
            name="engine.runc",
            level=Level.WARN,
            summary=f"runc {build} is a distribution build below {_dotted(RUNC_LEAKY_VESSELS_FIXED)}: "
            f"whether the {RUNC_LEAKY_VESSELS_CVE} fix is backported is unknown",
            detail="No changelog of this exact build was readable (remote engine, or not a Debian package).",
            remedy=f"check your distribution's advisory for {RUNC_LEAKY_VESSELS_CVE}, or install runc {_dotted(RUNC_PROCFS_RACES_FIXED)}+",
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
        f"masked-path races fixed in {_dotted(RUNC_PROCFS_RACES_FIXED)}",
        detail=(
            f"{', '.join(RUNC_PROCFS_RACES_CVES)}: a container can redirect runc's writes to /proc "
            "while it sets up masked paths. Exploiting them needs a hostile image or mount setup; "
            "Taskbox runs only its own image with a fixed mount list, which narrows but does not close them."
        ),
        remedy=f"upgrade runc to {_dotted(RUNC_PROCFS_RACES_FIXED)} or newer",
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


# --------------------------------------------------------------------------- the sandbox's settings


def check_backend_settings(backend: object) -> Check:
    """The backend must declare every mandatory container setting, or its sandboxes are weaker than the policy says.

    A backend that cannot enforce one (no pids limit, a network it cannot take away)
    is refused here rather than run a sandbox that silently lacks it.
    """
    name = type(backend).__name__
    declared = getattr(backend, "enforces", None)
    if not isinstance(declared, frozenset | set):
        return Check(
            name="backend.settings",
            level=Level.REFUSE,
            summary=f"the sandbox backend {name} does not declare which container settings it enforces",
            remedy="a backend lists the ContainerSpec settings it applies in `enforces` (see controller/sandbox/backend.py)",
        )
    missing = sorted(MANDATORY_SETTINGS - frozenset(declared))
    if missing:
        return Check(
            name="backend.settings",
            level=Level.REFUSE,
            summary=f"the sandbox backend {name} cannot enforce: {', '.join(missing)}",
            detail=(
                "Every sandbox must get these settings (uid, mounts, no network, no capabilities, "
                "no-new-privileges, limits, deadline, labels); a backend without one would run a "
                "weaker sandbox than the policy says."
            ),
            remedy="use a backend that enforces every mandatory setting (TASKBOX_SANDBOX_BACKEND=docker)",
        )
    return Check(
        name="backend.settings",
        level=Level.OK,
        summary=f"the sandbox backend {name} enforces all {len(MANDATORY_SETTINGS)} mandatory settings",
    )


def engine_socket_path(docker_host: str | None) -> Path | None:
    """The engine's Unix socket on this host, if it is reached through one."""
    address = docker_host or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_ENGINE_SOCKET}"
    if not address.startswith("unix://"):
        return None
    return Path(os.path.realpath(address.removeprefix("unix://")))


def check_spec_mounts(spec: ContainerSpec, socket_path: Path | None) -> Check:
    """No mount of a sandbox may be, or contain, the engine's socket (that is host root)."""
    if socket_path is None:
        return Check(
            name="sandbox.mounts", level=Level.OK, summary="the engine is not on a local socket"
        )
    for mount in spec.mounts:
        source = Path(os.path.realpath(mount.source))
        if socket_path == source or socket_path.is_relative_to(source):
            return Check(
                name="sandbox.mounts",
                level=Level.REFUSE,
                summary=f"the sandbox mount {mount.target} exposes the engine socket {socket_path}",
                remedy="move TASKBOX_RUNS_DIR away from the folder holding the engine socket",
            )
    return Check(
        name="sandbox.mounts",
        level=Level.OK,
        summary=f"no sandbox mount reaches the engine socket {socket_path}",
    )


def check_runs_dir(runs_dir: Path) -> Check:
    """Staging lives here; if other host users may write into it they can race the controller."""
    try:
        mode = runs_dir.stat().st_mode
    except FileNotFoundError:
        return Check(name="host.runs_dir", level=Level.OK, summary=f"{runs_dir} will be created")
    if mode & 0o002 and not mode & 0o1000:
        return Check(
            name="host.runs_dir",
            level=Level.WARN,
            summary=f"{runs_dir} is world-writable: other host users could race staging",
            remedy=f"chmod 0750 {runs_dir}",
        )
    return Check(name="host.runs_dir", level=Level.OK, summary=f"{runs_dir} is not world-writable")


def check_git(raw: str | None) -> Check:
    """Host git runs on sandbox output (bundles only): it should carry the 2024 clone/hook fixes."""
    parsed = parse_version(raw)
    if parsed is None:
        return Check(
            name="host.git", level=Level.WARN, summary=f"cannot read the git version ({raw!r})"
        )
    line = parsed[:2]
    fixed_patch = GIT_FIXED_LINES.get(line)
    if line < GIT_FIRST_FIXED_LINE or (fixed_patch is not None and parsed[2] < fixed_patch):
        return Check(
            name="host.git",
            level=Level.WARN,
            summary=f"git {_dotted(parsed)} predates the May 2024 fixes (CVE-2024-32002, -32004, -32020, -32021, -32465)",
            detail="Ingestion only fetches a bundle into a fresh bare repository and never clones or checks out; this is defence in depth.",
            remedy="upgrade git to a fixed release of its line",
        )
    return Check(
        name="host.git",
        level=Level.OK,
        summary=f"git {_dotted(parsed)}",
        detail="Ingestion never clones, checks out or recurses into submodules (CVE-2025-48384 needs all three).",
    )


# --------------------------------------------------------------------------- from inside a sandbox

#: Runs inside the probe sandbox (its image's Python, standard library only) and prints one JSON line.
PROBE_CODE = r"""
import json, os, stat
from pathlib import Path

def read(*paths):
    for p in paths:
        try:
            return Path(p).read_text().strip()
        except OSError:
            continue
    return None

status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
sockets = []
for top in ("/", "/run", "/var/run", "/tmp", "/work", "/out", "/taskbox"):
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev")]
        for name in files:
            try:
                if stat.S_ISSOCK(os.lstat(os.path.join(root, name)).st_mode):
                    sockets.append(os.path.join(root, name))
            except OSError:
                pass
print(json.dumps({
    "uid": os.getuid(),
    "seccomp": status.get("Seccomp", "").strip(),
    "no_new_privs": status.get("NoNewPrivs", "").strip(),
    "cap_eff": status.get("CapEff", "").strip(),
    "pids_max": read("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "memory_max": read("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
    "cpu_quota": read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    "cpu_period": read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    "cpu_max": read("/sys/fs/cgroup/cpu.max"),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "sockets": sorted(set(sockets)),
    "docker_host": os.environ.get("DOCKER_HOST"),
}))
"""


def _cpu_cores(report: Mapping[str, Any]) -> float | None:
    """The CPU quota in cores, from cgroup v1 or v2 files."""
    if report.get("cpu_max"):
        limit, _, period = str(report["cpu_max"]).partition(" ")
        return None if limit == "max" else int(limit) / int(period)
    if report.get("cpu_quota") and report.get("cpu_period"):
        quota_us = int(report["cpu_quota"])
        return None if quota_us < 0 else quota_us / int(report["cpu_period"])
    return None


def sandbox_checks(report: Mapping[str, Any], policy: Policy) -> list[Check]:
    """What the probe saw inside, against what the policy asks (pure: unit-tested with fakes)."""
    limits = policy.limits

    def verdict(name: str, good: bool, summary: str, seen: object) -> Check:
        if good:
            return Check(name=name, level=Level.OK, summary=summary)
        return Check(
            name=name,
            level=Level.REFUSE,
            summary=f"inside a sandbox: NOT {summary} (saw {seen!r})",
            remedy="the engine or kernel does not enforce the sandbox settings; see SECURITY.md",
        )

    cap_eff = str(report.get("cap_eff") or "")
    cores = _cpu_cores(report)
    sockets = list(report.get("sockets") or [])
    return [
        verdict(
            "sandbox.user",
            report.get("uid") == policy.uid != 0,
            f"running as uid {policy.uid}",
            report.get("uid"),
        ),
        verdict(
            "sandbox.seccomp",
            report.get("seccomp") == "2",
            "seccomp filtering (Seccomp: 2)",
            report.get("seccomp"),
        ),
        verdict(
            "sandbox.no_new_privs",
            report.get("no_new_privs") == "1",
            "no-new-privileges set",
            report.get("no_new_privs"),
        ),
        verdict(
            "sandbox.capabilities",
            bool(cap_eff) and int(cap_eff, 16) == 0,
            "no effective capability",
            cap_eff,
        ),
        verdict(
            "sandbox.pids",
            report.get("pids_max") == str(limits.pids),
            f"pids limited to {limits.pids}",
            report.get("pids_max"),
        ),
        verdict(
            "sandbox.memory",
            report.get("memory_max") == str(limits.memory_mb * MIB),
            f"memory limited to {limits.memory_mb} MiB",
            report.get("memory_max"),
        ),
        verdict(
            "sandbox.cpu",
            cores is not None and abs(cores - limits.cpus) < 0.01,  # noqa: PLR2004 - rounding of the quota
            f"CPU limited to {limits.cpus} core(s)",
            cores,
        ),
        verdict(
            "sandbox.network",
            report.get("interfaces") == ["lo"],
            "loopback only",
            report.get("interfaces"),
        ),
        verdict(
            "sandbox.engine_socket",
            not sockets and report.get("docker_host") is None,
            "no engine socket or DOCKER_HOST inside",
            sockets or report.get("docker_host"),
        ),
    ]


def probe_spec(policy: Policy, staging: StagingPaths, run_id: str) -> ContainerSpec:
    """The container settings of a run of ``policy`` with nothing planned, running :data:`PROBE_CODE`."""
    plan = MountPlan(
        task_key="preflight",
        base_commit="0" * 40,
        policy=policy.name,
        policy_digest=policy.digest(),
    )
    return build_container_spec(
        policy=policy,
        plan=plan,
        staging=staging,
        image=policy.image,
        run_id=run_id,
        command=["python", "-c", PROBE_CODE],
        controller_id="preflight",
    )


@dataclass
class _ProbeOutcome:
    report: dict[str, Any] | None = None
    problem: str = ""
    checks: list[Check] = field(default_factory=list)


def run_sandbox_probe(
    backend: SandboxBackend, policy: Policy, runs_dir: Path, socket_path: Path | None
) -> list[Check]:
    """Start one sandbox exactly as a run's (no task files) and check what it reports from inside."""
    run_id = f"preflight-{secrets.token_hex(4)}"
    root = runs_dir / run_id
    staging = StagingPaths.under(root / "stage")
    outcome = _ProbeOutcome()
    try:
        for folder in (staging.work, staging.out, staging.taskbox, staging.gateway_socket().parent):
            folder.mkdir(parents=True, mode=0o755)
        spec = probe_spec(policy, staging, run_id).model_copy(
            update={"wall_clock_seconds": PROBE_TIMEOUT_SECONDS}
        )
        outcome.checks.append(check_spec_mounts(spec, socket_path))
        run = run_sandbox(backend, spec)
        lines = [ln for ln in run.outcome.log_tail.splitlines() if ln.startswith("{")]
        if run.outcome.exit_code == 0 and lines:
            outcome.report = json.loads(lines[-1])
        else:
            outcome.problem = (
                f"the probe sandbox {run.outcome.describe()}: {run.outcome.log_tail[-300:]}"
            )
    except (TaskboxError, OSError, ValueError) as exc:
        outcome.problem = f"the probe sandbox could not run: {exc}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if outcome.report is None:
        return [
            *outcome.checks,
            Check(
                name="sandbox.probe",
                level=Level.WARN,
                summary="could not look inside a sandbox; the settings were not verified by the kernel",
                detail=outcome.problem,
                remedy="build the image (`taskbox image build`) and run `taskbox preflight` again",
            ),
        ]
    return [*outcome.checks, *sandbox_checks(outcome.report, policy)]


# --------------------------------------------------------------------------- putting it together


def _read_changelog(*, engine_is_local: bool) -> str | None:
    if not engine_is_local or not RUNC_CHANGELOG.is_file():
        return None
    try:
        with gzip.open(RUNC_CHANGELOG, "rt", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _git_version() -> str | None:
    try:
        done = subprocess.run(
            ["git", "--version"], capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _host_checks(
    settings: Settings,
    info: Mapping[str, Any],
    version: Mapping[str, Any] | None,
    backend: SandboxBackend | None,
    policy_name: str,
) -> list[Check]:
    socket_path = engine_socket_path(settings.docker_host)
    checks = engine_checks(
        info,
        version,
        runc_changelog=_read_changelog(engine_is_local=socket_path is not None),
        docker_host=settings.docker_host,
    )
    checks += [check_runs_dir(settings.runs_dir), check_git(_git_version())]
    if backend is not None:
        policy = load_policy(settings.policies_dir, policy_name)
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        checks += run_sandbox_probe(backend, policy, settings.runs_dir, socket_path)
    return checks


def run_preflight(
    settings: Settings,
    *,
    backend: SandboxBackend | None = None,
    engine_info: Mapping[str, Any] | None = None,
    engine_version: Mapping[str, Any] | None = None,
    probe: bool = True,
    policy_name: str = "default",
) -> PreflightReport:
    """Check this host; never raises for an unsafe host (that is a ``refuse`` check).

    Without ``engine_info`` the engine is asked (``docker info`` and ``docker version``)
    through a Docker backend; ``probe`` also starts one sandbox of ``policy_name``.
    """
    info: Mapping[str, Any] = engine_info or {}
    version = engine_version
    owned: Engine | None = None
    if engine_info is None or (probe and backend is None):
        try:
            owned = open_engine(settings)
            backend = backend or owned.backend
            if engine_info is None:
                info, version = owned.facts()
        except SandboxError as exc:
            if owned is not None:
                owned.close()
            return PreflightReport(
                checks=[
                    Check(
                        name="engine.reachable",
                        level=Level.REFUSE,
                        summary=f"cannot reach the sandbox engine: {exc}",
                        remedy="start dockerd (or set TASKBOX_DOCKER_HOST) and try again",
                    )
                ]
            )
    # A backend that cannot enforce a mandatory setting is refused before any sandbox starts.
    backend_checks = [check_backend_settings(backend)] if backend is not None else []
    may_probe = probe and not any(c.level is Level.REFUSE for c in backend_checks)
    try:
        checks = backend_checks + _host_checks(
            settings, info, version, backend if may_probe else None, policy_name
        )
    finally:
        if owned is not None:
            owned.close()
    report = PreflightReport(
        checks=checks,
        engine_version=str(info.get("ServerVersion") or "") or None,
        runc_version=runc_build(info, version),
        cgroup_version=str(info.get("CgroupVersion") or "") or None,
        default_runtime=str(info.get("DefaultRuntime") or "") or None,
    )
    for check in report.checks:
        if check.level is Level.REFUSE:
            log.error("preflight refuses: %s: %s", check.name, check.summary)
        elif check.level is Level.WARN:
            log.warning("preflight warning: %s: %s", check.name, check.summary)
    return report
