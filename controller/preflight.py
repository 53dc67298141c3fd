"""Start-up checks of the host: refuse, or warn loudly, when the engine cannot hold a sandbox safely.

Three sources: the engine's own description (for Docker, ``docker info``/``docker
version``: engine and runc versions, seccomp, user namespaces, LSMs, cgroup controllers;
those checks live in ``controller/sandbox/docker/preflight.py``), the container settings every sandbox
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

import json
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.errors import SandboxError, TaskboxError
from controller.hostcheck import Check, Level, PreflightReport, dotted, parse_version
from controller.policy.loader import load_policy
from controller.policy.planner import MountPlan
from controller.sandbox.backend import MANDATORY_ALTERNATIVES, MANDATORY_SETTINGS, missing_mandatory
from controller.sandbox.engines import engine_host_checks, engine_runtime_build, open_engine
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import ContainerSpec, StagingPaths, build_container_spec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from controller.policy.schema import Policy
    from controller.sandbox.backend import SandboxBackend
    from controller.sandbox.engines import Engine
    from controller.settings import Settings

log = logging.getLogger(__name__)


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
PROBE_TIMEOUT_SECONDS = 60
MIB = 1024 * 1024


# --------------------------------------------------------------------------- engine facts


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
    missing = sorted(missing_mandatory(frozenset(declared)))
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
    narrower = sorted(
        f"{alternative} for {setting}"
        for setting, alternatives in MANDATORY_ALTERNATIVES.items()
        if setting not in declared
        for alternative in alternatives & frozenset(declared)
    )
    if narrower:
        # Accepted, and said: a security reviewer reads what this engine does differently.
        return Check(
            name="backend.settings",
            level=Level.OK,
            summary=f"the sandbox backend {name} enforces the {len(MANDATORY_SETTINGS)} mandatory "
            f"settings, {len(narrower)} in a narrower form: {', '.join(narrower)}",
            detail="See SECURITY.md, Kubernetes, for what each narrower form leaves out.",
        )
    return Check(
        name="backend.settings",
        level=Level.OK,
        summary=f"the sandbox backend {name} enforces all {len(MANDATORY_SETTINGS)} mandatory settings",
    )


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
            summary=f"git {dotted(parsed)} predates the May 2024 fixes (CVE-2024-32002, -32004, -32020, -32021, -32465)",
            detail="Ingestion only fetches a bundle into a fresh bare repository and never clones or checks out; this is defence in depth.",
            remedy="upgrade git to a fixed release of its line",
        )
    return Check(
        name="host.git",
        level=Level.OK,
        summary=f"git {dotted(parsed)}",
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
    engine = engine_host_checks(settings, info, version)
    socket_path = engine.socket_path
    checks = [*engine.checks, check_runs_dir(settings.runs_dir), check_git(_git_version())]
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
        runc_version=engine_runtime_build(settings, info, version),
        cgroup_version=str(info.get("CgroupVersion") or "") or None,
        default_runtime=str(info.get("DefaultRuntime") or "") or None,
    )
    for check in report.checks:
        if check.level is Level.REFUSE:
            log.error("preflight refuses: %s: %s", check.name, check.summary)
        elif check.level is Level.WARN:
            log.warning("preflight warning: %s: %s", check.name, check.summary)
    return report
