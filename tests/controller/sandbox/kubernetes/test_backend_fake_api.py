"""The Kubernetes backend's client layer against a fake API server over real HTTP: lifecycle, deadline, orphans, out.tar.

The real lightkube client and the real exchange (uvicorn on loopback) are used; only
the cluster is fake (``fake_api.py``), and a kubelet handler plays each Pod's side.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import socket
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from taskbox_runner.podio import stage_in

from controller.errors import ImageNotFoundError, SandboxError
from controller.hostcheck import Level
from controller.judge import CandidateJudge, JudgeRecord
from controller.preflight import check_backend_settings
from controller.sandbox import conformance
from controller.sandbox.backend import EXIT_SIGKILL, MANDATORY_SETTINGS, missing_mandatory
from controller.sandbox.conformance import OUTPUT_ACCEPTED, SCENARIO_LABEL, Scene
from controller.sandbox.engines import open_engine
from controller.sandbox.kubernetes.backend import (
    REDACTED,
    KubernetesBackend,
    pack_stage,
    read_out_tar,
)
from controller.sandbox.kubernetes.client import kube_client, raw_client
from controller.sandbox.kubernetes.exchange import Exchange, ExchangeServer
from controller.sandbox.kubernetes.target import KubernetesTarget
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import (
    LABEL_CONTROLLER,
    LABEL_MANAGED,
    LABEL_PHASE,
    LABEL_RUN,
    PHASE_JUDGE,
    BindMount,
)
from controller.settings import Settings
from controller.verdict import Verdict
from taskbox_wire.paths import GATEWAY_DIR, JUDGE_KEY_FILE, JUDGE_TESTS_REPORT
from taskbox_wire.pod import ENV_EXCHANGE_TOKEN, ENV_EXCHANGE_URL, EXCHANGE_OUT
from tests.conftest import RepoFactory
from tests.controller.sandbox.conftest import make_scene
from tests.controller.sandbox.kubernetes.fake_api import (
    API_TOKEN,
    PODS,
    POLICIES,
    FakeCluster,
    FakePod,
    fake_config,
    make_app,
    serve,
)
from tests.controller.test_judge import World, sealed
from tests.controller.test_judge import report as judge_report

NAMESPACE = "taskbox"
KNOWN_IMAGE = "taskbox-sandbox:latest"


# --------------------------------------------------------------------------- fixtures


@dataclass
class Rig:
    """A backend on the fake cluster, and the cluster."""

    cluster: FakeCluster
    backend: KubernetesBackend
    exchange: Exchange


@pytest.fixture
def rig() -> Iterator[Rig]:
    """The fake API and the exchange on loopback, and a backend that polls fast."""
    cluster = FakeCluster(namespace=NAMESPACE)
    exchange = Exchange()
    with serve(make_app(cluster)) as url, ExchangeServer(exchange, "127.0.0.1", 0) as server:
        config = fake_config(url)
        client, http = kube_client(config, NAMESPACE), raw_client(config)
        target = KubernetesTarget(
            namespace=NAMESPACE,
            exchange_url=f"http://127.0.0.1:{server.port}",
            exchange_port=server.port,
        )
        backend = KubernetesBackend(
            client, target, exchange, log_http=http, poll_seconds=0.05, delete_wait_seconds=2
        )
        try:
            yield Rig(cluster, backend, exchange)
        finally:
            cluster.join()
            client.close()
            http.close()
            exchange.close()
    assert not [e for e in cluster.errors if not isinstance(e, AssertionError)], cluster.errors


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, policies_dir: Path) -> Iterator[Scene]:
    """The Docker tests' task, planned and staged for real (the specs the backend gets)."""
    root = tmp_path_factory.mktemp("k8s-scene")
    made = make_scene(root, policies_dir, '{"host": "canary"}')
    yield made
    made.cleanup()


def out_tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A tar of the given members (regular files with their bytes, or links, FIFOs, folders)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular file member."""
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    """A member of another tar type (symlink, hard link, FIFO, folder, device)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def playing(*steps: Callable[[FakePod], None]) -> Callable[[FakePod], None]:
    """A kubelet handler: stage in, run, then the given steps in order."""

    def handler(pod: FakePod) -> None:
        pod.stage_in()
        pod.run()
        for step in steps:
            step(pod)

    return handler


# --------------------------------------------------------------------------- the lifecycle


