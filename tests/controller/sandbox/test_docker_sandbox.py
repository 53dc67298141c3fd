"""Attacks from inside real sandboxes, started exactly as ``taskbox sandbox run`` starts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import cli
from controller.sandbox.docker import DockerBackend
from controller.sandbox.spec import LABEL_CONTROLLER, LABEL_MANAGED, LABEL_RUN, LABEL_TASK
from tests.controller.sandbox.conftest import TEST_LABEL, SandboxRunner, make_task

pytestmark = [pytest.mark.docker, pytest.mark.security]

MIB = 1024 * 1024


def test_sandbox_user_is_not_root_and_has_no_capabilities(in_sandbox: SandboxRunner) -> None:
    """id is 10001, every capability set is empty, no-new-privileges and seccomp are on."""
    run = in_sandbox(
        "id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"
    )
    lines = run.run.outcome.log_tail.split()
    assert run.run.outcome.exit_code == 0
    assert lines[:2] == ["10001", "10001"]
    status = dict(zip(lines[2::2], lines[3::2], strict=True))
    assert status == {
        "CapEff:": "0000000000000000",
        "CapPrm:": "0000000000000000",
        "CapBnd:": "0000000000000000",
        "NoNewPrivs:": "1",
        "Seccomp:": "2",
    }


def test_relevant_file_and_unowned_paths_are_read_only(
    in_sandbox: SandboxRunner, sandbox_repo: Path
) -> None:
    """Writes to a relevant file, beside it, and to the root fail; the host copies stay unchanged."""
    run = in_sandbox(
        "for target in /work/app/readme.md /work/new.txt /work/app/new.py /usr/evil /etc/passwd; do "
        "  if echo pwned > $target 2>/dev/null; then echo WROTE $target; else echo REFUSED $target; fi; "
        "done; echo changed > /work/notes.txt && echo x > /work/app/owned/new.py && echo OWNED-OK",
        keep=True,
    )
    log = run.run.outcome.log_tail
    assert "WROTE" not in log
    assert log.count("REFUSED") == 5
    assert "OWNED-OK" in log
    assert run.staging_root is not None
    work = run.staging_root / "work"
    assert (work / "app/readme.md").read_text() == "relevant and read-only\n"
    assert not (work / "new.txt").exists()
    assert (work / "notes.txt").read_text() == "changed\n"  # the owned file was writable
    assert (sandbox_repo / "app/readme.md").read_text() == "relevant and read-only\n"
    assert (sandbox_repo / "notes.txt").read_text() == "owned file\n"


def test_unplanned_denied_and_git_files_are_absent(in_sandbox: SandboxRunner) -> None:
    """Only planned paths exist: no unplanned file, no denied file, no .env, no .git."""
    run = in_sandbox(
        "for p in secret_plan.txt keys.secret .env .git app/__init__.py; do "
        "  test -e /work/$p && echo PRESENT $p; done; find /work -type f | sort"
    )
    log = run.run.outcome.log_tail
    assert "PRESENT" not in log
    assert log.split() == [
        "/work/app/owned/handlers.py",
        "/work/app/readme.md",
        "/work/notes.txt",
    ]
    assert any(m.startswith(".env") for m in run.plan.missing_context)


def test_no_network_connection_and_no_name_resolution(in_sandbox: SandboxRunner) -> None:
    """Only lo exists; a TCP connect fails with ENETUNREACH and a DNS lookup fails (nothing leaves)."""
    script = """
