"""The Kubernetes backend's Pod, run for real under ``podman kube play --network none``: what holds inside, what podman ignores.

The Pod is :func:`~controller.sandbox.kubernetes.manifests.build_pod`'s, built from a
real ContainerSpec (the be-python policy, a staged plan). The test's copy of it
differs from the builder's output in exactly these places (asserted, path by path):

- **files in**: with no network the init container cannot fetch ``in.tar`` from the
  exchange, so its command is replaced by an extraction of the *same* tar
  (:func:`~controller.sandbox.kubernetes.backend.pack_stage`'s) from a read-only
  ``hostPath`` folder (``/exchange-in``); its image, user, security context,
  environment and stage mount stay as built;
- **long annotations**: podman 4.3 refuses an annotation value over 63 characters
  (it applies the label limit), so the builder's exact-value annotations that long
  (the policy digest) are left out: nothing in the Pod reads them;
- **sub-paths**: podman 4.3 ignores ``volumeMounts[].subPath`` (it mounts the whole
  volume), so the stage ``emptyDir`` becomes a ``hostPath`` folder and each sub-path
  mount a ``hostPath`` of that sub-folder or file (same targets, same readOnly);
- **the command**: the main container runs a probe (``python -P -c``) instead of the
  wrapped runner, and prints one JSON line of what it sees.

Every other field is the builder's, byte for byte; what podman does not honour of
them is :data:`PODMAN_IGNORES`, and a test asserts podman still ignores exactly those.
"""

from __future__ import annotations

import json
import secrets
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.admission import admit
from controller.image import SANDBOX_IMAGE
from controller.sandbox.kubernetes.backend import pack_stage
from controller.sandbox.kubernetes.manifests import (
    build_network_policy,
    build_pod,
    rlimits,
)
from controller.sandbox.kubernetes.target import KubernetesTarget
from controller.sandbox.spec import PHASE_AGENT, ContainerSpec, build_container_spec
from controller.sandbox.task_sandbox import run_config_for
from controller.settings import PROJECT_ROOT
from controller.staging import remove_staging, stage_run
from taskbox_wire.paths import OUTDIR, RUNNER_COMMAND, TASKBOX_DIR, WORKDIR
from taskbox_wire.pod import (
    ENV_RLIMITS,
    EXCHANGE_CONFIG,
    INIT_CONTAINER,
    MAIN_CONTAINER,
    STAGE_DIR,
    STAGE_VOLUME,
)
from tests.controller.sandbox.conftest import commit_repo_files, make_task
from tests.controller.sandbox.kubernetes import podman as podman_harness
from tests.controller.sandbox.kubernetes.podman import (
    Manifest,
    Podman,
    PodRun,
    bind_sub_paths,
    differences,
    require_podman,
    stage_from_file,
    sub_path_volume,
    tar_kinds,
    with_command,
    without_long_annotations,
)

pytestmark = pytest.mark.podman

#: The probe's report line starts with this.
PREFIX = "TASKBOX-POD-PROBE "
#: A RuntimeClass this machine has not: a podman that honoured the field could not run the Pod.
RUNTIME_CLASS = "gvisor"
#: The deadline Pod's activeDeadlineSeconds, and how long its command outlives it.
DEADLINE_SECONDS = 1
OUTLIVE_SECONDS = 3