def test_lifecycle_exit_log_and_output(rig: Rig, scene: Scene) -> None:
    """A Pod's log streams, its exit status and its uploaded out.tar come back, and nothing is left."""

    def handler(pod: FakePod) -> None:
        pod.stage_in()
        pod.run()
        pod.print("hello from the pod\n")
        pod.print("second line\n")
        assert pod.upload(out_tar(regular("result.json", b'{"ok": 1}'))).status_code == 204
        pod.exit(3)

    rig.cluster.handler = handler
    spec = scene.spec(["true"], scenario="lifecycle")
    seen: list[str] = []
    created: list[dict[str, object]] = []
    run = run_sandbox(
        rig.backend,
        spec,
        collect={"result.json": 100, "result.bundle": 100},
        on_log=seen.append,
        on_created=created.append,
    )
    assert run.outcome.exit_code == 3
    assert not (run.outcome.timed_out)
    assert not (run.outcome.oom_killed)
    assert not (run.cancelled)
    assert "".join(seen) == "hello from the pod\nsecond line\n"
    assert run.outcome.log_tail.endswith("second line\n")
    assert run.output.files == {"result.json": b'{"ok": 1}'}
    assert run.output.missing == ["result.bundle"]
    assert run.handle.run_id == spec.labels[LABEL_RUN]
    assert run.image_id == spec.image
    assert created
    assert created[0]["kind"] == "Pod"
    init_env = created[0]["spec"]["initContainers"][0]["env"]  # type: ignore[index]
    token = next(e["value"] for e in init_env if e["name"] == "TASKBOX_EXCHANGE_TOKEN")
    assert token == REDACTED
    assert rig.cluster.objects == {PODS: {}, POLICIES: {}}
    assert rig.exchange.runs == []


def test_policy_is_created_before_the_pod_and_removed_after(rig: Rig, scene: Scene) -> None:
    """The NetworkPolicy exists before the Pod is created and is deleted only once the Pod is gone."""
    rig.cluster.handler = playing(lambda pod: pod.exit(0))
    run_sandbox(rig.backend, scene.spec(["true"], scenario="order"))
    calls = [
        (method, path.rsplit("/", 2)[-2] if method == "DELETE" else path.rsplit("/", 1)[-1])
        for method, path in rig.cluster.requests
        if method in ("POST", "DELETE")
    ]
    assert calls[:2] == [("POST", POLICIES), ("POST", PODS)]
    assert calls[-2:] == [("DELETE", PODS), ("DELETE", POLICIES)]


def test_files_reach_the_pod_through_in_tar(rig: Rig, scene: Scene) -> None:
    """in.tar holds the planned tree under its stage sub-paths, no gateway folder, and the out.tar note; the token stays out of the spec."""
    notes: list[dict[str, str]] = []
    members: list[dict[str, tarfile.TarInfo]] = []
    envs: list[str] = []

    def handler(pod: FakePod) -> None:
        pod.stage_in()
        members.append(pod.members())
        notes.append(pod.exchange_note())
        envs.append(json.dumps(pod.manifest))
        pod.run()
        pod.exit(0)

    rig.cluster.handler = handler
    run_sandbox(rig.backend, scene.spec(["true"], scenario="files"))
    names = set(members[0])
    assert {"work/app/readme.md", "work/app/owned/handlers.py", "work/notes.txt"} <= names
    assert "taskbox/exchange.json" in names
    assert "out" in names
    assert members[0]["out"].isdir()
    assert not [n for n in names if n.startswith("gateway") or ".env" in n or "secret" in n]
    assert all(m.isfile() or m.isdir() for m in members[0].values())
    assert all(m.mode & 0o7022 == 0 for m in members[0].values())
    assert notes[0]["url"].endswith("/exchange/" + scene_run_id(envs[0]))
    assert notes[0]["token"] not in envs[0]


def scene_run_id(manifest_json: str) -> str:
    """The run id a Pod manifest is labelled with."""
    manifest = json.loads(manifest_json)
    return str(manifest["metadata"]["labels"][LABEL_RUN])


