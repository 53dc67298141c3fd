"""Preflight: each check against fake `docker info` answers, the CLI, and one run against the real engine."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controller.cli import cli
from controller.hostcheck import Check, Level, PreflightReport
from controller.policy.loader import load_policy
from controller.preflight import (
    check_backend_settings,
    check_git,
    check_runs_dir,
    check_spec_mounts,
    probe_spec,
    run_preflight,
    sandbox_checks,
)
from controller.sandbox.backend import MANDATORY_ALTERNATIVES, MANDATORY_SETTINGS
from controller.sandbox.docker import DockerBackend, preflight
from controller.sandbox.docker.preflight import (
    check_engine_address,
    check_engine_version,
    check_runc,
    engine_checks,
    runc_build,
)
from controller.sandbox.fake import FakeEngine, exits_with
from controller.sandbox.spec import StagingPaths
from controller.settings import PROJECT_ROOT, Settings

POLICIES = PROJECT_ROOT / "policies"
DEBIAN_RUNC = "1.1.5+ds1-1+deb12u1"
DEBIAN_CHANGELOG = f"""runc ({DEBIAN_RUNC}) bookworm-security; urgency=high

  * CVE-2024-21626: several container breakouts due to internally leaked fds

runc (1.1.5+ds1-1) unstable; urgency=medium
"""


def engine_info(**overrides: Any) -> dict[str, Any]:
    """A `docker info` answer shaped like this machine's (Debian 12, Engine 20.10, cgroup v1)."""
    info: dict[str, Any] = {
        "ServerVersion": "20.10.24+dfsg1",
        "RuncCommit": {"ID": DEBIAN_RUNC, "Expected": DEBIAN_RUNC},
        "SecurityOptions": ["name=seccomp,profile=default"],
        "MemoryLimit": True,
        "SwapLimit": True,
        "PidsLimit": True,
        "CpuCfsQuota": True,
        "CpuCfsPeriod": True,
        "CgroupVersion": "1",
        "DefaultRuntime": "runc",
        "Runtimes": {"runc": {"path": "runc"}},
        "Swarm": {"LocalNodeState": "inactive"},
        "Warnings": None,
    }
    info.update(overrides)
    return info


def by_name(checks: list[Check]) -> dict[str, Check]:
    """Checks keyed by name."""
    return {c.name: c for c in checks}


def good_probe(**overrides: Any) -> dict[str, Any]:
    """What the probe sandbox reports when the default policy is enforced (cgroup v1)."""
    report: dict[str, Any] = {
        "uid": 10001,
        "seccomp": "2",
        "no_new_privs": "1",
        "cap_eff": "0000000000000000",
        "pids_max": "256",
        "memory_max": str(1024 * 1024 * 1024),
        "cpu_quota": "100000",
        "cpu_period": "100000",
        "cpu_max": None,
        "interfaces": ["lo"],
        "sockets": [],
        "docker_host": None,
    }
    report.update(overrides)
    return report


# --------------------------------------------------------------------------- runc


@pytest.mark.parametrize(
    ("build", "changelog", "level"),
    [
        ("1.1.11", None, Level.REFUSE),
        ("v1.1.11-0-g4bccb38", None, Level.REFUSE),
        ("v1.1.12-0-g51d5e94", None, Level.WARN),
        ("1.2.8", None, Level.OK),
        ("v1.3.0-0-g4ca628d1", None, Level.OK),
        (DEBIAN_RUNC, DEBIAN_CHANGELOG, Level.WARN),
        (DEBIAN_RUNC, None, Level.WARN),
        (DEBIAN_RUNC, DEBIAN_CHANGELOG.replace("CVE-2024-21626", "CVE-2023-0000"), Level.REFUSE),
        (DEBIAN_RUNC, DEBIAN_CHANGELOG.replace(DEBIAN_RUNC, "1.1.5+ds1-1+deb12u2"), Level.WARN),
        (
            DEBIAN_RUNC,
            DEBIAN_CHANGELOG + "  * CVE-2025-31133 CVE-2025-52565 CVE-2025-52881\n",
            Level.OK,
        ),
        ("N/A", None, Level.WARN),
        (None, None, Level.WARN),
    ],
    ids=[
        "upstream-unfixed",
        "upstream-git-describe-unfixed",
        "upstream-leaky-fixed",
        "upstream-all-fixed",
        "upstream-newer",
        "debian-backported",
        "debian-no-changelog",
        "debian-changelog-without-fix",
        "debian-changelog-of-another-build",
        "debian-everything-backported",
        "unknown",
        "absent",
    ],
)
def test_runc_versions_and_distribution_builds(
    build: str | None, changelog: str | None, level: Level
) -> None:
    """Upstream runc below 1.1.12 is refused; a distribution build is judged by its own changelog, else warned."""
    assert check_runc(build, changelog).level is level