#: Runs inside the Pod's main container (the image's Python, standard library only).
PROBE_CODE = r"""import errno, json, os, socket, sys
params = json.loads(sys.argv[1])

def code(exc):
    return errno.errorcode.get(exc.errno, str(exc))

def read(*paths):
    for path in paths:
        try:
            with open(path) as handle:
                return handle.read().strip()
        except OSError:
            continue
    return None

def write(path):
    try:
        with open(path, "a") as handle:
            handle.write("probe\n")
        return "written"
    except OSError as exc:
        return code(exc)

mounts = {}
with open("/proc/self/mountinfo") as handle:
    for line in handle:
        left, _, right = line.partition(" - ")
        fields, more = left.split(), right.split()
        mounts[fields[4]] = {"fstype": more[0], "options": fields[5].split(",")}

def fs(path):
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"error": code(exc)}
    return {"size": st.f_blocks * st.f_frsize, "read_only": bool(st.f_flag & os.ST_RDONLY),
            "noexec": bool(st.f_flag & os.ST_NOEXEC), "nosuid": bool(st.f_flag & os.ST_NOSUID),
            "nodev": bool(st.f_flag & os.ST_NODEV), "uid": os.stat(path).st_uid,
            "fstype": mounts.get(path, {}).get("fstype")}

status = {}
with open("/proc/self/status") as handle:
    for line in handle:
        key, _, value = line.partition(":")
        status[key] = value.strip()
limits = {}
with open("/proc/self/limits") as handle:
    for line in handle.readlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        limits[name] = [soft, hard]
try:
    socket.create_connection(("192.0.2.1", 80), timeout=2).close()
    connect = "connected"
except OSError as exc:
    connect = code(exc)
files = []
for root, dirs, names in os.walk(params["workdir"]):
    files += [os.path.relpath(os.path.join(root, n), params["workdir"]) for n in names]
with open("/proc/net/dev") as handle:
    net_dev = sorted(line.split(":")[0].strip() for line in handle.readlines()[2:])
report = {
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "pid": os.getpid(), "cwd": os.getcwd(),
    "caps": {k: status.get(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "no_new_privs": status.get("NoNewPrivs"), "seccomp": status.get("Seccomp"),
    "uid_map": " ".join(read("/proc/self/uid_map").split()),
    "root_write": write("/probe-root.txt"), "root": fs("/"),
    "read_only_writes": {p: write(p) for p in params["read_only"]},
    "read_only_mounts": {p: fs(p)["read_only"] for p in params["read_only_mounts"]},
    "owned_writes": {p: write(p) for p in params["writable"]},
    "files": sorted(files),
    "tmpfs": {p: fs(p) for p in params["tmpfs"]},
    "shm": fs("/dev/shm"),
    "memory_max": read("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
    "memsw_max": read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "/sys/fs/cgroup/memory.swap.max"),
    "pids_max": read("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "cpu_quota": read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"),
    "cpu_period": read("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us"),
    "cpu_max": read("/sys/fs/cgroup/cpu.max"),
    "limits": limits,
    "interfaces": sorted(os.listdir("/sys/class/net")), "net_dev": net_dev, "connect": connect,
    "resolv_conf": read("/etc/resolv.conf"),
    "env": dict(os.environ),
    "service_account": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount"),
}
print(sys.argv[2] + json.dumps(report, sort_keys=True), flush=True)
"""


# --------------------------------------------------------------------------- what podman ignores


@dataclass(frozen=True)
class Ignored:
    """A field of the builder's manifests that podman 4.3 does not honour, and how the test sees it."""

    field: str
    reason: str


#: Every field of the builder's Pod and NetworkPolicy that podman 4.3 does not honour (observed
#: below, each one); the first it refuses outright.
PODMAN_IGNORES: tuple[Ignored, ...] = (
    Ignored(
        "metadata.annotations",
        "not ignored but refused: a value over 63 characters fails the play ('value length "
        "exceeds Kubernetetes max 63'); Kubernetes allows 256 KiB. The test leaves such "
        "annotations out (the builder's exact policy digest)",
    ),
    Ignored(
        "NetworkPolicy",
        "podman has no NetworkPolicy kind (alone: 'does not contain any supported kube kind'; "
        "beside a Pod: skipped silently). Here --network none isolates the Pod instead.",
    ),
    Ignored(
        "spec.activeDeadlineSeconds",
        "no deadline: a container outlives it and exits on its own",
    ),
    Ignored(
        "spec.runtimeClassName",
        "the Pod runs under podman's default OCI runtime (runc) whatever class it names",
    ),
    Ignored(
        "spec.volumes[].emptyDir.medium",
        "Memory is not honoured: an emptyDir is a named volume on the host's disk, not a tmpfs",
    ),
    Ignored(
        "spec.volumes[].emptyDir.sizeLimit",
        "no size cap: the emptyDir's size is the host file system's",
    ),
    Ignored(
        "spec.containers[].volumeMounts[].subPath",
        "podman 4.3 mounts the whole volume (subPath came in 4.4): the test binds each "
        "sub-path as its own hostPath instead",
    ),
    Ignored(
        "spec.containers[].resources.limits.ephemeral-storage",
        "no storage cap or eviction: the container's DiskQuota stays 0",
    ),
    Ignored(
        "spec.dnsConfig",
        "recorded on the Pod, but with --network none podman writes the host's resolv.conf; "
        "no lookup can leave anyway (no interface but lo)",
    ),
    Ignored(
        "spec.terminationGracePeriodSeconds",
        "a stop still waits podman's default 10 s before SIGKILL",
    ),
)