def test_fetch_waits_for_start(rig: Rig, scene: Scene) -> None:
    """The init container cannot fetch in.tar between create and start: the command cannot run early."""
    fetched = threading.Event()

    def handler(pod: FakePod) -> None:
        pod.stage_in()
        fetched.set()
        pod.run()
        pod.exit(0)

    rig.cluster.handler = handler
    handle = rig.backend.create(scene.spec(["true"], scenario="hold"))
    try:
        assert not fetched.wait(0.5)
        rig.backend.start(handle)
        assert fetched.wait(10)
        assert rig.backend.wait(handle, timeout_seconds=10).exit_code == 0
    finally:
        rig.backend.remove(handle)


def test_deadline_deletes_the_pod(rig: Rig, scene: Scene) -> None:
    """Past the deadline the Pod is deleted, the outcome says timed out, and no output is collected."""

    def handler(pod: FakePod) -> None:
        pod.stage_in()
        pod.run()
        pod.print("started\n")
        pod.sleep(60)

    rig.cluster.handler = handler
    spec = scene.spec(["sleep", "60"], scenario="deadline", wall_clock_seconds=1)
    run = run_sandbox(rig.backend, spec, collect={"result.json": 10})
    assert run.outcome.timed_out
    assert run.outcome.exit_code == EXIT_SIGKILL
    assert not run.outcome.oom_killed
    assert 1 <= run.outcome.duration_seconds < 5
    assert run.outcome.log_tail == "started\n"
    assert run.output.files == {}
    assert run.output.refused == {}
    assert rig.cluster.objects == {PODS: {}, POLICIES: {}}


def test_kubelet_deadline_is_a_timeout(rig: Rig, scene: Scene) -> None:
    """A Pod the kubelet failed with DeadlineExceeded is reported timed out, not as an exit."""
    rig.cluster.handler = playing(lambda pod: pod.deadline_exceeded())
    outcome = run_sandbox(rig.backend, scene.spec(["true"], scenario="kubelet-deadline")).outcome
    assert outcome.timed_out
    assert not outcome.oom_killed


def test_oom_killed_is_confirmed(rig: Rig, scene: Scene) -> None:
    """The main container's OOMKilled reason is a confirmed OOM kill."""
    rig.cluster.handler = playing(lambda pod: pod.exit(EXIT_SIGKILL, "OOMKilled"))
    outcome = run_sandbox(rig.backend, scene.spec(["true"], scenario="oom")).outcome
    assert (outcome.exit_code, outcome.oom_killed, outcome.oom_confirmed) == (
        EXIT_SIGKILL,
        True,
        True,
    )


def test_missing_image(rig: Rig, scene: Scene) -> None:
    """An image the kubelet cannot pull is ImageNotFoundError, and nothing is left."""
    rig.cluster.handler = lambda pod: pod.image_missing()
    with pytest.raises(ImageNotFoundError, match="ErrImagePull"):
        run_sandbox(rig.backend, scene.spec(["true"], scenario="image"))
    assert rig.cluster.objects == {PODS: {}, POLICIES: {}}


def test_failed_stage_in(rig: Rig, scene: Scene) -> None:
    """A Pod whose init container failed never ran its command: SandboxError, and nothing is left."""

    def handler(pod: FakePod) -> None:
        pod.stage_in()
        pod.fail_stage_in(2)

    rig.cluster.handler = handler
    with pytest.raises(SandboxError, match="stage-in step failed"):
        run_sandbox(rig.backend, scene.spec(["true"], scenario="stage-in"))
    assert rig.cluster.objects == {PODS: {}, POLICIES: {}}


def test_pod_refused_leaves_no_policy(rig: Rig, scene: Scene) -> None:
    """When the API refuses the Pod, its NetworkPolicy and exchange entry are removed again."""
    spec = scene.spec(["true"], scenario="refused")
    rig.cluster.objects[PODS]["taken"] = {"metadata": {"name": "taken"}}
    handle = rig.backend.create(spec)
    rig.backend.remove(handle)
    clash = spec.model_copy(update={"name": "taken"})
    with pytest.raises(SandboxError, match="refused to create"):
        rig.backend.create(clash)
    assert rig.cluster.objects[POLICIES] == {}
    assert rig.exchange.runs == []


def test_cancel_removes_the_pod(rig: Rig, scene: Scene) -> None:
    """A cancel deletes the running Pod at once and nothing is collected."""
    rig.cluster.handler = playing(lambda pod: pod.sleep(60))
    cancel = threading.Event()
    run = run_sandbox(
        rig.backend,
        scene.spec(["sleep", "60"], scenario="cancel"),
        collect={"result.json": 10},
        cancel=cancel,
        on_started=cancel.set,
    )
    assert run.cancelled
    assert run.output.files == {}
    assert rig.cluster.objects == {PODS: {}, POLICIES: {}}