def test_runc_build_prefers_the_version_component() -> None:
    """`docker version`'s runc component wins over `docker info`'s commit id."""
    version = {
        "Components": [
            {"Name": "runc", "Version": "1.2.8", "Details": {"GitCommit": "v1.2.8-0-gabc"}}
        ]
    }
    assert runc_build(engine_info(), version) == "v1.2.8-0-gabc"
    assert runc_build(engine_info(), None) == DEBIAN_RUNC
    assert runc_build(engine_info(RuncCommit={"ID": "N/A"}), None) is None


# --------------------------------------------------------------------------- engine


def test_this_kind_of_host_warns_but_is_not_refused() -> None:
    """Debian 12's engine: seccomp and cgroups fine; old engine, no userns, no LSM are warnings."""
    checks = by_name(engine_checks(engine_info(), runc_changelog=DEBIAN_CHANGELOG))
    assert checks["engine.seccomp"].level is Level.OK
    assert checks["engine.version"].level is Level.WARN
    assert checks["engine.userns"].level is Level.WARN
    assert checks["engine.lsm"].level is Level.WARN
    assert checks["engine.runc"].level is Level.WARN
    assert all(
        checks[n].level is Level.OK
        for n in ("cgroup.memory", "cgroup.pids", "cgroup.cpu", "cgroup.swap")
    )
    assert not any(c.level is Level.REFUSE for c in checks.values())


@pytest.mark.parametrize(
    ("options", "level"),
    [
        ([], Level.REFUSE),
        (["name=seccomp,profile=unconfined"], Level.REFUSE),
        (["name=seccomp,profile=/etc/docker/seccomp.json"], Level.OK),
        (["name=apparmor", "name=seccomp,profile=default", "name=cgroupns"], Level.OK),
    ],
    ids=["off", "unconfined", "custom", "default"],
)
def test_seccomp_off_or_unconfined_is_refused(options: list[str], level: Level) -> None:
    """Without a seccomp profile the sandbox has no system-call filter: refuse."""
    checks = by_name(engine_checks(engine_info(SecurityOptions=options)))
    assert checks["engine.seccomp"].level is level


@pytest.mark.parametrize(
    ("options", "level"),
    [
        (["name=seccomp,profile=default"], Level.WARN),
        (["name=seccomp,profile=default", "name=userns"], Level.OK),
        (["name=seccomp,profile=default", "name=rootless"], Level.OK),
    ],
    ids=["off", "userns-remap", "rootless"],
)
def test_user_namespaces_are_reported(options: list[str], level: Level) -> None:
    """userns-remap or a rootless engine is ok; neither is a warning."""
    assert (
        by_name(engine_checks(engine_info(SecurityOptions=options)))["engine.userns"].level is level
    )


def test_apparmor_or_selinux_clears_the_lsm_warning() -> None:
    """An LSM that confines containers turns the warning off."""
    for lsm in ("apparmor", "selinux"):
        options = ["name=seccomp,profile=default", f"name={lsm}"]
        assert (
            by_name(engine_checks(engine_info(SecurityOptions=options)))["engine.lsm"].level
            is Level.OK
        )


@pytest.mark.parametrize(
    ("key", "name", "level"),
    [
        ("MemoryLimit", "cgroup.memory", Level.REFUSE),
        ("PidsLimit", "cgroup.pids", Level.REFUSE),
        ("CpuCfsQuota", "cgroup.cpu", Level.REFUSE),
        ("SwapLimit", "cgroup.swap", Level.WARN),
    ],
)
def test_missing_cgroup_controllers(key: str, name: str, level: Level) -> None:
    """No memory, pids or CPU controller means limits that do nothing: refuse; no swap accounting: warn."""
    assert by_name(engine_checks(engine_info(**{key: False})))[name].level is level