def _ignored_fields() -> set[str]:
    return {entry.field for entry in PODMAN_IGNORES}


# --------------------------------------------------------------------------- the scene


@dataclass
class Scene:
    """One staged be-python task, its ContainerSpec, the builder's manifests and ``in.tar``."""

    spec: ContainerSpec
    target: KubernetesTarget
    run_id: str
    network_policy: Manifest
    pod: Manifest
    in_tar: Path
    read_only_files: list[str]
    owned_files: list[str]
    owned_dirs: list[str]
    visible_files: list[str]
    folder: Path

    def build(self, spec: ContainerSpec, target: KubernetesTarget | None = None) -> Manifest:
        """The builder's Pod for ``spec`` (the scene's run, token and runtime class)."""
        return build_pod(
            spec,
            target or self.target,
            run_id=self.run_id,
            phase=PHASE_AGENT,
            exchange_token=secrets.token_urlsafe(32),
            runtime_class=RUNTIME_CLASS,
        )

    def playable(self, pod: Manifest, name: str, command: list[str]) -> tuple[Manifest, Path]:
        """The test's copy of ``pod``: files in from ``in.tar``, sub-paths bound, ``command`` in the main container."""
        stage = self.folder / f"stage-{name}"
        stage.mkdir(mode=0o755)
        return adapt(pod, stage, self.in_tar, command), stage


def adapt(pod: Manifest, stage: Path, in_tar: Path, command: list[str]) -> Manifest:
    """The test's copy of the builder's ``pod``: every change of the module's docstring, and no other."""
    adapted = without_long_annotations(pod)
    adapted = bind_sub_paths(adapted, STAGE_VOLUME, stage, tar_kinds(in_tar))
    adapted = stage_from_file(adapted, INIT_CONTAINER, STAGE_DIR, in_tar.parent)
    return with_command(adapted, MAIN_CONTAINER, command)


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    """Podman ready to play the sandbox's Pods (skip, or fail under TASKBOX_REQUIRE_PODMAN=1); nothing may be left."""
    harness = require_podman(SANDBOX_IMAGE)
    yield harness
    assert harness.leftovers() == []


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """The sandbox tests' task (owned folder and file, read-only and unplanned files) under be-python, staged for real."""
    root = tmp_path_factory.mktemp("podman")
    repo = commit_repo_files(root / "repo")
    task = make_task()
    admission = admit(
        task,
        repo=repo,
        base_ref="HEAD",
        policies_dir=PROJECT_ROOT / "policies",
        policy_name="be-python",
    )
    policy, plan = admission.policy, admission.plan
    run_id = f"podman-{secrets.token_hex(4)}"
    staging = stage_run(
        repo=admission.repo,
        plan=plan,
        policy=policy,
        root=root / "staging",
        run_config_json=run_config_for(task, plan, policy, run_id).dump_for_sandbox(),
    )
    spec = build_container_spec(
        policy=policy,
        plan=plan,
        staging=staging,
        image=SANDBOX_IMAGE,
        run_id=run_id,
        command=list(RUNNER_COMMAND),
        controller_id="podman-test",
    )
    # The backend's own packing; the note's URL and token lead nowhere (the Pod has no network).
    note = {"url": "http://192.0.2.10:8765/exchange/" + run_id, "token": secrets.token_urlsafe(32)}
    exchange = root / "exchange"
    exchange.mkdir()
    in_tar = exchange / "in.tar"
    in_tar.write_bytes(
        pack_stage(spec.mounts, {EXCHANGE_CONFIG.lstrip("/"): json.dumps(note).encode()})
    )
    target = KubernetesTarget(image=None)
    made = Scene(
        spec=spec,
        target=target,
        run_id=run_id,
        network_policy=build_network_policy(spec, target, phase=PHASE_AGENT),
        pod={},
        in_tar=in_tar,
        read_only_files=[e.path for e in plan.read_only if e.kind == "file" and e.exists_at_base],
        owned_files=[e.path for e in plan.read_write if e.kind == "file"],
        owned_dirs=[e.path for e in plan.read_write if e.kind == "dir"],
        visible_files=sorted(
            {s.path for s in plan.staged} | {e.path for e in plan.read_write if e.kind == "file"}
        ),
        folder=root,
    )
    made.pod = made.build(spec)
    yield made
    remove_staging(root / "staging")