def test_log_cap(rig: Rig, scene: Scene) -> None:
    """Past the log cap nothing more is streamed, the outcome says so, and the tail keeps the end."""
    spec = scene.spec(["true"], scenario="log-cap")
    flood = spec.log_max_bytes + 10_000
    rig.cluster.handler = playing(
        lambda pod: pod.print(b"x" * flood + b"\nEND\n"), lambda pod: pod.exit(0)
    )
    seen: list[str] = []
    outcome = run_sandbox(rig.backend, spec, on_log=seen.append).outcome
    assert sum(len(c.encode()) for c in seen) == spec.log_max_bytes
    assert outcome.log_truncated
    assert outcome.log_tail.endswith("END\n")


# --------------------------------------------------------------------------- orphans


def test_orphans_by_label(rig: Rig, scene: Scene) -> None:
    """Pods and run NetworkPolicies are found by label per controller; removal takes both, not the deny-all policy."""
    ours = rig.backend.create(scene.spec(["true"], scenario="orphan"))
    rig.cluster.objects[POLICIES]["taskbox-deny-all"] = {
        "metadata": {"name": "taskbox-deny-all", "labels": {LABEL_MANAGED: "1"}},
    }
    lone = {
        "metadata": {
            "name": "taskbox-lone",
            "uid": "u-lone",
            "labels": {
                LABEL_MANAGED: "1",
                LABEL_RUN: "lone-run",
                LABEL_CONTROLLER: scene.controller_id,
            },
        }
    }
    rig.cluster.objects[POLICIES]["taskbox-lone"] = lone
    other = {
        "metadata": {
            "name": "taskbox-other",
            "uid": "u-other",
            "labels": {LABEL_MANAGED: "1", LABEL_RUN: "x", LABEL_CONTROLLER: "someone-else"},
        }
    }
    rig.cluster.objects[PODS]["taskbox-other"] = other
    found = rig.backend.find_orphans(scene.controller_id)
    assert sorted(o.id for o in found) == sorted([ours.id, "u-lone"])
    pod_orphan = next(o for o in found if o.id == ours.id)
    assert (pod_orphan.run_id, pod_orphan.task_key, pod_orphan.controller_id) == (
        ours.run_id,
        scene.plan.task_key,
        scene.controller_id,
    )
    assert {o.id for o in rig.backend.find_orphans()} == {ours.id, "u-lone", "u-other"}
    removed = rig.backend.remove_orphans(scene.controller_id)
    assert sorted(o.id for o in removed) == sorted([ours.id, "u-lone"])
    assert rig.backend.find_orphans(scene.controller_id) == []
    assert set(rig.cluster.objects[POLICIES]) == {"taskbox-deny-all"}
    assert set(rig.cluster.objects[PODS]) == {"taskbox-other"}
    assert rig.exchange.runs == []
    rig.backend.remove(ours)  # gone already: fine


def test_policy_outlives_a_slow_pod(rig: Rig, scene: Scene) -> None:
    """A Pod still terminating when remove gives up keeps its NetworkPolicy; recovery removes the policy once the Pod is gone."""
    rig.cluster.termination_seconds = 1.0
    rig.backend._delete_wait = 0.2
    handle = rig.backend.create(scene.spec(["true"], scenario="slow"))
    name = next(iter(rig.cluster.objects[PODS]))
    rig.backend.remove(handle)
    assert set(rig.cluster.objects[POLICIES]) == {name}
    assert "deletionTimestamp" in rig.cluster.objects[PODS][name]["metadata"]
    rig.backend._delete_wait = 5
    found = rig.backend.remove_orphans(scene.controller_id)
    assert [o.name for o in found] == [name]
    assert rig.cluster.objects == {PODS: {}, POLICIES: {}}


def test_remove_twice_and_missing_objects(rig: Rig, scene: Scene) -> None:
    """Removing a sandbox whose Pod and policy are already gone is not an error."""
    handle = rig.backend.create(scene.spec(["true"], scenario="gone"))
    rig.cluster.objects[PODS].clear()
    rig.cluster.objects[POLICIES].clear()
    rig.backend.remove(handle)
    rig.backend.remove(handle)
    assert rig.exchange.runs == []