import errno, json, socket
report = {"interfaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])}
try:
    socket.create_connection(("192.0.2.1", 80), timeout=3)  # TEST-NET-1: never routed anywhere
    report["connect"] = "connected"
except OSError as exc:
    report["connect"] = errno.errorcode.get(exc.errno, str(exc))
try:
    socket.getaddrinfo("example.com", 443)
    report["dns"] = "resolved"
except OSError as exc:
    report["dns"] = type(exc).__name__
print(json.dumps(report))
"""
    run = in_sandbox(f"python -c '{script}'")
    report = json.loads(run.run.outcome.log_tail.strip().splitlines()[-1])
    assert report == {"interfaces": ["lo"], "connect": "ENETUNREACH", "dns": "gaierror"}


def test_fork_bomb_stops_at_the_pids_limit(in_sandbox: SandboxRunner) -> None:
    """Forking stops with EAGAIN below the policy's pids limit (64) and the sandbox ends cleanly."""
    script = """
import os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError as exc:
        print("stopped", children, exc.errno)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children += 1
"""
    run = in_sandbox(f"python -c '{script}'")
    words = run.run.outcome.log_tail.split()
    assert words[0] == "stopped"
    assert int(words[1]) < 64
    assert words[2] == "11"  # EAGAIN
    assert run.run.outcome.timed_out is False


def test_allocating_past_the_memory_limit_is_killed_and_reported(in_sandbox: SandboxRunner) -> None:
    """Touching more than 128 MiB gets the process OOM-killed; the outcome says so."""
    run = in_sandbox("python -c 'blocks = []\nwhile True: blocks.append(bytes(8 * 1024 * 1024))'")
    outcome = run.run.outcome
    assert outcome.exit_code == 137
    assert outcome.oom_killed is True
    assert outcome.timed_out is False
    assert "out of memory" in outcome.describe()


def test_filling_tmp_stops_at_its_size(in_sandbox: SandboxRunner) -> None:
    """Writing to /tmp fails with ENOSPC at the tmpfs size (8 MiB)."""
    script = """
import errno
written = 0
try:
    with open("/tmp/fill", "wb") as f:
        while True:
            f.write(bytes(1024 * 1024)); f.flush(); written += 1024 * 1024
except OSError as exc:
    print(errno.errorcode[exc.errno], written)
"""
    run = in_sandbox(f"python -c '{script}'")
    code, written = run.run.outcome.log_tail.split()
    assert code == "ENOSPC"
    assert int(written) <= 8 * MIB


def test_home_and_tmp_are_writable_by_the_sandbox_user(in_sandbox: SandboxRunner) -> None:
    """HOME and /tmp are the sandbox user's scratch space (tools write caches there), not root's."""
    run = in_sandbox("sh -c 'touch $HOME/.cache-probe /tmp/probe && stat -c %u $HOME && echo ok'")
    assert run.run.outcome.exit_code == 0, run.run.outcome.log_tail
    assert run.run.outcome.log_tail.split() == ["10001", "ok"]


def test_flooding_stdout_is_cut_at_the_log_cap(in_sandbox: SandboxRunner) -> None:
    """3 MB of output against a 1 MiB cap: the stream stops at the cap and says it was cut."""
    seen: list[str] = []
    run = in_sandbox("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END", on_log=seen.append)
    outcome = run.run.outcome
    assert outcome.exit_code == 0
    assert outcome.log_truncated is True
    assert sum(len(chunk) for chunk in seen) == MIB
    assert len(outcome.log_tail) <= 64 * 1024
    assert outcome.log_tail.rstrip().endswith("END")


def test_sleeping_past_the_deadline_is_killed_and_removed(
    in_sandbox: SandboxRunner, docker_backend: DockerBackend
) -> None:
    """A command that outlives its 2 s deadline is killed, reported as a timeout, and gone."""
    run = in_sandbox("trap '' TERM; sleep 60", task=make_task(wall_clock_seconds=2))
    outcome = run.run.outcome
    assert outcome.timed_out is True
    assert 2 <= outcome.duration_seconds < 15
    assert "timed out" in outcome.describe()
    assert docker_backend.client.api.containers(all=True, filters={"id": run.run.handle.id}) == []


def test_result_files_from_a_hostile_sandbox_are_refused(in_sandbox: SandboxRunner) -> None:
    """A symlink to a host file and a FIFO in /out are refused; nothing blocks, nothing leaks."""
    run = in_sandbox(
        "ln -s /etc/shadow /out/result.json && mkfifo /out/result.bundle",
        collect={"result.json": 1000, "result.bundle": 1000},
    )
    output = run.run.output
    assert output.files == {}
    assert "symbolic link" in output.refused["result.json"]
    assert "FIFO" in output.refused["result.bundle"]


def test_result_files_written_plainly_are_collected(in_sandbox: SandboxRunner) -> None:
    """A regular result.json comes back as bytes; a hard-linked bundle is refused."""
    run = in_sandbox(
        "echo '{\"ok\": true}' > /out/result.json && echo b > /out/b && ln /out/b /out/result.bundle",
        collect={"result.json": 1000, "result.bundle": 1000},
    )
    assert run.run.output.files == {"result.json": b'{"ok": true}\n'}
    assert "hard links" in run.run.output.refused["result.bundle"]


def test_inspected_sandbox_has_every_hardened_setting(in_sandbox: SandboxRunner) -> None:
    """docker inspect of a real sandbox, checked against the CIS Docker Benchmark section 5."""
    run = in_sandbox("true")
    info = run.run.inspect
    host, config = info["HostConfig"], info["Config"]
    assert host["Privileged"] is False  # 5.5
    assert host["CapAdd"] in (None, [])  # 5.4
    assert host["CapDrop"] == ["ALL"]  # 5.4
    assert host["SecurityOpt"] == ["no-new-privileges:true"]  # 5.26 (and 5.3 is not empty)
    assert not any("unconfined" in opt for opt in host["SecurityOpt"])  # 5.22
    assert config["NetworkDisabled"] is True  # 5.10 and 5.30: no network at all, not even none
    assert host["NetworkMode"] != "host"  # 5.10
    assert host["PortBindings"] in (None, {})  # 5.8, 5.9, 5.14
    assert host["PublishAllPorts"] is False  # 5.14
    assert not config.get("ExposedPorts")
    assert host["Memory"] == 128 * MIB  # 5.11
    assert host["MemorySwap"] == 128 * MIB
    assert host["NanoCpus"] == 1_000_000_000  # 5.12
    assert host["ReadonlyRootfs"] is True  # 5.13
    assert host["RestartPolicy"]["Name"] in ("", "no")  # 5.15
    assert host["RestartPolicy"]["MaximumRetryCount"] == 0
    assert host["PidMode"] == ""  # 5.16: not the host's
    assert host["IpcMode"] == "private"  # 5.17
    assert host["UTSMode"] == ""  # 5.21
    assert host["UsernsMode"] == ""  # 5.31
    assert host["Devices"] in (None, [])  # 5.18
    assert host["DeviceRequests"] in (None, [])
    assert host["DeviceCgroupRules"] in (None, [])
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {  # 5.19
        ("nofile", 256, 256),
        ("fsize", 16 * MIB, 16 * MIB),
        ("core", 0, 0),
    }
    assert host["CgroupParent"] == ""  # 5.25
    assert host["PidsLimit"] == 64  # 5.29
    assert host["Init"] is True
    assert host["OomKillDisable"] in (None, False)
    assert not host.get("Sysctls")
    assert host["Runtime"] == "runc"
    assert host["MaskedPaths"]
    assert host["ReadonlyPaths"]
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-file": "1", "max-size": str(MIB)},
    }
    assert host["Tmpfs"] == {
        "/tmp": f"rw,noexec,nosuid,nodev,size={8 * MIB},mode=1777,uid=10001,gid=10001",
        "/home/sandbox": f"rw,noexec,nosuid,nodev,size={4 * MIB},mode=1777,uid=10001,gid=10001",
    }
    assert config["User"] == "10001:10001"
    assert run.run.image_id.startswith("sha256:")