def test_swarm_engine_warnings_and_plain_tcp_are_warned() -> None:
    """A swarm node, the engine's own warnings and a TCP address without TLS are warnings."""
    checks = by_name(
        engine_checks(
            engine_info(
                Swarm={"LocalNodeState": "active"}, Warnings=["WARNING: No swap limit support"]
            ),
            docker_host="tcp://10.0.0.1:2375",
        )
    )
    assert checks["engine.swarm"].level is Level.WARN
    assert checks["engine.warnings"].level is Level.WARN
    assert "No swap limit" in checks["engine.warnings"].detail
    assert checks["engine.address"].level is Level.WARN
    assert check_engine_address("unix:///run/docker.sock").level is Level.OK


@pytest.mark.parametrize(
    ("version", "level"),
    [
        ("27.3.1", Level.OK),
        ("25.0.2", Level.OK),
        ("25.0.1", Level.WARN),
        ("20.10.24+dfsg1", Level.WARN),
        ("dev", Level.WARN),
    ],
)
def test_engine_version(version: str, level: Level) -> None:
    """Engines before 25.0.2 (and unreadable versions) are warned."""
    assert check_engine_version(version).level is level


def test_a_stronger_runtime_is_pointed_out() -> None:
    """When runsc is installed but not the default, the runtime check says to make it the default."""
    checks = by_name(engine_checks(engine_info(Runtimes={"runc": {}, "runsc": {}})))
    assert "runsc is installed" in checks["engine.runtime"].detail


# --------------------------------------------------------------------------- host


@pytest.mark.parametrize(
    ("raw", "level"),
    [
        ("git version 2.39.5", Level.OK),
        ("git version 2.39.3", Level.WARN),
        ("git version 2.38.1", Level.WARN),
        ("git version 2.45.1", Level.OK),
        ("git version 2.47.0", Level.OK),
        (None, Level.WARN),
    ],
)
def test_host_git_version(raw: str | None, level: Level) -> None:
    """git below its line's May 2024 fix release is warned (ingestion never clones, so not refused)."""
    assert check_git(raw).level is level


def test_world_writable_runs_folder_is_warned(tmp_path: Path) -> None:
    """A world-writable runs folder without the sticky bit lets other users race staging."""
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)
    assert check_runs_dir(runs).level is Level.WARN
    runs.chmod(0o1777)
    assert check_runs_dir(runs).level is Level.OK
    runs.chmod(0o750)
    assert check_runs_dir(runs).level is Level.OK


def test_a_mount_that_reaches_the_engine_socket_is_refused(tmp_path: Path) -> None:
    """If the staging folders sat where the engine socket lives, the sandbox would get host root: refuse."""
    policy = load_policy(POLICIES, "default")
    staging = StagingPaths.under(tmp_path / "stage")
    spec = probe_spec(policy, staging, "preflight-test")
    assert check_spec_mounts(spec, tmp_path / "elsewhere" / "docker.sock").level is Level.OK
    assert check_spec_mounts(spec, staging.work / "docker.sock").level is Level.REFUSE
    assert check_spec_mounts(spec, None).level is Level.OK


# --------------------------------------------------------------------------- inside the sandbox


