"""The conformance suite every sandbox backend must pass, as plain checks (in the spirit of inspect_ai's self_check).

Each :class:`ConformanceCheck` runs real sandboxes through the real lifecycle
(:func:`~controller.sandbox.lifecycle.run_sandbox`), built by
:func:`~controller.sandbox.spec.build_container_spec` from a real plan and staging
(a :class:`Scene`), and raises :class:`ConformanceError` when the backend falls
short. A check names the container settings it verifies (``verifies``); it runs
on a backend only when the backend declares all of them in ``enforces``, and every
setting of :data:`~controller.sandbox.backend.MANDATORY_SETTINGS` is verified by
at least one check. The checks that need no setting (exit status and log, cancel,
output read without following links, a missing image) run on every backend, and
after each check nothing of the scene's may be left on the engine.

What the suite checks: planned read-only files cannot be written and owned paths
can; nothing unplanned is visible; only ``lo``, no route; uid 10001, no
capability, no-new-privileges; pids, memory (the kill and the cgroup values),
CPU, ulimits, tmpfs, /dev/shm; the environment and working folder; the deadline
kill; cancel; the log cap; output read without following links; label-based
recovery; nothing left behind.

Known gaps:

- Against the fake engine (:mod:`controller.sandbox.fake`) only the checks of the
  settings it declares run (``labels``, ``log_max_bytes``, ``wall_clock_seconds``)
  plus the setting-free ones: the fake runs no process, so it does not pretend to
  enforce users, mounts, network, capabilities or limits. There the suite tests
  the lifecycle and the fake's fidelity, not a kernel.
- ``ipc_mode`` (Docker declares it) has no check: telling a private IPC namespace
  from the host's needs the host's namespace ids, which a remote engine hides.
- Seccomp is the engine's (``taskbox preflight`` checks it), not a spec setting.
- The memory check needs an OOM kill of a child (exit 137): an engine that kills
  the whole sandbox another way must say so in its outcome.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controller.admission import admit
from controller.errors import ImageNotFoundError
from controller.gitrepo import list_tree
from controller.sandbox.backend import EXIT_SIGKILL, MANDATORY_SETTINGS
from controller.sandbox.lifecycle import run_sandbox
from controller.sandbox.spec import (
    LABEL_RUN,
    ContainerSpec,
    build_container_spec,
)
from controller.sandbox.task_sandbox import run_config_for
from controller.staging import remove_staging, stage_run
from taskbox_wire.paths import WORKDIR

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy
    from controller.sandbox.backend import SandboxBackend
    from controller.sandbox.fake import Exit, FakeSandbox
    from taskbox_wire.contract import Task

log = logging.getLogger(__name__)

#: The label that tells a fake engine which of the suite's commands a sandbox runs.
SCENARIO_LABEL = "taskbox.conformance"
#: The prefix of the probe's report line.
REPORT_PREFIX = "TASKBOX-CONFORMANCE "
#: Deadline of the deadline check: short, so the suite stays fast.
DEADLINE_SECONDS = 1
#: A deadline killed sandbox must be gone within this (the kill is a SIGKILL, not a stop).
KILL_GRACE_SECONDS = 10
#: Environment variable names that look like a credential: none may be inside.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|DOCKER_HOST", re.IGNORECASE)


class ConformanceError(AssertionError):
    """A backend does not do what the sandbox contract says."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


# --------------------------------------------------------------------------- the scene