def test_inspected_sandbox_has_only_the_planned_mounts_and_its_labels(
    in_sandbox: SandboxRunner,
) -> None:
    """docker inspect: binds are the plan's, rprivate, writable only where owned; labels identify the run."""
    run = in_sandbox("true")
    host, config = run.run.inspect["HostConfig"], run.run.inspect["Config"]
    assert config["WorkingDir"] == "/work"
    assert not any(key in env for env in config["Env"] for key in ("API_KEY", "TOKEN", "SECRET"))
    # 5.6, 5.20, 5.32: only the planned binds, rprivate, read-write only where owned; no docker.sock.
    mounts = {m["Target"]: m for m in host["Mounts"]}
    assert set(mounts) == {
        "/work",
        "/work/app/owned",
        "/work/notes.txt",
        "/out",
        "/taskbox",
        "/run/taskbox",
    }
    writable = {t for t, m in mounts.items() if not m.get("ReadOnly")}
    assert writable == {"/work/app/owned", "/work/notes.txt", "/out"}
    assert all(m["Type"] == "bind" for m in mounts.values())
    assert all(m["BindOptions"]["Propagation"] == "rprivate" for m in mounts.values())
    assert not any("docker.sock" in m["Source"] for m in mounts.values())
    labels = config["Labels"]
    assert labels[LABEL_MANAGED] == "1"
    assert labels[LABEL_RUN] == run.run_id
    assert labels[LABEL_TASK] == "SBX-1"
    assert labels[TEST_LABEL] == "1"