# --------------------------------------------------------------------------- out.tar


CAPS = {
    "result.json": 64,
    "result.bundle": 64,
    "big.bin": 16,
    "linked": 64,
    "progress.fifo": 64,
    "gone": 8,
}


def test_out_tar_refusals() -> None:
    """Links, hard links and their target, FIFOs, oversize and duplicates are refused; traversal and unknown names are ignored."""
    data = out_tar(
        special("result.json", tarfile.SYMTYPE, "/etc/passwd"),
        regular("a", b"x"),
        special("linked", tarfile.LNKTYPE, "a"),
        regular("result.bundle", b"ok"),
        special("progress.fifo", tarfile.FIFOTYPE),
        regular("big.bin", b"0" * 17),
        regular("../gone", b"escape"),
        regular("sub/gone", b"nested"),
        regular("unknown", b"?"),
    )
    output = read_out_tar(data, CAPS)
    assert output.files == {"result.bundle": b"ok"}
    assert set(output.refused) == {"result.json", "linked", "progress.fifo", "big.bin"}
    assert "symbolic link" in output.refused["result.json"]
    assert "hard link" in output.refused["linked"]
    assert "FIFO" in output.refused["progress.fifo"]
    assert "over the cap" in output.refused["big.bin"]
    assert output.missing == ["gone"]


def test_out_tar_hard_link_target_is_refused_too() -> None:
    """A regular file another member hard-links to is refused, as a file with two links is on Docker."""
    output = read_out_tar(
        out_tar(regular("result.json", b"{}"), special("copy", tarfile.LNKTYPE, "./result.json")),
        {"result.json": 10},
    )
    assert output.files == {}
    assert "another hard link" in output.refused["result.json"]


def test_out_tar_duplicates_dirs_devices() -> None:
    """A name twice, a folder and a device under an asked name are refused; ./name is the name."""
    output = read_out_tar(
        out_tar(
            regular("twice", b"1"),
            regular("./twice", b"2"),
            special("folder", tarfile.DIRTYPE),
            special("dev", tarfile.CHRTYPE),
            regular("./plain", b"fine"),
        ),
        {"twice": 8, "folder": 8, "dev": 8, "plain": 8},
    )
    assert output.files == {"plain": b"fine"}
    assert "2 times" in output.refused["twice"]
    assert "directory" in output.refused["folder"]
    assert "character device" in output.refused["dev"]


def test_out_tar_not_a_tar() -> None:
    """Bytes that are not an uncompressed tar refuse every asked name; a gzip is never inflated."""
    for data in (b"not a tar at all" * 100, gzip.compress(out_tar(regular("result.json", b"{}")))):
        output = read_out_tar(data, {"result.json": 10})
        assert output.files == {}
        assert "not a readable tar" in output.refused["result.json"]


def test_out_tar_size_lies() -> None:
    """A member whose header claims more bytes than the tar holds is refused, not padded."""
    whole = out_tar(regular("result.json", b"A" * 600))
    cut = whole[: 512 + 100]  # the header and part of the data
    output = read_out_tar(cut, {"result.json": 1000})
    assert "result.json" in output.refused
    assert output.files == {}


def test_collect_refuses_an_oversized_upload(rig: Rig, scene: Scene) -> None:
    """An out.tar past the exchange's cap is answered 413 and every output file is refused."""
    rig.backend._out_cap = 2048
    statuses: list[int] = []

    def handler(pod: FakePod) -> None:
        pod.stage_in()
        pod.run()
        statuses.append(pod.upload(out_tar(regular("result.json", b"x" * 4096))).status_code)
        pod.exit(0)

    rig.cluster.handler = handler
    run = run_sandbox(
        rig.backend, scene.spec(["true"], scenario="big"), collect={"result.json": 10_000}
    )
    assert statuses == [413]
    assert "cap" in run.output.refused["result.json"]


def test_collect_before_the_end_is_refused(rig: Rig, scene: Scene) -> None:
    """Collecting from a Pod whose command still runs is SandboxError."""
    running = threading.Event()
    rig.cluster.handler = playing(lambda _: running.set(), lambda pod: pod.sleep(30))
    handle = rig.backend.create(scene.spec(["true"], scenario="early"))
    try:
        rig.backend.start(handle)
        assert running.wait(10)
        with pytest.raises(SandboxError, match="still running"):
            rig.backend.collect(handle, {"result.json": 10})
    finally:
        rig.backend.remove(handle)


