"""Filesystem attacks from inside real sandboxes: read-only places, links, special files, the collector.

Each module fixture runs one probe in a real sandbox and every test asserts one
part of its report, plus what the host side must have done (refused to collect,
left host files and the target repository untouched, removed the staging folder).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from controller.errors import SandboxError
from controller.sandbox.backend import CollectedOutput
from tests.security.conftest import (
    HOST_RESULT_SUMMARY,
    PROBE_PATH,
    Arena,
    ProbeRun,
    probe_task,
    repo_state,
)

if TYPE_CHECKING:
    pass

pytestmark = [pytest.mark.security, pytest.mark.docker]

MIB = 1024 * 1024
#: Caps the collector is asked to read with: every planted name, a small cap for the sparse file.
LINK_CAPS = {
    "result.json": MIB,
    "result.bundle": MIB,
    "rootlink": MIB,
    "hardlink": MIB,
    "original": MIB,
    "fifo": MIB,
    "socket": MIB,
    "sparse": MIB,
}


@pytest.fixture(scope="module")
def writes(arena: Arena) -> tuple[ProbeRun, dict[str, str], dict[str, str]]:
    """The filesystem probe, with the target repository hashed before and after."""
    before = repo_state(arena.repo)
    run = arena.probe(
        "filesystem",
        "app/api",
        "app/main.py",
        "app/__init__.py",
        ".env",
        "secrets",
        "secrets/api.key",
        "config/id_rsa",
        ".git",
        "notes/unplanned.md",
        "docs/passwd",
        "README.md",
    )
    return run, before, repo_state(arena.repo)


@pytest.fixture(scope="module")
def links(arena: Arena) -> tuple[ProbeRun, dict[str, str], dict[str, str]]:
    """The links probe (collector attacks), with the host files hashed before and after."""
    before = arena.host.state()
    run = arena.probe(
        "links",
        "app/api",
        str(arena.host.file),
        str(arena.host.folder),
        "app/__init__.py",
        collect=LINK_CAPS,
    )
    return run, before, arena.host.state()


def collected(run: ProbeRun) -> CollectedOutput:
    """What the backend's collector returned for the probe."""
    return run.run.run.output


def assert_no_host_bytes(output: CollectedOutput) -> None:
    """No byte of the host file a link pointed at was read."""
    for name, data in output.files.items():
        assert HOST_RESULT_SUMMARY.encode() not in data, f"{name} carried host bytes"


# --------------------------------------------------------------------------- read-only places


@pytest.mark.invariant(4)
def test_writes_outside_owned_paths_fail_and_the_repository_is_untouched(writes: Any) -> None:
    """Invariant 4: the root, /usr, /etc, /work, relevant files, /taskbox and the socket folder are read-only."""
    run, before, after = writes
    got = run.report["writes"]
    for place in (
        "root",
        "usr",
        "etc_passwd",
        "work_root",
        "work_relevant",
        "taskbox_run_json",
        "taskbox_dir",
        "gateway_dir",
        "venv",
        "mkdir_beside_owned",
    ):
        assert got[place] in ("EROFS", "EACCES"), f"{place}: {got[place]}"
    assert after == before


@pytest.mark.invariant(4)
def test_only_owned_paths_out_and_scratch_tmpfs_are_writable(writes: Any) -> None:
    """Invariant 4: writes succeed in the owned folder and file, /out and /tmp (the home tmpfs at most)."""
    run, _before, _after = writes
    got = run.report["writes"]
    assert {k: got[k] for k in ("owned_dir", "owned_file", "out", "tmp")} == dict.fromkeys(
        ("owned_dir", "owned_file", "out", "tmp"), "ok"
    )
    # The home tmpfs is memory-backed scratch; today the engine mounts it root-owned (0755),
    # so it is not even writable (a functional bug reported separately, not a hole).
    assert got["home"] in ("ok", "EACCES")


@pytest.mark.invariant(4)
def test_unplanned_and_denied_paths_do_not_exist_inside(writes: Any) -> None:
    """Invariant 4: .env, secrets/, keys, .git, unplanned files and repository symlinks are simply absent."""
    run, _before, _after = writes
    assert all(run.report["absent"].values()), run.report["absent"]
    planned = {PROBE_PATH, "probes", "app", "app/__init__.py", "app/main.py", "app/api"}
    planned |= {"app/api/__init__.py", "pyproject.toml", "app/api/probe.txt"}
    planned |= {"app/api/setuid-probe"}
    assert set(run.report["work_listing"]) <= planned, set(run.report["work_listing"]) - planned


@pytest.mark.invariant(4)
def test_scratch_tmpfs_is_noexec(writes: Any) -> None:
    """Invariant 4: a program written to /tmp cannot be executed (noexec), so scratch space is data only."""
    run, _before, _after = writes
    assert run.report["exec_from_tmp"] in ("EACCES", "PermissionError")


@pytest.mark.invariant(5)
def test_setuid_file_planted_in_owned_path_never_outlives_the_run(
    writes: Any, arena: Arena
) -> None:
    """Invariant 5: a setuid, world-writable file made in an owned path leaves nothing on the host."""
    run, before, after = writes
    # The sandbox may set the bit on its own file; what matters is the host never keeps or runs it.
    assert run.report["setuid_on_owned"]["chmod"] == "ok"
    assert not (arena.runs / run.run.run_id).exists(), "the staging folder outlived the run"
    assert after == before


# --------------------------------------------------------------------------- links and special files