def test_probe_report_that_matches_the_policy_is_ok() -> None:
    """Every in-sandbox check passes when the kernel enforces the default policy."""
    policy = load_policy(POLICIES, "default")
    assert all(c.level is Level.OK for c in sandbox_checks(good_probe(), policy))
    v2 = good_probe(cpu_quota=None, cpu_period=None, cpu_max="100000 100000")
    assert all(c.level is Level.OK for c in sandbox_checks(v2, policy))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"uid": 0}, "sandbox.user"),
        ({"seccomp": "0"}, "sandbox.seccomp"),
        ({"no_new_privs": "0"}, "sandbox.no_new_privs"),
        ({"cap_eff": "00000000a80425fb"}, "sandbox.capabilities"),
        ({"pids_max": "max"}, "sandbox.pids"),
        ({"memory_max": "9223372036854771712"}, "sandbox.memory"),
        ({"cpu_quota": "-1"}, "sandbox.cpu"),
        ({"interfaces": ["eth0", "lo"]}, "sandbox.network"),
        ({"sockets": ["/var/run/docker.sock"]}, "sandbox.engine_socket"),
        ({"docker_host": "tcp://172.17.0.1:2375"}, "sandbox.engine_socket"),
    ],
)
def test_probe_report_that_breaks_the_policy_is_refused(
    overrides: dict[str, Any], name: str
) -> None:
    """Root, no seccomp, capabilities, unlimited pids/memory/CPU, a network or an engine socket inside: refuse."""
    policy = load_policy(POLICIES, "default")
    checks = by_name(sandbox_checks(good_probe(**overrides), policy))
    assert checks[name].level is Level.REFUSE
    assert [c.name for c in checks.values() if c.level is Level.REFUSE] == [name]


# --------------------------------------------------------------------------- the backend's declaration


class Declares:
    """A stand-in backend that only declares which settings it enforces."""

    def __init__(self, enforces: frozenset[str]) -> None:
        self.enforces = enforces


class ClaimsEverything(FakeEngine):
    """The fake engine, declaring Docker's settings (for a run of preflight that must pass)."""

    enforces = DockerBackend.enforces


def test_a_backend_enforcing_every_mandatory_setting_passes() -> None:
    """Docker's declaration covers every mandatory setting."""
    check = check_backend_settings(Declares(DockerBackend.enforces))
    assert check.level is Level.OK
    assert check.name == "backend.settings"


@pytest.mark.parametrize("missing", sorted(MANDATORY_SETTINGS))
def test_a_backend_missing_one_mandatory_setting_is_refused(missing: str) -> None:
    """Leaving out any one mandatory setting refuses the backend, and the refusal names it."""
    check = check_backend_settings(Declares(DockerBackend.enforces - {missing}))
    assert check.level is Level.REFUSE
    assert missing in check.summary
    assert check.remedy


def test_a_backend_that_declares_nothing_is_refused() -> None:
    """A backend with no ``enforces`` declaration (or a malformed one) is refused, not trusted."""
    assert check_backend_settings(object()).level is Level.REFUSE
    assert check_backend_settings(Declares("user network_disabled")).level is Level.REFUSE  # type: ignore[arg-type]


def test_preflight_refuses_the_fake_engine_before_starting_any_sandbox(tmp_path: Path) -> None:
    """The fake engine enforces no kernel setting: preflight refuses it, and never starts a probe on it."""
    engine = FakeEngine(exits_with(0))
    settings = Settings(_env_file=None, runs_dir=tmp_path, policies_dir=POLICIES)  # type: ignore[call-arg]
    report = run_preflight(settings, backend=engine, engine_info=engine_info(), probe=True)
    check = by_name(report.checks)["backend.settings"]
    assert report.refused
    assert check.level is Level.REFUSE
    assert "network_disabled" in check.summary
    assert "FakeEngine" in check.summary
    assert engine.steps() == []  # no sandbox was created to probe


def test_preflight_accepts_a_backend_that_declares_every_setting(tmp_path: Path) -> None:
    """The same preflight with a backend declaring every mandatory setting is not refused."""
    settings = Settings(_env_file=None, runs_dir=tmp_path, policies_dir=POLICIES)  # type: ignore[call-arg]
    backend = ClaimsEverything(exits_with(0))
    report = run_preflight(settings, backend=backend, engine_info=engine_info(), probe=False)
    assert by_name(report.checks)["backend.settings"].level is Level.OK
    assert not report.refused


# --------------------------------------------------------------------------- report and CLI


def test_report_level_is_the_worst_check() -> None:
    """The report's level is its worst check's; refused only with a refusal."""
    ok = Check(name="a", level=Level.OK, summary="fine")
    warn = Check(name="b", level=Level.WARN, summary="meh")
    refuse = Check(name="c", level=Level.REFUSE, summary="no")
    assert PreflightReport(checks=[]).level is Level.OK
    assert PreflightReport(checks=[ok, warn]).level is Level.WARN
    assert PreflightReport(checks=[ok, refuse, warn]).refused
    assert PreflightReport(checks=[ok]).dump()["level"] == "ok"