def test_sandbox_run_command_prints_output_and_exits_with_the_status(
    sandbox_repo: Path,
    policies_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_backend: DockerBackend,
) -> None:
    """`taskbox sandbox run ... -- CMD` streams the command's output and exits with its status."""
    monkeypatch.setenv("TASKBOX_POLICIES_DIR", str(policies_dir))
    monkeypatch.setenv("TASKBOX_RUNS_DIR", str(tmp_path / "runs"))
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(make_task().to_wire()))
    result = CliRunner().invoke(
        cli,
        [
            "sandbox",
            "run",
            str(task_file),
            "--repo",
            str(sandbox_repo),
            "--policy",
            "test",
            "--label",
            f"{TEST_LABEL}=1",
            "--",
            "sh",
            "-c",
            "echo hello from $(id -un); exit 3",
        ],
    )
    assert result.exit_code == 3, result.output
    assert "hello from sandbox" in result.stdout
    assert "exit status 3" in result.stderr
    assert "not mounted: .env" in result.stderr
    assert list((tmp_path / "runs").iterdir()) == []  # staging removed


def test_sandbox_run_command_refuses_an_invalid_plan(
    sandbox_repo: Path, policies_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task owning a denied path is refused with the reason before any container exists."""
    monkeypatch.setenv("TASKBOX_POLICIES_DIR", str(policies_dir))
    monkeypatch.setenv("TASKBOX_RUNS_DIR", str(tmp_path / "runs"))
    task = make_task().model_copy(update={"owns_paths": ["keys.secret"]})
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task.to_wire()))
    result = CliRunner().invoke(
        cli,
        [
            "sandbox",
            "run",
            str(task_file),
            "--repo",
            str(sandbox_repo),
            "--policy",
            "test",
            "--",
            "true",
        ],
    )
    assert result.exit_code == 2
    assert "keys.secret" in result.stderr
    assert "denied by rule" in result.stderr


def test_cleanup_removes_containers_of_a_dead_controller(
    docker_backend: DockerBackend,
    sandbox_repo: Path,
    policies_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A created-but-abandoned sandbox is found by its labels and removed by `taskbox sandbox cleanup`."""
    container = docker_backend.client.containers.create(
        "taskbox-sandbox:latest",
        ["true"],
        labels={
            LABEL_MANAGED: "1",
            LABEL_CONTROLLER: "dead-controller-test",
            LABEL_RUN: "orphan-run",
            TEST_LABEL: "1",
        },
        network_disabled=True,
    )
    try:
        found = docker_backend.find_orphans("dead-controller-test")
        assert [o.id for o in found] == [container.id]
        result = CliRunner().invoke(
            cli, ["sandbox", "cleanup", "--controller", "dead-controller-test"]
        )
        assert result.exit_code == 0, result.output
        assert "removed" in result.stdout
        assert "orphan-run" in result.stdout
        assert docker_backend.find_orphans("dead-controller-test") == []
    finally:
        docker_backend.remove_orphans("dead-controller-test")