def test_pack_stage_leaves_out_links_and_gateway(tmp_path: Path) -> None:
    """pack_stage packs folders and regular files only (no symlink, no FIFO), normalises modes, skips the gateway."""
    work = tmp_path / "work"
    (work / "app").mkdir(parents=True)
    (work / "app" / "x.py").write_text("x = 1\n")
    (work / "app" / "x.py").chmod(0o4777)
    (work / "link").symlink_to("/etc/passwd")
    os.mkfifo(work / "fifo")
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    (gateway / "gateway.sock").write_text("")
    data = pack_stage(
        [
            BindMount(source=work, target="/work", read_only=True),
            BindMount(source=work / "app", target="/work/app", read_only=False),
            BindMount(source=gateway, target=GATEWAY_DIR, read_only=True),
        ],
        {"taskbox/exchange.json": b"{}"},
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"work", "work/app", "work/app/x.py", "taskbox/exchange.json"}
    assert members["work/app/x.py"].mode == 0o755
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


# --------------------------------------------------------------------------- the conformance suite's non-probe checks

#: The suite's checks that need no kernel inside the sandbox: the fake cluster can play them.
#: The probe's checks (user, capabilities, mounts, limits, ...) need a real Pod: test_real_cluster.py.
NON_PROBE = (
    "exit-status-and-log",
    "memory-kill",
    "deadline-kill",
    "cancel",
    "log-cap",
    "output-without-links",
    "recovery-by-labels",
    "missing-image",
)


def conformance_kubelet(scene: Scene) -> Callable[[FakePod], None]:
    """A kubelet handler that plays the suite's commands as a conforming cluster would."""

    def handler(pod: FakePod) -> None:
        labels = pod.manifest["metadata"]["labels"]
        scenario = labels.get(SCENARIO_LABEL)
        image = pod.manifest["spec"]["containers"][0]["image"]
        if image not in (scene.image, KNOWN_IMAGE):
            pod.image_missing()
            return
        if scenario == "recovery":
            pod.sleep(60)  # never started: the fetch would wait
            return
        pod.stage_in()
        pod.run()
        if scenario == "exit":
            pod.print("conformance-out\n")
            pod.print("conformance-err\n")
            pod.exit(3)
        elif scenario in ("deadline", "cancel"):
            pod.print("started\n")
            pod.sleep(60)
        elif scenario == "log-cap":
            command = pod.manifest["spec"]["containers"][0]["command"][-1]
            flood = int(command.split("head -c ")[1].split()[0])
            pod.print(b"x" * flood + b"\nEND\n")
            pod.exit(0)
        elif scenario == "memory":
            pod.exit(EXIT_SIGKILL, "OOMKilled")
        elif scenario == "output":
            accepted = OUTPUT_ACCEPTED["result.bundle"]
            pod.upload(
                out_tar(
                    regular("result.bundle", accepted),
                    special("result.json", tarfile.SYMTYPE, str(scene.host_file)),
                    special("progress.fifo", tarfile.FIFOTYPE),
                    regular("big.bin", bytes(2048)),
                    regular("a", b"x\n"),
                    special("linked", tarfile.LNKTYPE, "a"),
                )
            )
            pod.exit(0)
        else:
            raise AssertionError(f"no such scenario {scenario!r}")

    return handler


@pytest.mark.parametrize("name", NON_PROBE)
def test_conformance_non_probe(rig: Rig, scene: Scene, name: str) -> None:
    """The conformance suite's checks that need no kernel pass against the backend on the fake cluster."""
    check = next(c for c in conformance.CHECKS if c.name == name)
    assert check.applies_to(rig.backend.enforces)
    rig.cluster.handler = conformance_kubelet(scene)
    conformance.run_check(check, rig.backend, scene)
    assert rig.cluster.objects == {PODS: {}, POLICIES: {}}


def test_enforces_is_honest(rig: Rig) -> None:
    """The backend claims neither no-network nor tmpfs nor pids, and declares the narrower forms it has instead."""
    declared = rig.backend.enforces
    assert MANDATORY_SETTINGS - declared == {"network_disabled", "tmpfs", "pids_limit"}
    assert {"network_gateway_only", "tmpfs_size", "pids_rlimit", "ulimits"} <= declared
    assert missing_mandatory(declared) == frozenset()