def _probe_params(scene: Scene) -> dict[str, Any]:
    return {
        "workdir": WORKDIR,
        "read_only": [
            *(f"{WORKDIR}/{p}" for p in scene.read_only_files),
            f"{WORKDIR}/probe-new.txt",
            f"{TASKBOX_DIR}/probe-new.txt",
            "/usr/probe-new.txt",
        ],
        "read_only_mounts": [
            *(f"{WORKDIR}/{p}" for p in scene.read_only_files),
            WORKDIR,
            TASKBOX_DIR,
            "/",
        ],
        "writable": [
            *(f"{WORKDIR}/{p}" for p in scene.owned_files),
            *(f"{WORKDIR}/{p}/probe-new.txt" for p in scene.owned_dirs),
            f"{OUTDIR}/probe.txt",
        ],
        "tmpfs": [t.target for t in scene.spec.tmpfs],
    }


@dataclass
class Probed:
    """The probe Pod: what was played, the run, and the probe's report."""

    played: Manifest
    run: PodRun
    report: dict[str, Any]


@pytest.fixture(scope="module")
def probed(podman: Podman, scene: Scene) -> Probed:
    """The builder's Pod (and NetworkPolicy) played once with the probe as its command."""
    command = ["python", "-P", "-c", PROBE_CODE, json.dumps(_probe_params(scene)), PREFIX]
    played, stage = scene.playable(scene.pod, "probe", command)
    run = podman.play([scene.network_policy, played], scene.folder, stage=stage)
    return Probed(played=played, run=run, report=run.report(MAIN_CONTAINER, PREFIX))


# --------------------------------------------------------------------------- the copy is the builder's


def test_the_played_pod_differs_from_the_builders_only_where_the_docstring_says(
    scene: Scene, tmp_path: Path
) -> None:
    """Only the long annotation, the init container's command and added mount, the sub-path mounts, the stage volume, the main command and the added hostPath volumes differ."""
    stage = tmp_path / "stage"
    stage.mkdir()
    adapted = adapt(scene.pod, stage, scene.in_tar, ["true"])
    changed = differences(scene.pod, adapted)
    main_mounts = {m["mountPath"]: m for m in scene.pod["spec"]["containers"][0]["volumeMounts"]}
    sub_paths = {path for path, m in main_mounts.items() if m.get("subPath")}
    bound = {
        f"spec.volumes[{sub_path_volume(STAGE_VOLUME, main_mounts[p]['subPath'])}]"
        for p in sub_paths
    }
    assert sub_paths == {WORKDIR, OUTDIR, TASKBOX_DIR} | {
        f"{WORKDIR}/{p}" for p in [*scene.owned_files, *scene.owned_dirs]
    }
    expected = {
        f"spec.initContainers[{INIT_CONTAINER}].command",
        f"spec.initContainers[{INIT_CONTAINER}].volumeMounts[exchange-in]",
        f"spec.containers[{MAIN_CONTAINER}].command",
        f"spec.containers[{MAIN_CONTAINER}].volumeMounts",
        f"spec.volumes[{STAGE_VOLUME}].emptyDir",
        f"spec.volumes[{STAGE_VOLUME}].hostPath",
        "spec.volumes[exchange-in]",
        *bound,
    }
    annotations = scene.pod["metadata"].get("annotations", {})
    long_annotations = {k for k, v in annotations.items() if len(v) > 63}
    assert long_annotations  # the policy digest: too long for a label, kept whole here
    if long_annotations == set(annotations):
        expected.add("metadata.annotations")
    else:
        expected |= {f"metadata.annotations.{k}" for k in long_annotations}
    assert changed == expected
    # The sub-path mounts keep their targets and readOnly; they only lose the sub-path.
    for mount in adapted["spec"]["containers"][0]["volumeMounts"]:
        original = main_mounts[mount["mountPath"]]
        assert {k: v for k, v in original.items() if k not in ("name", "subPath")} == {
            k: v for k, v in mount.items() if k != "name"
        }