def test_run_preflight_on_given_answers_needs_no_engine(tmp_path: Path) -> None:
    """With the engine's answers given and no probe, nothing talks to an engine."""
    settings = Settings(_env_file=None, runs_dir=tmp_path, docker_host="unix:///nonexistent.sock")  # type: ignore[call-arg]
    report = run_preflight(settings, engine_info=engine_info(SecurityOptions=[]), probe=False)
    assert report.refused
    assert report.engine_version == "20.10.24+dfsg1"
    assert report.runc_version == DEBIAN_RUNC


def test_unreachable_engine_is_a_refusal(tmp_path: Path) -> None:
    """No engine at the configured address: one refusing check, no exception."""
    settings = Settings(
        _env_file=None,
        runs_dir=tmp_path,
        docker_host="tcp://127.0.0.1:9",  # loopback: nothing listens
    )  # type: ignore[call-arg]
    report = run_preflight(settings)
    assert [c.name for c in report.checks] == ["engine.reachable"]
    assert report.refused


@pytest.mark.parametrize(("level", "status"), [(Level.OK, 0), (Level.WARN, 0), (Level.REFUSE, 1)])
def test_cli_exit_status_and_json(
    monkeypatch: pytest.MonkeyPatch, level: Level, status: int
) -> None:
    """`taskbox preflight --json` prints the report and exits 1 only when a check refuses."""
    report = PreflightReport(checks=[Check(name="x", level=level, summary="s", remedy="r")])
    # The package re-exports the command under the module's name, so patch the module object.
    monkeypatch.setattr(
        importlib.import_module("controller.cli.preflight"),
        "run_preflight",
        lambda *_a, **_k: report,
    )
    result = CliRunner().invoke(cli, ["preflight", "--json", "--no-probe"])
    assert result.exit_code == status
    assert json.loads(result.stdout)["level"] == level.value
    text = CliRunner().invoke(cli, ["preflight"])
    assert f"preflight: {level.value}" in text.stdout


# --------------------------------------------------------------------------- the real engine


@pytest.mark.docker
def test_preflight_against_the_real_engine(tmp_path: Path) -> None:
    """On this machine's engine: nothing refused, and a real sandbox shows every setting enforced."""
    settings = Settings(_env_file=None, runs_dir=tmp_path / "runs", policies_dir=POLICIES)  # type: ignore[call-arg]
    report = run_preflight(settings)
    checks = by_name(report.checks)
    assert not report.refused, [c for c in report.checks if c.level is Level.REFUSE]
    assert checks["engine.seccomp"].level is Level.OK
    assert checks["backend.settings"].level is Level.OK
    sandbox = {n: c for n, c in checks.items() if n.startswith("sandbox.")}
    assert set(sandbox) >= {
        "sandbox.mounts",
        "sandbox.seccomp",
        "sandbox.pids",
        "sandbox.engine_socket",
        "sandbox.network",
    }
    assert all(c.level is Level.OK for c in sandbox.values()), sandbox
    assert report.engine_version
    assert list((tmp_path / "runs").iterdir()) == []  # the probe's staging is gone
    assert preflight.RUNC_LEAKY_VESSELS_CVE == "CVE-2024-21626"


@pytest.mark.parametrize(
    ("mandatory", "alternative"),
    [
        (m, a)
        for m, alternatives in sorted(MANDATORY_ALTERNATIVES.items())
        for a in sorted(alternatives)
    ],
)
def test_a_narrower_alternative_is_accepted_and_named(mandatory: str, alternative: str) -> None:
    """A backend may meet a mandatory setting with its declared narrower form; preflight says which, and nothing else stands in."""
    check = check_backend_settings(Declares(DockerBackend.enforces - {mandatory} | {alternative}))
    assert check.level is Level.OK
    assert f"{alternative} for {mandatory}" in check.summary
    other = next(m for m in sorted(MANDATORY_SETTINGS) if m not in MANDATORY_ALTERNATIVES)
    refused = check_backend_settings(Declares(DockerBackend.enforces - {other} | {alternative}))
    assert refused.level is Level.REFUSE
    assert other in refused.summary