def test_without_user_namespaces_the_pids_limit_is_not_claimed(rig: Rig) -> None:
    """RLIMIT_NPROC is a per-sandbox cap only in the Pod's own user namespace: without one, preflight refuses the backend."""
    shared_uids = KubernetesBackend(
        rig.backend._client,
        rig.backend._target.model_copy(update={"user_namespaces": False}),
        rig.exchange,
        log_http=rig.backend._http,
    )
    assert "pids_rlimit" not in shared_uids.enforces
    assert missing_mandatory(shared_uids.enforces) == {"pids_limit"}
    check = check_backend_settings(shared_uids)
    assert check.level is Level.REFUSE
    assert "pids_limit" in check.summary
    accepted = check_backend_settings(rig.backend)
    assert accepted.level is Level.OK
    assert "network_gateway_only for network_disabled" in accepted.summary


# --------------------------------------------------------------------------- open_engine


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_open_engine_kubernetes(tmp_path: Path, scene: Scene) -> None:
    """TASKBOX_SANDBOX_BACKEND=kubernetes opens the cluster of a kubeconfig file; the exchange binds only with the first Pod."""
    cluster = FakeCluster(namespace=NAMESPACE)
    cluster.handler = playing(lambda pod: pod.print("via open_engine\n"), lambda pod: pod.exit(0))
    port = _free_port()
    with serve(make_app(cluster)) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": url}}],
                    "users": [{"name": "fake", "user": {"token": API_TOKEN}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        settings = Settings(
            sandbox_backend="kubernetes",
            kubernetes_kubeconfig=kubeconfig,
            kubernetes_namespace=NAMESPACE,
            kubernetes_exchange_host="127.0.0.1",
            kubernetes_exchange_port=port,
            kubernetes_exchange_url=f"http://127.0.0.1:{port}",
            kubernetes_image="registry.example/taskbox-sandbox@sha256:" + "0" * 64,
        )
        engine = open_engine(settings)
        try:
            assert engine.name == "kubernetes"
            engine.ping()
            info, _ = engine.facts()
            assert info["ServerVersion"] == "v1.37.0-fake"
            with socket.socket() as probe:  # not bound yet: no Pod was made
                assert probe.connect_ex(("127.0.0.1", port)) != 0
            assert engine.images.image_id(settings.image) == settings.kubernetes_image
            assert engine.images.image_id("taskbox-deps-unknown:1") is None
            spec = scene.spec(["true"], scenario="engine")
            seen: list[str] = []
            run = run_sandbox(engine.backend, spec, on_log=seen.append)
            assert run.outcome.exit_code == 0
            assert "".join(seen) == "via open_engine\n"
            assert cluster.objects == {PODS: {}, POLICIES: {}}
        finally:
            engine.close()
            cluster.join()
    assert not cluster.errors, cluster.errors


# --------------------------------------------------------------------------- wiring: RuntimeClass


def test_the_policys_runtime_class_wins_over_the_controllers(rig: Rig, scene: Scene) -> None:
    """A spec naming a RuntimeClass gets it on its Pod; a spec naming none gets the controller-wide one."""
    created: list[dict[str, Any]] = []
    rig.cluster.handler = playing(lambda pod: pod.exit(0))
    backend = KubernetesBackend(
        rig.backend._client,
        rig.backend._target,
        rig.exchange,
        log_http=rig.backend._http,
        runtime_class="kata",
        poll_seconds=0.05,
        delete_wait_seconds=2,
    )
    gvisor = scene.spec(["true"], scenario="rc-policy").model_copy(
        update={"runtime_class": "gvisor"}
    )
    run_sandbox(backend, gvisor, on_created=created.append)
    run_sandbox(backend, scene.spec(["true"], scenario="rc-none"), on_created=created.append)
    classes = [pod["spec"].get("runtimeClassName") for pod in created]
    assert classes == ["gvisor", "kata"]


# --------------------------------------------------------------------------- wiring: the judge's Pod


@dataclass
class JudgePodSeen:
    """What the fake kubelet found in the judge's Pod after podio's stage-in."""

    key_mode: int | None = None
    key_owner: int | None = None
    had_gateway_port: bool = True


def judge_kubelet(
    stage: Path, seen: JudgePodSeen, *, forge: bool = False
) -> Callable[[FakePod], None]:
    """The judge's Pod: stage in with podio, take the key, seal the static report, send tests.json.

    ``forge``: the Pod never got the key (or throws it away) and seals with one of its own.
    """

    def play(pod: FakePod) -> None:
        env = pod.init_env()
        stage.mkdir()
        stage_in(env[ENV_EXCHANGE_URL], env[ENV_EXCHANGE_TOKEN], stage)
        pod.run()
        key_file = stage / "out" / JUDGE_KEY_FILE
        st = key_file.stat()
        seen.key_mode, seen.key_owner = stat.S_IMODE(st.st_mode), st.st_uid
        key = bytes.fromhex(key_file.read_text())
        key_file.unlink()  # as the in-sandbox judge does, before any model code
        if forge:
            key = secrets.token_bytes(32)
        pod.print("INFO taskbox_runner.verify.harness: verifying /work\n")
        pod.print(sealed(judge_report(), key))
        note = json.loads((stage / "taskbox" / "exchange.json").read_text())
        sent = httpx2.put(
            f"{note['url']}/{EXCHANGE_OUT}",
            content=out_tar(regular(JUDGE_TESTS_REPORT, judge_report())),
            headers={"Authorization": f"Bearer {note['token']}"},
            timeout=30,
        )
        assert sent.status_code == 204
        pod.exit(0)

    def handler(pod: FakePod) -> None:
        try:
            play(pod)
        except Exception:
            pod.exit(125)  # ends the Pod now, not at the policy's deadline
            raise

    return handler


def _judge_on(rig: Rig, world: World) -> Verdict:
    return CandidateJudge(
        backend=rig.backend,
        plan=world.plan,
        policy=world.policy,
        image=KNOWN_IMAGE,
        run_id="BE-7-run",
        stage_root=world.stage,
        record=JudgeRecord(folder=world.folder, write_json=world.records.__setitem__),
        sink=lambda _event: None,
        cancel=threading.Event(),
        controller_id="test",
        hand_over=False,
    )(world.candidate)


def test_the_judges_pod_gets_its_key_and_its_sealed_report_is_read(
    rig: Rig, make_repo: RepoFactory, tmp_path: Path
) -> None:
    """/out/judge.key reaches the judge's Pod (0600, the unpacking uid's), the sealed line streams to the reader, tests.json comes back: the verdict passes."""
    world = World(make_repo, tmp_path)
    seen = JudgePodSeen()
    rig.cluster.handler = judge_kubelet(tmp_path / "pod-stage", seen)
    verdict = _judge_on(rig, world)
    assert seen.key_mode == 0o600
    assert seen.key_owner == os.getuid()  # podio's uid: 10001 in a real Pod
    assert verdict.status == "succeeded", verdict.reason
    assert "judge-static.json" in world.records
    assert "judge-tests.json" in world.records
    # Staged without hand-over: nothing was given to the sandbox uid on the host.
    policies = [r for r in rig.cluster.requests if r[0] == "POST" and "networkpolicies" in r[1]]
    assert len(policies) == 1


def test_a_judge_pod_without_the_key_fails_closed(
    rig: Rig, make_repo: RepoFactory, tmp_path: Path
) -> None:
    """A judge Pod that seals with any key but the controller's gets no verdict: failed, whatever its tests say."""
    world = World(make_repo, tmp_path)
    rig.cluster.handler = judge_kubelet(tmp_path / "pod-stage", JudgePodSeen(), forge=True)
    verdict = _judge_on(rig, world)
    assert verdict.status == "failed"
    assert "static report is missing or unusable" in (verdict.reason or "")
    assert "judge-tests.json" not in world.records


def test_the_judges_network_policy_has_no_gateway_port(rig: Rig, scene: Scene) -> None:
    """The judge's Pod is created with a policy that opens the exchange's port alone."""
    judge = scene.spec(["true"], scenario="judge-policy")
    judge = judge.model_copy(
        update={"labels": {**judge.labels, LABEL_PHASE: PHASE_JUDGE}, "name": judge.name + "-j"}
    )
    seen_ports: list[int] = []

    def handler(pod: FakePod) -> None:
        with rig.cluster.lock:
            policy = next(iter(rig.cluster.objects[POLICIES].values()))
        seen_ports.extend(p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"])
        pod.stage_in()
        pod.run()
        pod.exit(0)

    rig.cluster.handler = handler
    run_sandbox(rig.backend, judge)
    assert seen_ports == [rig.backend._target.exchange_port]