# --------------------------------------------------------------------------- what holds inside


def test_the_init_container_staged_in_tar_as_the_pods_user(probed: Probed, scene: Scene) -> None:
    """The init container extracted in.tar into the stage before the main container ran, as uid 10001 of the Pod's user namespace."""
    sandbox = probed.run.containers[MAIN_CONTAINER]
    assert sandbox.exit_code == 0, sandbox.stderr[-2000:]
    stage = probed.run.stage
    assert stage is not None
    with tarfile.open(scene.in_tar) as tar:
        packed = {m.name: tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
        wanted = {name: handle.read() for name, handle in packed.items() if handle}
    # The probe appended one line to each owned file.
    for path in scene.owned_files:
        wanted[f"work/{path}"] += b"probe\n"
    assert {name: (stage / name).read_bytes() for name in wanted} == wanted
    assert len(wanted) >= len(scene.visible_files) + 1  # and the controller's exchange note
    # Made by the init container, not by the harness: owned by 10001 as the user namespace maps it.
    inside, host, _ = (int(part) for part in probed.report["uid_map"].split())
    uid = int(scene.spec.user.split(":")[0])
    assert (stage / EXCHANGE_CONFIG.lstrip("/")).stat().st_uid == host + uid - inside


def test_the_command_runs_as_the_policys_non_root_user(probed: Probed, scene: Scene) -> None:
    """runAsUser/runAsGroup hold: uid and gid 10001 (never root), and no supplementary group of the image's."""
    report = probed.report
    uid, gid = (int(part) for part in scene.spec.user.split(":"))
    assert (report["uid"], report["gid"]) == (uid, gid) != (0, 0)
    assert report["groups"] in ([], [gid])


def test_no_capability_no_new_privileges_and_the_default_seccomp_filter(probed: Probed) -> None:
    """capabilities drop ALL, allowPrivilegeEscalation false and seccomp RuntimeDefault hold: every set empty, NoNewPrivs 1, Seccomp 2."""
    report = probed.report
    assert {k: int(v, 16) for k, v in report["caps"].items()} == dict.fromkeys(report["caps"], 0)
    assert report["no_new_privs"] == "1"
    assert report["seccomp"] == "2"  # SECCOMP_MODE_FILTER


def test_host_users_false_gives_the_pod_its_own_user_namespace(probed: Probed) -> None:
    """hostUsers: false holds: uid 0 inside maps to an unprivileged host range, not to root, and 10001 is in it."""
    assert probed.played["spec"]["hostUsers"] is False
    inside, host, size = (int(part) for part in probed.report["uid_map"].split())
    assert inside == 0
    assert host > 0
    assert size > probed.report["uid"]


def test_the_root_file_system_and_the_planned_files_are_read_only(
    probed: Probed, scene: Scene
) -> None:
    """readOnlyRootFilesystem and the readOnly sub-path mounts hold: every write is EROFS and the mounts are read-only."""
    report = probed.report
    assert report["root_write"] == "EROFS"
    assert report["read_only_writes"]
    assert set(report["read_only_writes"].values()) == {"EROFS"}, report["read_only_writes"]
    assert all(report["read_only_mounts"].values()), report["read_only_mounts"]
    assert len(report["read_only_mounts"]) == len(scene.read_only_files) + 3


def test_owned_paths_and_out_are_writable(probed: Probed, scene: Scene) -> None:
    """The owned file, a new file in the owned folder, and /out can all be written."""
    writes = probed.report["owned_writes"]
    assert writes == dict.fromkeys(_probe_params(scene)["writable"], "written")
    assert len(writes) == len(scene.owned_files) + len(scene.owned_dirs) + 1


def test_work_holds_exactly_the_planned_files(probed: Probed, scene: Scene) -> None:
    """/work holds the staged files and owned placeholders, nothing unplanned (the probe's own writes aside)."""
    files = [f for f in probed.report["files"] if not f.endswith("probe-new.txt")]
    assert files == scene.visible_files
    assert "secret_plan.txt" not in files
    assert ".env" not in files


def test_memory_and_cpu_limits_reach_the_cgroup(probed: Probed, scene: Scene) -> None:
    """resources.limits memory and cpu hold: memory.limit_in_bytes and the CFS quota are the spec's."""
    report = probed.report
    assert report["memory_max"] == str(scene.spec.memory_bytes)
    if report["cpu_max"]:
        quota, period = report["cpu_max"].split()
    else:
        quota, period = report["cpu_quota"], report["cpu_period"]
    assert int(quota) / int(period) == pytest.approx(scene.spec.nano_cpus / 1e9, abs=0.01)


def test_no_network_but_loopback(probed: Probed) -> None:
    """With --network none the Pod has only lo, and a connection out finds no route."""
    report = probed.report
    assert report["interfaces"] == ["lo"]
    assert report["net_dev"] == ["lo"]
    assert report["connect"] == "ENETUNREACH"


def test_the_environment_is_the_specs_with_no_token(probed: Probed, scene: Scene) -> None:
    """The main container sees the spec's variables and TASKBOX_RLIMITS, no exchange token, no service links."""
    env: dict[str, str] = probed.report["env"]
    assert {k: env.get(k) for k in scene.spec.environment} == scene.spec.environment
    assert json.loads(env[ENV_RLIMITS]) == rlimits(scene.spec, scene.target)
    assert not [k for k in env if "TOKEN" in k or k.endswith(("_SERVICE_HOST", "_PORT"))]
    assert probed.report["service_account"] is False
    assert probed.report["cwd"] == scene.spec.working_dir


# --------------------------------------------------------------------------- what a Pod cannot say


def test_what_no_pod_field_carries_is_the_in_pod_helpers_or_the_engines(
    probed: Probed, scene: Scene
) -> None:
    """pids, ulimits, init and tmpfs options have no Pod field: with the helper replaced by the probe, podman's defaults show."""
    report = probed.report
    # No pids field in a Pod (the kubelet's podPidsLimit): podman sets none.
    assert report["pids_max"] == "max"
    # No ulimit field: TASKBOX_RLIMITS is the in-pod helper's to set, and the probe runs without
    # the helper, so podman's defaults show instead (file size unlimited, nproc from containers.conf).
    wanted = rlimits(scene.spec, scene.target)
    assert report["limits"]["Max file size"] != [str(v) for v in wanted["fsize"]]
    assert report["limits"]["Max processes"] != [str(v) for v in wanted["nproc"]]
    # No swap field (a Guaranteed-QoS Pod gets no swap from the kubelet): podman caps none.
    assert int(report["memsw_max"]) > scene.spec.memory_swap_bytes
    # No init field: the command (here the probe; in production the helper) is PID 1.
    assert report["pid"] == 1
    # No mount options on an emptyDir (bindMountOptions is alpha and off here): exec is allowed.
    assert not any(fs["noexec"] for fs in report["tmpfs"].values())
    assert len(report["tmpfs"]) == len(scene.spec.tmpfs)


# --------------------------------------------------------------------------- what podman ignores


@pytest.fixture(scope="module")
def deadline_run(podman: Podman, scene: Scene) -> PodRun:
    """The builder's Pod with a 1-second activeDeadlineSeconds, whose command sleeps past it."""
    spec = scene.spec.model_copy(update={"wall_clock_seconds": DEADLINE_SECONDS})
    pod = scene.build(spec, scene.target.model_copy(update={"deadline_grace_seconds": 0}))
    assert pod["spec"]["activeDeadlineSeconds"] == DEADLINE_SECONDS
    command = ["sh", "-c", f"sleep {OUTLIVE_SECONDS}; echo outlived"]
    played, stage = scene.playable(pod, "deadline", command)
    return podman.play([played], scene.folder, stage=stage)


def _observed_ignored(
    podman: Podman, scene: Scene, probed: Probed, deadline_run: PodRun, folder: Path
) -> dict[str, bool]:
    """Each field of PODMAN_IGNORES and whether podman was seen to ignore it."""
    report = probed.report
    sandbox = probed.run.containers[MAIN_CONTAINER]
    tmpfs = {t.target: t for t in scene.spec.tmpfs}
    # A NetworkPolicy alone: podman says it knows no such kind.
    alone = folder / "network-policy.yaml"
    alone.write_text(json.dumps(scene.network_policy))  # JSON is YAML
    refused = podman.run("kube", "play", "--network", "none", str(alone))
    # The builder's Pod as built, created (not started): podman refuses it for its annotation;
    # without that, where podman mounts each sub-path.
    as_built = podman.create([scene.pod], folder)
    created = podman.create([without_long_annotations(scene.pod)], folder)
    mounts = {m["Destination"]: m for m in created.mounts}
    whole_volume = mounts[WORKDIR]["Source"] == mounts[OUTDIR]["Source"] and not any(
        m.get("SubPath") for m in mounts.values()
    )
    deadline = deadline_run.containers[MAIN_CONTAINER]
    nameservers = [
        line.split()[1]
        for line in (report["resolv_conf"] or "").splitlines()
        if line.startswith("nameserver")
    ]
    return {
        "metadata.annotations": "value length exceeds" in (as_built.refusal or "")
        and created.refusal is None,
        "NetworkPolicy": refused.returncode != 0
        and "does not contain any supported kube kind" in refused.stderr,
        "spec.activeDeadlineSeconds": deadline.exit_code == 0
        and "outlived" in deadline.stdout
        and deadline.seconds >= OUTLIVE_SECONDS > DEADLINE_SECONDS,
        "spec.runtimeClassName": sandbox.inspect["OCIRuntime"] != RUNTIME_CLASS,
        "spec.volumes[].emptyDir.medium": all(
            fs["fstype"] != "tmpfs" for fs in [*report["tmpfs"].values(), report["shm"]]
        ),
        "spec.volumes[].emptyDir.sizeLimit": all(
            report["tmpfs"][t]["size"] > tmpfs[t].size_bytes for t in tmpfs
        )
        and report["shm"]["size"] > scene.spec.shm_bytes,
        "spec.containers[].volumeMounts[].subPath": whole_volume,
        "spec.containers[].resources.limits.ephemeral-storage": sandbox.inspect["HostConfig"][
            "DiskQuota"
        ]
        == 0,
        "spec.dnsConfig": nameservers != probed.played["spec"]["dnsConfig"]["nameservers"],
        "spec.terminationGracePeriodSeconds": sandbox.inspect["Config"]["StopTimeout"]
        != probed.played["spec"]["terminationGracePeriodSeconds"],
    }


def test_podman_ignores_exactly_the_listed_fields(
    podman: Podman, scene: Scene, probed: Probed, deadline_run: PodRun, tmp_path: Path
) -> None:
    """Each field of PODMAN_IGNORES is seen ignored; if podman starts honouring one, this fails and names it."""
    observed = _observed_ignored(podman, scene, probed, deadline_run, tmp_path)
    assert set(observed) == _ignored_fields()
    honoured = sorted(name for name, ignored in observed.items() if not ignored)
    assert honoured == [], f"podman now honours {honoured}: take them off PODMAN_IGNORES"


def test_every_ignored_field_is_in_the_builders_manifests(scene: Scene) -> None:
    """PODMAN_IGNORES names only what the builder emits: the list is about this Pod, not podman in general."""
    pod = scene.pod["spec"]
    main = pod["containers"][0]
    assert scene.network_policy["kind"] == "NetworkPolicy"
    assert pod["activeDeadlineSeconds"] > 0
    assert pod["runtimeClassName"] == RUNTIME_CLASS
    memory = [v["emptyDir"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium")]
    assert memory
    assert all(v["medium"] == "Memory" and v["sizeLimit"] for v in memory)
    assert any(m.get("subPath") for m in main["volumeMounts"])
    assert main["resources"]["limits"]["ephemeral-storage"]
    assert pod["dnsPolicy"] == "None"
    assert pod["dnsConfig"]["nameservers"]
    assert pod["terminationGracePeriodSeconds"] >= 0
    assert any(len(v) > 63 for v in scene.pod["metadata"]["annotations"].values())
    assert all(entry.reason for entry in PODMAN_IGNORES)


# --------------------------------------------------------------------------- the harness itself


def test_a_missing_podman_skips_but_fails_under_the_ci_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without podman the tests skip with the reason; with TASKBOX_REQUIRE_PODMAN=1 they fail instead."""
    monkeypatch.setattr(
        podman_harness, "unavailable_reason", lambda image: f"no podman for {image}"
    )
    monkeypatch.delenv(podman_harness.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no podman for img"):
        podman_harness.require_podman("img")
    monkeypatch.setenv(podman_harness.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="TASKBOX_REQUIRE_PODMAN=1 but no podman"):
        podman_harness.require_podman("img")