@dataclass
class Scene:
    """One task planned and staged as a real run's; each :meth:`spec` gets a fresh staging.

    ``host_file`` is a host file outside every mount (a planted link aims at it);
    ``extra_labels`` go on every sandbox (the tests' cleanup label).
    """

    task: Task
    repo: Path
    policies_dir: Path
    policy_name: str
    runs_dir: Path
    host_file: Path
    controller_id: str = field(default_factory=lambda: f"conformance-{secrets.token_hex(4)}")
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    top: Path = field(init=False)
    policy: Policy = field(init=False)
    plan: MountPlan = field(init=False)
    image: str = field(init=False)
    """The image admission picks for the task (what a real run of it would use)."""
    unplanned: list[str] = field(init=False)
    """Files of the base commit that are not planned: none may be visible inside."""
    _roots: list[Path] = field(default_factory=list, init=False, repr=False)
    probe_reports: dict[int, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    """The probe's report per backend (by ``id``): one probe sandbox serves every kernel check."""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        admission = admit(
            self.task,
            repo=self.repo,
            base_ref="HEAD",
            policies_dir=self.policies_dir,
            policy_name=self.policy_name,
        )
        self.top, self.policy, self.plan = admission.repo, admission.policy, admission.plan
        self.image = admission.image
        planned = self.visible_files()
        tree = list_tree(self.top, admission.base_commit)
        self.unplanned = sorted(path for path in tree if path not in planned)

    def visible_files(self) -> set[str]:
        """The files a sandbox of this plan must see under ``/work``: staged ones and owned placeholders."""
        owned_files = {e.path for e in self.plan.read_write if e.kind == "file"}
        return {s.path for s in self.plan.staged} | owned_files

    def spec(
        self,
        command: list[str],
        *,
        scenario: str,
        wall_clock_seconds: int | None = None,
        image: str | None = None,
    ) -> ContainerSpec:
        """The spec of a fresh run of this task with ``command`` (its own run id and staging)."""
        run_id = f"conf-{secrets.token_hex(6)}"
        root = self.runs_dir / run_id
        with self._lock:
            self._roots.append(root)
        staging = stage_run(
            repo=self.top,
            plan=self.plan,
            policy=self.policy,
            root=root / "stage",
            run_config_json=run_config_for(
                self.task, self.plan, self.policy, run_id
            ).dump_for_sandbox(),
        )
        spec = build_container_spec(
            policy=self.policy,
            plan=self.plan,
            staging=staging,
            image=image or self.image,
            run_id=run_id,
            command=command,
            controller_id=self.controller_id,
        )
        update: dict[str, Any] = {
            "labels": {**spec.labels, **self.extra_labels, SCENARIO_LABEL: scenario}
        }
        if wall_clock_seconds is not None:
            update["wall_clock_seconds"] = wall_clock_seconds
        return spec.model_copy(update=update)

    def cleanup(self) -> None:
        """Remove every staging folder this scene made."""
        with self._lock:
            roots, self._roots = self._roots, []
        for root in roots:
            remove_staging(root)


# --------------------------------------------------------------------------- the probe

#: Runs inside one sandbox (the image's Python, standard library only) and prints one report line.
PROBE_CODE = r"""
import errno, json, os, re, socket, sys
params = json.loads(sys.argv[1])
report = {}

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

def fs(path):
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"error": code(exc)}
    return {"size": st.f_blocks * st.f_frsize, "noexec": bool(st.f_flag & os.ST_NOEXEC),
            "nosuid": bool(st.f_flag & os.ST_NOSUID), "nodev": bool(st.f_flag & os.ST_NODEV),
            "uid": os.stat(path).st_uid}

def write(path, mode):
    try:
        with open(path, mode) as handle:
            handle.write("conformance\n")
        return "written"
    except OSError as exc:
        return code(exc)

status = {}
with open("/proc/self/status") as handle:
    for line in handle:
        key, _, value = line.partition(":")
        status[key] = value.strip()
report.update(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), cwd=os.getcwd(),
              env=dict(os.environ), interfaces=sorted(os.listdir("/sys/class/net")),
              caps={k: status.get(k) for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")},
              no_new_privs=status.get("NoNewPrivs"))
try:
    socket.create_connection(("192.0.2.1", 80), timeout=2).close()
    report["connect"] = "connected"
except OSError as exc:
    report["connect"] = code(exc)
files = []
for root, dirs, names in os.walk(params["workdir"]):
    files += [os.path.relpath(os.path.join(root, n), params["workdir"]) for n in names]
report["files"] = sorted(files)
report["unplanned"] = [p for p in params["unplanned"] if os.path.lexists(os.path.join(params["workdir"], p))]
report["writes"] = {p: write(p, "a") for p in params["must_not_write"]}
# A write can fail for want of permission alone; the mount itself must be read-only.
report["read_only_mounts"] = {p: bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in params["read_only_mounts"]}
report["owned_writes"] = {p: write(p, "a") for p in params["must_write"]}
limits = {}
with open("/proc/self/limits") as handle:
    for line in handle:
        match = re.match(r"(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)", line)
        if match:
            limits[match.group(1)] = [match.group(2), match.group(3)]
report["limits"] = limits
report["tmpfs"] = {t: fs(t) for t in params["tmpfs"]}
report["shm"] = fs("/dev/shm")
report["pids_max"] = read("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max")
report["memory_max"] = read("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
report["memsw_max"] = read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
report["swap_max"] = read("/sys/fs/cgroup/memory.swap.max")
report["cpu_max"] = read("/sys/fs/cgroup/cpu.max")
report["cpu_quota"] = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us")
report["cpu_period"] = read("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us")
# Fork until the pids limit says no; the children wait on a pipe and leave when it closes.
r, w = os.pipe()
forks, fork_error = 0, None
while forks < params["fork_ceiling"]:
    try:
        pid = os.fork()
    except OSError as exc:
        fork_error = code(exc)
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    forks += 1
os.close(w)
for _ in range(forks):
    os.wait()
report.update(forks=forks, fork_error=fork_error)
print(sys.argv[2] + json.dumps(report), flush=True)
"""


_PROBE_LOCK = threading.Lock()


def _probe(backend: SandboxBackend, scene: Scene) -> dict[str, Any]:
    """Run the probe once per backend and scene; every kernel check reads the same report."""
    with _PROBE_LOCK:
        cached = scene.probe_reports.get(id(backend))
    if cached is not None:
        return cached
    owned = scene.plan.read_write
    read_only = [e.path for e in scene.plan.read_only if e.kind == "file" and e.exists_at_base]
    params = {
        "workdir": WORKDIR,
        "unplanned": scene.unplanned,
        "must_not_write": [
            *(f"{WORKDIR}/{p}" for p in read_only),
            f"{WORKDIR}/conformance-new.txt",
            "/usr/conformance-new.txt",
            "/etc/passwd",
        ],
        "read_only_mounts": [*(f"{WORKDIR}/{p}" for p in read_only), WORKDIR, "/", "/usr"],
        "must_write": [
            *(f"{WORKDIR}/{e.path}" for e in owned if e.kind == "file"),
            *(f"{WORKDIR}/{e.path}/conformance-new.txt" for e in owned if e.kind == "dir"),
            "/out/conformance.txt",
        ],
        "tmpfs": [t.path for t in scene.policy.tmpfs],
        "fork_ceiling": scene.policy.limits.pids * 2,
    }
    spec = scene.spec(
        ["python", "-c", PROBE_CODE, json.dumps(params), REPORT_PREFIX], scenario="probe"
    )
    run = run_sandbox(backend, spec)
    lines = [ln for ln in run.outcome.log_tail.splitlines() if ln.startswith(REPORT_PREFIX)]
    _expect(
        run.outcome.exit_code == 0 and bool(lines),
        f"the probe sandbox {run.outcome.describe()}: {run.outcome.log_tail[-500:]}",
    )
    report: dict[str, Any] = json.loads(lines[-1][len(REPORT_PREFIX) :])
    report["spec"] = spec
    with _PROBE_LOCK:
        scene.probe_reports[id(backend)] = report
    return report


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class ConformanceCheck:
    """One check of the suite: what it verifies, and the function that raises when a backend fails it."""

    name: str
    verifies: frozenset[str]
    """The ContainerSpec settings this check verifies; it runs on backends that declare them all."""
    run: Callable[[SandboxBackend, Scene], None]

    @property
    def summary(self) -> str:
        """The first line of the check function's docstring."""
        return (self.run.__doc__ or self.name).strip().splitlines()[0]

    def applies_to(self, enforces: frozenset[str]) -> bool:
        """Whether a backend that enforces ``enforces`` must pass this check."""
        return self.verifies <= enforces


def check_user(backend: SandboxBackend, scene: Scene) -> None:
    """The command runs as the policy's uid and gid (10001), never as root."""
    report = _probe(backend, scene)
    seen, wanted = (report["uid"], report["gid"]), (scene.policy.uid, scene.policy.gid)
    _expect(seen == wanted and report["uid"] != 0, f"runs as {seen}, not {wanted}")


def check_capabilities(backend: SandboxBackend, scene: Scene) -> None:
    """No capability at all: effective, permitted and bounding sets are empty (CapEff 0)."""
    caps = _probe(backend, scene)["caps"]
    held = {k: v for k, v in caps.items() if k != "CapAmb" or v is not None}
    _expect(
        all(v is not None and int(v, 16) == 0 for v in held.values()),
        f"capabilities are held: {caps}",
    )


def check_no_new_privileges(backend: SandboxBackend, scene: Scene) -> None:
    """no-new-privileges is set: a setuid binary cannot raise the command's privileges."""
    seen = _probe(backend, scene)["no_new_privs"]
    _expect(seen == "1", f"NoNewPrivs is {seen!r}, not 1")


def check_network(backend: SandboxBackend, scene: Scene) -> None:
    """No network: only the loopback interface, and a connection out finds no route."""
    report = _probe(backend, scene)
    _expect(report["interfaces"] == ["lo"], f"interfaces inside: {report['interfaces']}")
    _expect(report["connect"] == "ENETUNREACH", f"a connection out gave {report['connect']}")


def check_read_only_paths(backend: SandboxBackend, scene: Scene) -> None:
    """A planned read-only file, the rest of /work and the root file system cannot be written."""
    report = _probe(backend, scene)
    writes = report["writes"]
    written = [path for path, result in writes.items() if result == "written"]
    _expect(not written, f"written although read-only: {written}")
    _expect(bool(writes), "the probe tried no read-only path")
    writable = [path for path, read_only in report["read_only_mounts"].items() if not read_only]
    _expect(not writable, f"mounted writable although planned read-only: {writable}")


def check_owned_paths_writable(backend: SandboxBackend, scene: Scene) -> None:
    """Every owned file and folder, and /out, can be written by the command."""
    writes = _probe(backend, scene)["owned_writes"]
    refused = {path: result for path, result in writes.items() if result != "written"}
    _expect(not refused, f"owned paths not writable: {refused}")
    _expect(len(writes) > 1, f"the probe wrote no owned path: {writes}")


def check_nothing_unplanned(backend: SandboxBackend, scene: Scene) -> None:
    """/work holds exactly the planned files: nothing unplanned, denied or absent from the plan."""
    report = _probe(backend, scene)
    _expect(report["unplanned"] == [], f"unplanned paths visible: {report['unplanned']}")
    expected = sorted(scene.visible_files())
    _expect(report["files"] == expected, f"/work holds {report['files']}, planned {expected}")


def check_pids_limit(backend: SandboxBackend, scene: Scene) -> None:
    """The pids limit holds: forking stops with EAGAIN below it, and the cgroup says the limit."""
    report = _probe(backend, scene)
    limit = report["spec"].pids_limit
    _expect(report["pids_max"] == str(limit), f"pids.max is {report['pids_max']}, not {limit}")
    _expect(
        report["fork_error"] == "EAGAIN" and report["forks"] < limit,
        f"forked {report['forks']} children (limit {limit}), stopped by {report['fork_error']}",
    )


def check_memory_limits(backend: SandboxBackend, scene: Scene) -> None:
    """The cgroup holds the memory limit, and swap adds nothing past it."""
    report = _probe(backend, scene)
    spec: ContainerSpec = report["spec"]
    _expect(
        report["memory_max"] == str(spec.memory_bytes),
        f"memory limit is {report['memory_max']}, not {spec.memory_bytes}",
    )
    if report["swap_max"] is not None:  # cgroup v2: swap on top of memory
        wanted = str(spec.memory_swap_bytes - spec.memory_bytes)
        _expect(report["swap_max"] == wanted, f"swap.max is {report['swap_max']}, not {wanted}")
    elif report["memsw_max"] is not None:  # cgroup v1: memory and swap together
        _expect(
            report["memsw_max"] == str(spec.memory_swap_bytes),
            f"memsw limit is {report['memsw_max']}, not {spec.memory_swap_bytes}",
        )
    else:
        log.warning("no swap accounting on this engine: the swap limit is not verifiable")


def check_memory_kill(backend: SandboxBackend, scene: Scene) -> None:
    """Allocating past the memory limit gets the command killed, and the outcome says out of memory."""
    spec = scene.spec(
        ["python", "-c", "blocks = []\nwhile True: blocks.append(bytes(8 * 1024 * 1024))"],
        scenario="memory",
    )
    outcome = run_sandbox(backend, spec).outcome
    _expect(
        outcome.exit_code == EXIT_SIGKILL and outcome.oom_killed and not outcome.timed_out,
        f"allocating past the limit: {outcome.describe()}",
    )


def _cores(report: Mapping[str, Any]) -> float | None:
    if report.get("cpu_max"):
        limit, _, period = str(report["cpu_max"]).partition(" ")
        return None if limit == "max" else int(limit) / int(period)
    if report.get("cpu_quota") and report.get("cpu_period"):
        quota = int(report["cpu_quota"])
        return None if quota < 0 else quota / int(report["cpu_period"])
    return None


def check_cpu_limit(backend: SandboxBackend, scene: Scene) -> None:
    """The CPU quota is the spec's (in cores)."""
    report = _probe(backend, scene)
    wanted = report["spec"].nano_cpus / 1e9
    cores = _cores(report)
    _expect(
        cores is not None and abs(cores - wanted) < 0.01,  # noqa: PLR2004 - rounding of the quota
        f"CPU quota is {cores} cores, not {wanted}",
    )


_LIMIT_NAMES = {
    "nofile": "Max open files",
    "fsize": "Max file size",
    "core": "Max core file size",
    "nproc": "Max processes",
}


def check_ulimits(backend: SandboxBackend, scene: Scene) -> None:
    """Each ulimit of the spec (open files, file size, core) holds, soft and hard."""
    report = _probe(backend, scene)
    for ulimit in report["spec"].ulimits:
        seen = report["limits"].get(_LIMIT_NAMES[ulimit.name])
        wanted = [str(ulimit.soft), str(ulimit.hard)]
        _expect(seen == wanted, f"{ulimit.name} is {seen}, not {wanted}")


def check_tmpfs(backend: SandboxBackend, scene: Scene) -> None:
    """Each tmpfs has its size, is noexec, nosuid and nodev, and belongs to the sandbox user."""
    report = _probe(backend, scene)
    for mount in report["spec"].tmpfs:
        seen = report["tmpfs"].get(mount.target)
        wanted = {
            "size": mount.size_bytes,
            "noexec": True,
            "nosuid": True,
            "nodev": True,
            "uid": mount.uid,
        }
        _expect(seen == wanted, f"tmpfs {mount.target} is {seen}, not {wanted}")


def check_shm(backend: SandboxBackend, scene: Scene) -> None:
    """The shared-memory tmpfs (/dev/shm) has the spec's size."""
    report = _probe(backend, scene)
    size = (report["shm"] or {}).get("size")
    _expect(size == report["spec"].shm_bytes, f"/dev/shm is {size} bytes")  # noqa: S108


def check_environment(backend: SandboxBackend, scene: Scene) -> None:
    """The environment holds the spec's variables and nothing that looks like a credential."""
    report = _probe(backend, scene)
    env: dict[str, str] = report["env"]
    spec: ContainerSpec = report["spec"]
    wrong = {k: env.get(k) for k, v in spec.environment.items() if env.get(k) != v}
    _expect(not wrong, f"variables differ from the spec: {wrong}")
    leaked = sorted(
        name
        for name in env
        if name not in spec.environment
        and (_SECRET_NAME.search(name) or name.startswith(("TASKBOX_", "ANTHROPIC_")))
    )
    _expect(not leaked, f"variables that did not come from the spec: {leaked}")


def check_working_dir(backend: SandboxBackend, scene: Scene) -> None:
    """The command starts in the spec's working folder."""
    report = _probe(backend, scene)
    _expect(report["cwd"] == report["spec"].working_dir, f"starts in {report['cwd']}")


def check_init(backend: SandboxBackend, scene: Scene) -> None:
    """An init is PID 1 (it reaps and passes signals on); the command is not."""
    pid = _probe(backend, scene)["pid"]
    _expect(pid != 1, "the command is PID 1: no init")


def check_exit_status_and_log(backend: SandboxBackend, scene: Scene) -> None:
    """The exit status and both output streams come back; the run names its sandbox and image."""
    seen: list[str] = []
    spec = scene.spec(
        ["sh", "-c", "echo conformance-out; echo conformance-err >&2; exit 3"], scenario="exit"
    )
    run = run_sandbox(backend, spec, on_log=seen.append)
    outcome, streamed = run.outcome, "".join(seen)
    _expect(outcome.exit_code == 3, f"exit status: {outcome.describe()}")  # noqa: PLR2004 - the script's
    _expect(
        "conformance-out" in streamed and "conformance-err" in streamed,
        f"streamed log: {streamed!r}",
    )
    _expect("conformance-err" in outcome.log_tail, f"log tail: {outcome.log_tail!r}")
    _expect(
        not (outcome.timed_out or outcome.oom_killed or run.cancelled),
        f"a plain exit reported as {outcome.describe()} (cancelled={run.cancelled})",
    )
    _expect(
        run.handle.name == spec.name and run.handle.run_id == spec.labels[LABEL_RUN],
        f"the handle {run.handle} does not name the spec's sandbox",
    )
    _expect(bool(run.image_id) and bool(run.inspect), "no image id or inspect recorded")


def check_deadline_kill(backend: SandboxBackend, scene: Scene) -> None:
    """Past its deadline a sandbox that ignores SIGTERM is killed, reported timed out, and not collected."""
    spec = scene.spec(
        ["sh", "-c", "echo started; echo '{}' > /out/result.json; trap '' TERM; sleep 30"],
        scenario="deadline",
        wall_clock_seconds=DEADLINE_SECONDS,
    )
    started = time.monotonic()
    run = run_sandbox(backend, spec, collect={"result.json": 1000})
    elapsed = time.monotonic() - started
    outcome = run.outcome
    _expect(outcome.timed_out, f"past the deadline: {outcome.describe()}")
    _expect(
        DEADLINE_SECONDS <= outcome.duration_seconds < DEADLINE_SECONDS + KILL_GRACE_SECONDS
        and elapsed < DEADLINE_SECONDS + KILL_GRACE_SECONDS,
        f"killed after {outcome.duration_seconds} s (call took {elapsed:.1f} s)",
    )
    _expect(not outcome.oom_killed, "a deadline kill reported as out of memory")
    _expect(
        not (run.output.files or run.output.refused),
        f"a timed-out sandbox's output was collected: {run.output}",
    )


def check_cancel(backend: SandboxBackend, scene: Scene) -> None:
    """A cancel removes the running sandbox at once; its output is not collected."""
    cancel = threading.Event()
    spec = scene.spec(["sh", "-c", "echo '{}' > /out/result.json; sleep 30"], scenario="cancel")
    started = time.monotonic()
    run = run_sandbox(
        backend, spec, collect={"result.json": 1000}, cancel=cancel, on_started=cancel.set
    )
    elapsed = time.monotonic() - started
    _expect(run.cancelled, "the run does not say it was cancelled")
    _expect(elapsed < KILL_GRACE_SECONDS, f"a cancel took {elapsed:.1f} s")
    _expect(not run.outcome.timed_out, f"a cancel reported as {run.outcome.describe()}")
    _expect(
        not (run.output.files or run.output.refused),
        f"a cancelled sandbox's output was collected: {run.output}",
    )


def check_log_cap(backend: SandboxBackend, scene: Scene) -> None:
    """Output past the log cap is cut: exactly the cap is streamed, the outcome says so, the tail is kept."""
    placeholder = scene.spec(["true"], scenario="log-cap")
    flood = placeholder.log_max_bytes + 64 * 1024
    spec = placeholder.model_copy(
        update={"command": ["sh", "-c", f"head -c {flood} /dev/zero | tr '\\0' x; echo; echo END"]}
    )
    seen: list[str] = []
    outcome = run_sandbox(backend, spec, on_log=seen.append).outcome
    streamed = sum(len(chunk.encode()) for chunk in seen)
    _expect(outcome.exit_code == 0, f"the flood {outcome.describe()}")
    _expect(
        streamed == spec.log_max_bytes and outcome.log_truncated,
        f"streamed {streamed} bytes of {flood} against a cap of {spec.log_max_bytes} "
        f"(truncated={outcome.log_truncated})",
    )
    _expect(outcome.log_tail.rstrip().endswith("END"), "the log tail lost the end of the output")


#: What the output check asks for (name -> cap) and what a hostile command leaves under each name.
OUTPUT_CAPS = {
    "result.json": 4096,  # a symbolic link to a host file
    "result.bundle": 4096,  # a plain file: accepted
    "progress.fifo": 4096,  # a FIFO: a reader that opened it would block
    "big.bin": 1024,  # 2048 bytes, over its cap
    "linked": 4096,  # a second hard link of another file
    "absent.txt": 16,  # never written
}
OUTPUT_ACCEPTED = {"result.bundle": b'{"ok": true}'}


def check_output_without_links(backend: SandboxBackend, scene: Scene) -> None:
    """Output is read without following links: a symlinked result.json, a FIFO, a hard link, an oversized file are refused."""
    script = (
        "printf '{\"ok\": true}' > /out/result.bundle"
        f" && ln -s '{scene.host_file}' /out/result.json"
        " && mkfifo /out/progress.fifo"
        " && head -c 2048 /dev/zero > /out/big.bin"
        " && echo x > /out/a && ln /out/a /out/linked"
    )
    before = scene.host_file.read_bytes()
    run = run_sandbox(
        backend, scene.spec(["sh", "-c", script], scenario="output"), collect=OUTPUT_CAPS
    )
    output = run.output
    _expect(run.outcome.exit_code == 0, f"the output script {run.outcome.describe()}")
    _expect(output.files == OUTPUT_ACCEPTED, f"accepted: {sorted(output.files)}")
    refused = {"result.json", "progress.fifo", "big.bin", "linked"}
    _expect(set(output.refused) == refused, f"refused: {output.refused}")
    _expect(
        "link" in output.refused["result.json"], f"result.json: {output.refused['result.json']}"
    )
    _expect(output.missing == ["absent.txt"], f"missing: {output.missing}")
    _expect(scene.host_file.read_bytes() == before, "the host file behind the link changed")


def check_recovery_by_labels(backend: SandboxBackend, scene: Scene) -> None:
    """A sandbox left behind is found by its labels (run, task, controller) and removed by them."""
    spec = scene.spec(["sleep", "30"], scenario="recovery")
    handle = backend.create(spec)
    try:
        found = backend.find_orphans(scene.controller_id)
        _expect([o.id for o in found] == [handle.id], f"found {found}, created {handle}")
        orphan = found[0]
        _expect(
            (orphan.run_id, orphan.task_key, orphan.controller_id)
            == (handle.run_id, scene.plan.task_key, scene.controller_id),
            f"the labels read back wrong: {orphan}",
        )
        removed = backend.remove_orphans(scene.controller_id)
        _expect([o.id for o in removed] == [handle.id], f"removed {removed}")
        _expect(backend.find_orphans(scene.controller_id) == [], "the orphan is still listed")
    finally:
        backend.remove(handle)  # removing a gone sandbox is not an error


def check_missing_image(backend: SandboxBackend, scene: Scene) -> None:
    """A missing image is ImageNotFoundError before anything runs, and nothing is left."""
    spec = scene.spec(
        ["true"],
        scenario="missing-image",
        image=f"taskbox-conformance-missing:{secrets.token_hex(4)}",
    )
    try:
        run_sandbox(backend, spec)
    except ImageNotFoundError:
        return
    raise ConformanceError(f"a sandbox of the missing image {spec.image} ran")


def _check(
    name: str, run: Callable[[SandboxBackend, Scene], None], *settings: str
) -> ConformanceCheck:
    return ConformanceCheck(name=name, verifies=frozenset(settings), run=run)


#: The whole suite, in the order it runs.
CHECKS: tuple[ConformanceCheck, ...] = (
    _check("exit-status-and-log", check_exit_status_and_log),
    _check("user", check_user, "user"),
    _check("capabilities", check_capabilities, "cap_drop", "privileged"),
    _check("no-new-privileges", check_no_new_privileges, "security_opt"),
    _check("network", check_network, "network_disabled"),
    _check("read-only-paths", check_read_only_paths, "read_only_root", "mounts"),
    _check("owned-paths-writable", check_owned_paths_writable, "mounts"),
    _check("nothing-unplanned", check_nothing_unplanned, "mounts"),
    _check("pids-limit", check_pids_limit, "pids_limit"),
    _check("memory-limits", check_memory_limits, "memory_bytes", "memory_swap_bytes"),
    _check("memory-kill", check_memory_kill, "memory_bytes"),
    _check("cpu-limit", check_cpu_limit, "nano_cpus"),
    _check("ulimits", check_ulimits, "ulimits"),
    _check("tmpfs", check_tmpfs, "tmpfs"),
    _check("shm", check_shm, "shm_bytes"),
    _check("environment", check_environment, "environment"),
    _check("working-dir", check_working_dir, "working_dir"),
    _check("init", check_init, "init"),
    _check("deadline-kill", check_deadline_kill, "wall_clock_seconds"),
    _check("cancel", check_cancel),
    _check("log-cap", check_log_cap, "log_max_bytes"),
    _check("output-without-links", check_output_without_links),
    _check("recovery-by-labels", check_recovery_by_labels, "labels"),
    _check("missing-image", check_missing_image),
)


def checks_for(backend: SandboxBackend) -> list[ConformanceCheck]:
    """The checks ``backend`` must pass: every one whose settings it declares."""
    return [check for check in CHECKS if check.applies_to(backend.enforces)]


def unverified_settings(enforces: frozenset[str]) -> frozenset[str]:
    """Settings declared in ``enforces`` that no check verifies (the suite's blind spots)."""
    covered = frozenset().union(*(check.verifies for check in CHECKS))
    return enforces - covered


def run_check(check: ConformanceCheck, backend: SandboxBackend, scene: Scene) -> None:
    """Run one check; then nothing of the scene may be left on the engine (what is, is removed)."""
    check.run(backend, scene)
    left = backend.find_orphans(scene.controller_id)
    if left:
        backend.remove_orphans(scene.controller_id)
    _expect(not left, f"{check.name} left sandboxes behind: {[o.name for o in left]}")


def run_conformance(backend: SandboxBackend, scene: Scene) -> dict[str, str]:
    """Every check ``backend`` must pass, by name: ``"ok"`` or the failure (like inspect_ai's self_check)."""
    results: dict[str, str] = {}
    for check in checks_for(backend):
        try:
            run_check(check, backend, scene)
        except ConformanceError as exc:
            results[check.name] = str(exc)
        else:
            results[check.name] = "ok"
    return results


# --------------------------------------------------------------------------- the fake plays along


def fake_handler(scene: Scene) -> Callable[[FakeSandbox], int | Exit]:
    """A FakeEngine handler that plays the suite's commands as a conforming sandbox would.

    Only the scenarios that need no kernel are played; the probe and the memory
    kill are not (the fake does not declare those settings, so they never run on it).
    """

    def handler(sandbox: FakeSandbox) -> int | Exit:
        scenario = sandbox.spec.labels.get(SCENARIO_LABEL)
        if scenario == "exit":
            sandbox.print("conformance-out\n")
            sandbox.print("conformance-err\n")
            return 3
        if scenario == "deadline":
            sandbox.print("started\n")
            sandbox.write("result.json", b"{}\n")
            sandbox.sleep(30)
            return 0
        if scenario == "cancel":
            sandbox.write("result.json", b"{}\n")
            sandbox.run_until_removed()
            return 0
        if scenario == "log-cap":
            flood = re.search(r"head -c (\d+)", sandbox.spec.command[-1])
            sandbox.print("x" * int(flood.group(1) if flood else 0) + "\nEND\n")
            return 0
        if scenario == "missing-image":  # a conforming engine never gets here: `true`
            return 0
        if scenario == "output":
            sandbox.write("result.bundle", OUTPUT_ACCEPTED["result.bundle"])
            sandbox.symlink("result.json", str(scene.host_file))
            sandbox.fifo("progress.fifo")
            sandbox.write("big.bin", bytes(2048))
            first = sandbox.write("a", b"x\n")
            (sandbox.out_dir / "linked").hardlink_to(first)
            return 0
        raise ConformanceError(f"the fake engine cannot play the scenario {scenario!r}")

    return handler


__all__ = [
    "CHECKS",
    "MANDATORY_SETTINGS",
    "ConformanceCheck",
    "ConformanceError",
    "Scene",
    "checks_for",
    "fake_handler",
    "run_check",
    "run_conformance",
    "unverified_settings",
]