@pytest.mark.invariant(5)
def test_symlink_to_a_host_file_is_not_followed_by_the_collector(links: Any) -> None:
    """Invariant 5: /out/result.json -> a host file (a valid result!) is refused as a link, never read."""
    run, before, after = links
    assert run.report["symlink_result_json"] == "ok"
    output = collected(run)
    assert "result.json" not in output.files
    assert "symbolic link" in output.refused["result.json"]
    assert_no_host_bytes(output)
    assert after == before


@pytest.mark.invariant(5)
def test_symlink_to_a_secret_under_the_bundle_name_is_refused(links: Any) -> None:
    """Invariant 5: /out/result.bundle -> /etc/shadow is refused as a link."""
    run, _before, _after = links
    assert run.report["symlink_bundle"] == "ok"
    assert "symbolic link" in collected(run).refused["result.bundle"]


@pytest.mark.invariant(5)
def test_directory_symlinks_are_not_followed_by_collection_or_cleanup(
    links: Any, arena: Arena
) -> None:
    """Invariant 5: a link to / in /out and one to a host folder in an owned path: refused, host folder intact."""
    run, before, after = links
    assert run.report["symlink_dir_in_owned"] == "ok"
    assert run.report["write_through_dir_link"] in ("EROFS", "EACCES")
    assert "symbolic link" in collected(run).refused["rootlink"]
    # The staging folder (with the link to the host folder) was removed without following it.
    assert not (arena.runs / run.run.run_id).exists()
    assert (arena.host.folder / "keep.txt").is_file()
    assert after == before


@pytest.mark.invariant(5)
def test_hard_links_are_refused_or_impossible(links: Any) -> None:
    """Invariant 5: a hard link in /out is refused (nlink 2); links from read-only mounts fail with EXDEV."""
    run, _before, _after = links
    assert run.report["hardlink_in_out"] == "ok"
    output = collected(run)
    assert "2 hard links" in output.refused["hardlink"]
    assert "2 hard links" in output.refused["original"]
    assert run.report["hardlink_from_relevant"] == "EXDEV"
    assert run.report["hardlink_from_run_json"] == "EXDEV"


@pytest.mark.invariant(5)
def test_fifo_and_socket_are_refused_without_blocking_the_collector(links: Any) -> None:
    """Invariant 5: a FIFO and a socket where files are collected are refused (no blocking open); mknod fails."""
    run, _before, _after = links
    assert run.report["fifo"] == "ok"
    assert run.report["socket"] == "ok"
    output = collected(run)
    assert "FIFO" in output.refused["fifo"]
    assert "socket" in output.refused["socket"]
    assert run.report["mknod_char"] == "EPERM"


@pytest.mark.invariant(7)
def test_sparse_terabyte_file_is_stopped_and_oversized_output_refused(links: Any) -> None:
    """Invariant 7: a 1 TB sparse file fails (RLIMIT_FSIZE); the largest allowed one is over the read cap."""
    run, _before, _after = links
    assert run.report["sparse_1tb"] == "EFBIG"
    assert run.report["fsize_limit"] == 8 * MIB
    assert run.report["sparse_at_limit"] == "ok"
    assert "over the cap" in collected(run).refused["sparse"]


@pytest.mark.invariant(5)
def test_swapping_a_file_and_a_link_cannot_redirect_collection(arena: Arena) -> None:
    """Invariant 5: result.json flipped between file and host link as fast as possible: never host bytes."""
    before = arena.host.state()
    run = arena.probe("flip", str(arena.host.file), "1.5", collect={"result.json": MIB})
    assert run.report["flips"] > 0
    output = collected(run)
    assert_no_host_bytes(output)
    if "result.json" in output.files:
        assert b'"status": "succeeded"' in output.files["result.json"]
    else:
        assert "symbolic link" in output.refused["result.json"]
    assert arena.host.state() == before


@pytest.mark.invariant(5)
def test_collection_is_refused_while_the_sandbox_still_runs(arena: Arena) -> None:
    """Invariant 5: the backend collects only from a stopped sandbox, so no race with a live writer."""
    with arena.started(["python", "-c", "import time; time.sleep(60)"]) as box:
        deadline = time.monotonic() + 20
        while not arena.backend.inspect(box.handle)["State"].get("Running"):
            assert time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.05)
        with pytest.raises(SandboxError, match="still running"):
            arena.backend.collect(box.handle, {"result.json": MIB})


@pytest.mark.invariant(2)
def test_proc_and_sys_are_masked(arena: Arena) -> None:
    """Invariant 2: /proc/kcore, /proc/keys, timer and scheduler files and /sys/firmware show nothing."""
    run = arena.probe("secrets", "no-canary-here")
    proc = run.report["proc"]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"):
        assert proc["reads"][path] in ("empty", "absent", "EACCES", "EPERM"), path
    assert proc["sys_firmware_entries"] == []


@pytest.mark.invariant(4)
def test_mount_table_holds_only_the_planned_mounts(arena: Arena) -> None:
    """Invariant 4: the sandbox's mount table has the planned binds only: no docker.sock, no host folder beyond staging."""
    run = arena.probe("secrets", "no-canary-here", task=probe_task())
    targets = {
        line.split()[4]
        for line in run.report["proc"]["mountinfo"].splitlines()
        if " - ext4 " in line or " - xfs " in line or " - btrfs " in line or " - overlay " in line
    }
    # The engine's own files (/etc/hostname, docker-init) are the only binds not from the plan.
    expected = {
        "/",
        "/work",
        "/work/app/api",
        "/work/app/main.py",
        "/out",
        "/taskbox",
        "/run/taskbox",
    }
    assert (
        targets - {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/usr/sbin/docker-init"}
        == expected
    )
    assert "docker.sock" not in run.report["proc"]["mountinfo"]
