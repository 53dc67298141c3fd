"""The Kubernetes sandbox steps (lightkube): a NetworkPolicy then a Pod per sandbox, files through the exchange.

``create`` packs the folders a Docker sandbox would bind-mount into one tar
(:func:`pack_stage`), registers it with the controller's exchange, and creates the
run's NetworkPolicy, then its Pod, from the pure builders of ``manifests.py``.
``start`` releases ``in.tar`` (the Pod cannot start its command before: the init
container's fetch waits for it). ``wait`` follows the main container's log as bytes
and reads the Pod's status until it ends or the deadline passes (then the Pod is
deleted). ``collect`` reads the uploaded ``out.tar`` as untrusted bytes
(:func:`read_out_tar`). ``remove`` deletes the Pod, waits until it is gone, then its
NetworkPolicy (never the other way round: the policy outlives every container).
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, cast

import httpx2
from lightkube import ApiError
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from controller.errors import ImageNotFoundError, SandboxError
from controller.sandbox.backend import (
    EXIT_SIGKILL,
    NETWORK_GATEWAY_ONLY,
    PIDS_RLIMIT,
    TMPFS_SIZE,
    CollectedOutput,
    OrphanContainer,
    SandboxHandle,
    SandboxOutcome,
)
from controller.sandbox.kubernetes.exchange import UploadState
from controller.sandbox.kubernetes.manifests import (
    build_network_policy,
    build_pod,
    exchange_url,
    label_value,
    spec_labels,
)
from controller.sandbox.output import CappedLog
from controller.sandbox.spec import (
    LABEL_CONTROLLER,
    LABEL_MANAGED,
    LABEL_PHASE,
    LABEL_RUN,
    LABEL_TASK,
    PHASE_AGENT,
)
from taskbox_wire.paths import GATEWAY_DIR, TASKBOX_DIR
from taskbox_wire.pod import (
    ENV_EXCHANGE_TOKEN,
    EXCHANGE_CONFIG,
    EXCHANGE_OUT,
    MAIN_CONTAINER,
    stage_subpath,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from lightkube import Client

    from controller.sandbox.kubernetes.exchange import Exchange, ExchangeServer
    from controller.sandbox.kubernetes.target import KubernetesTarget
    from controller.sandbox.spec import BindMount, ContainerSpec

log = logging.getLogger(__name__)

#: What ``inspect`` shows in place of the exchange token.
REDACTED = "<redacted>"
#: How often the Pod's status is read while its command runs (the log stream's end wakes it sooner).
POLL_SECONDS = 1.0
#: How often once the log stream ended (the kubelet reports the exit a moment later).
POLL_AFTER_LOG_SECONDS = 0.1
#: How long a deleted Pod may take to be gone before its NetworkPolicy is left for recovery.
DELETE_WAIT_SECONDS = 30.0
#: The grace the Pod gets on delete: the API has no SIGKILL-only delete; the kubelet sends
#: SIGTERM and SIGKILL after at most this (it rounds a shorter grace up to 2 s).
DELETE_GRACE_SECONDS = 1
#: How often the log is asked for while the main container has not started.
LOG_RETRY_SECONDS = 0.25
#: How long the log reader may lag behind the container's exit.
LOG_JOIN_SECONDS = 5.0
#: The main container's waiting reasons that mean the image cannot be had.
IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
#: Waiting reasons that mean the container can never start.
BROKEN_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
#: The member of ``in.tar`` the controller writes itself (a staged file of that name is left out).
_EXCHANGE_MEMBER = f"{stage_subpath(TASKBOX_DIR)}/{PurePosixPath(EXCHANGE_CONFIG).name}"


# --------------------------------------------------------------------------- in.tar


def _normal_mode(mode: int, *, directory: bool) -> int:
    """Permission bits as the Pod gets them: no setuid/setgid/sticky, nothing writable by group or others."""
    if directory:
        return 0o755
    return stat.S_IMODE(mode) & 0o755


def _add_file(tar: tarfile.TarFile, path: Path, name: str, st: os.stat_result) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        now = os.fstat(handle.fileno())
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise SandboxError(f"the staged file {path} changed while it was packed")
        info = tarfile.TarInfo(name)
        info.size = now.st_size
        info.mode = _normal_mode(now.st_mode, directory=False)
        info.mtime = int(now.st_mtime)
        tar.addfile(info, handle)


def _add_dir(tar: tarfile.TarFile, name: str, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(mtime)
    tar.addfile(info)


def _add_tree(tar: tarfile.TarFile, root: Path, name: str, seen: set[str]) -> None:
    """Add ``root`` (a folder or a file) as ``name``: folders and regular files only, links never followed."""
    st = os.lstat(root)
    if stat.S_ISDIR(st.st_mode):
        if name not in seen:
            seen.add(name)
            _add_dir(tar, name, st.st_mtime)
        with os.scandir(root) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for entry in children:
            _add_tree(tar, root / entry.name, f"{name}/{entry.name}", seen)
    elif stat.S_ISREG(st.st_mode):
        if name in seen or name == _EXCHANGE_MEMBER:
            return
        seen.add(name)
        _add_file(tar, root, name, st)
    else:
        # Staging writes regular files only; anything else is not the planned tree.
        log.warning("not packed for the Pod (not a regular file or folder): %s", root)


def _covered(mount: BindMount, others: Sequence[BindMount]) -> bool:
    """Whether another mount already packs ``mount``'s source at the same place (an owned path under /work)."""
    for other in others:
        if other is mount or not mount.target.startswith(other.target.rstrip("/") + "/"):
            continue
        rest = mount.target[len(other.target.rstrip("/")) + 1 :]
        if mount.source == other.source / rest:
            return True
    return False


def pack_stage(mounts: Sequence[BindMount], extra: Mapping[str, bytes]) -> bytes:
    """The Pod's ``in.tar``: each mount's host source under its stage sub-path, plus ``extra`` files.

    The gateway's folder is not packed (a Pod reaches the gateway over TCP). Only
    folders and regular files go in, with normalised modes and no owner; links and
    special files are left out. A mount inside another whose source is the same
    folder (an owned path under ``/work``) is packed once. Raises SandboxError for a
    mount the Pod cannot have.
    """
    buffer = io.BytesIO()
    seen: set[str] = set()
    wanted = [
        m for m in mounts if m.target != GATEWAY_DIR and not m.target.startswith(GATEWAY_DIR + "/")
    ]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for mount in sorted(wanted, key=lambda m: m.target):
            try:
                name = stage_subpath(mount.target)
            except ValueError as exc:
                raise SandboxError(f"a Pod cannot have the mount {mount.target}: {exc}") from exc
            if _covered(mount, wanted):
                continue
            try:
                _add_tree(tar, mount.source, name, seen)
            except OSError as exc:
                raise SandboxError(
                    f"cannot pack {mount.source} for the Pod: {exc.strerror}"
                ) from exc
        for name, data in sorted(extra.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o444
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --------------------------------------------------------------------------- out.tar


def _member_kind(member: tarfile.TarInfo) -> str | None:  # noqa: PLR0911 - one return per kind reads best
    """Why a member is not a plain regular file, or None when it is one."""
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r}), not a regular file"
    if member.islnk():
        return "is a hard link to another file, not a regular file with one link"
    if member.isdir():
        return "is a directory, not a regular file"
    if member.isfifo():
        return "is a FIFO, not a regular file"
    if member.ischr():
        return "is a character device, not a regular file"
    if member.isblk():
        return "is a block device, not a regular file"
    if member.issparse():
        return "is a sparse file, not a plain regular file"
    if not member.isreg():
        return f"is of tar type {member.type!r}, not a regular file"
    return None


def _plain_name(name: str) -> str:
    return name.removeprefix("./")


def read_out_tar(data: bytes, caps: Mapping[str, int]) -> CollectedOutput:
    """Read ``caps``' files (name -> size cap) from an uploaded ``out.tar``, trusting nothing in it.

    Only uncompressed tars are read (nothing is inflated). A name is accepted when
    exactly one member has it, that member is a regular file no hard link points
    at, and its size is within the cap; links, folders, devices, FIFOs, sparse and
    duplicated members are refused with a reason, and members under a folder or
    with a name not asked for (``../x``, ``a/b``) are ignored. Same result shape as
    :func:`controller.sandbox.output.read_output_files`.
    """
    for name in caps:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a plain file name")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            return _read_members(tar, members, caps)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        reason = f"out.tar is not a readable tar ({type(exc).__name__})"
        log.warning("the uploaded %s is refused: %s", EXCHANGE_OUT, exc)
        return CollectedOutput(refused=dict.fromkeys(caps, reason))


def _read_members(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], caps: Mapping[str, int]
) -> CollectedOutput:
    by_name: dict[str, list[tarfile.TarInfo]] = {}
    linked_to: set[str] = set()
    ignored: list[str] = []
    for member in members:
        name = _plain_name(member.name)
        if member.islnk():
            linked_to.add(_plain_name(member.linkname))
        if name in caps:
            by_name.setdefault(name, []).append(member)
        elif name not in ("", "."):
            ignored.append(name)
    if ignored:
        log.warning(
            "out.tar holds %d member(s) not asked for, ignored: %s",
            len(ignored),
            ", ".join(repr(n) for n in ignored[:10]),
        )
    files: dict[str, bytes] = {}
    refused: dict[str, str] = {}
    missing: list[str] = []
    for name, cap in caps.items():
        found = by_name.get(name, [])
        if not found:
            missing.append(name)
            continue
        reason = _refusal(tar, found, name, cap, linked_to)
        if isinstance(reason, bytes):
            files[name] = reason
        else:
            refused[name] = reason
            log.warning("output file %s refused: %s", name, reason)
    return CollectedOutput(files=files, refused=refused, missing=missing)


def _refusal(  # noqa: PLR0911 - one return per refusal reads best
    tar: tarfile.TarFile, found: list[tarfile.TarInfo], name: str, cap: int, linked_to: set[str]
) -> bytes | str:
    """The member's bytes, or why it is refused."""
    if len(found) > 1:
        return f"appears {len(found)} times in out.tar"
    member = found[0]
    kind = _member_kind(member)
    if kind is not None:
        return kind
    if name in linked_to:
        return "has another hard link in out.tar; only a file with one link is accepted"
    if member.size > cap:
        return f"is {member.size} bytes, over the cap of {cap}"
    handle = tar.extractfile(member)
    if handle is None:
        return "cannot be read from out.tar"
    content = handle.read(cap + 1)
    if len(content) != member.size:
        return "is cut short in out.tar"
    return content


# --------------------------------------------------------------------------- the log


class _PodLog(CappedLog):
    """Follows the main container's log as bytes in a thread into a :class:`CappedLog`.

    The log can be opened only once the container started (the API answers 400 while
    the init container runs), so it retries until then.
    """

    def __init__(self, open_stream: Callable[[], httpx2.Response | None], cap: int) -> None:
        super().__init__(cap)
        self._open = open_stream
        self._response: httpx2.Response | None = None
        self._stop = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="taskbox-pod-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                response = self._open()
                if response is None:  # not started yet; the followed log starts from the top
                    self._stop.wait(LOG_RETRY_SECONDS)
                    continue
                self._response = response
                try:
                    for chunk in response.iter_bytes():
                        self.feed(chunk)
                finally:
                    response.close()
                return
        except Exception as exc:  # noqa: BLE001 - a log reader must never take the run down
            if not self._stop.is_set():
                self.error = exc
        finally:
            self.ended.set()


# --------------------------------------------------------------------------- the Pod's state


@dataclass(frozen=True)
class _Ended:
    exit_code: int | None
    oom: bool
    deadline: bool = False


def _main_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == MAIN_CONTAINER), {})


def _check_waiting(pod: Mapping[str, Any], name: str) -> None:
    """Raise when a container of the Pod waits for something that will never come (its image)."""
    status = pod.get("status") or {}
    for container in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        message = str(waiting.get("message", ""))[:300]
        if reason in IMAGE_REASONS:
            raise ImageNotFoundError(
                f"the cluster cannot pull the image of {name} ({reason}): {message} "
                "(push the image and set TASKBOX_KUBERNETES_IMAGE)"
            )
        if reason in BROKEN_REASONS:
            raise SandboxError(
                f"the container {container.get('name')} of {name} cannot start ({reason}): {message}"
            )


def _failed_init(pod: Mapping[str, Any]) -> str | None:
    for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            return f"{container.get('name')} exited {terminated.get('exitCode')} ({terminated.get('reason', '')})"
    return None


def _ended(pod: Mapping[str, Any], name: str) -> _Ended | None:
    """How the Pod's command ended, or None while it runs; raises when it never ran."""
    status = pod.get("status") or {}
    phase = status.get("phase", "")
    terminated = (_main_status(pod).get("state") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    if phase == "Failed" and status.get("reason") == "DeadlineExceeded":
        # The kubelet's activeDeadlineSeconds (the backstop) killed the Pod: a timeout.
        return _Ended(
            exit_code=int(code) if code is not None else EXIT_SIGKILL, oom=False, deadline=True
        )
    if terminated:
        return _Ended(
            exit_code=int(code) if code is not None else None,
            oom=terminated.get("reason") == "OOMKilled",
        )
    failed = _failed_init(pod)
    if failed is not None:
        raise SandboxError(f"{name} never ran its command: the stage-in step failed: {failed}")
    if phase in ("Failed", "Succeeded"):
        raise SandboxError(
            f"{name} ended ({phase}, {status.get('reason', '')}) without its command running"
        )
    _check_waiting(pod, name)
    return None


# --------------------------------------------------------------------------- the backend


@dataclass
class _Sandbox:
    pod: str
    policy: str
    exchange_id: str
    log_cap: int
    started: float | None = None
    log: _PodLog | None = None


class KubernetesBackend:
    """Runs sandboxes as Pods in one namespace; see :class:`SandboxBackend` for the contract."""

    #: What a Pod of ``manifests.build_pod`` really gets, applied by the API server, the kubelet,
    #: the runtime, the in-pod helper (PID 1: ``init``; ``ulimits`` from TASKBOX_RLIMITS) or this
    #: backend (log cap, deadline). Three mandatory settings a Pod cannot have are met in a
    #: narrower form (controller/sandbox/backend.py MANDATORY_ALTERNATIVES): the network
    #: (``network_gateway_only``), the tmpfs mounts (``tmpfs_size``) and, only with user
    #: namespaces, the pids limit (``pids_rlimit``; see :attr:`enforces`).
    BASE_ENFORCES: frozenset[str] = frozenset(
        {
            "user",
            "environment",
            "labels",
            "mounts",
            "read_only_root",
            NETWORK_GATEWAY_ONLY,
            "cap_drop",
            "security_opt",
            "privileged",
            "memory_bytes",
            "memory_swap_bytes",
            "nano_cpus",
            "ulimits",
            "log_max_bytes",
            "wall_clock_seconds",
            "working_dir",
            "shm_bytes",
            "ipc_mode",
            "init",
            TMPFS_SIZE,
        }
    )

    def __init__(
        self,
        client: Client,
        target: KubernetesTarget,
        exchange: Exchange,
        *,
        log_http: httpx2.Client,
        exchange_server: ExchangeServer | None = None,
        runtime_class: str | None = None,
        out_cap: int = 128 * 2**20,
        poll_seconds: float = POLL_SECONDS,
        delete_wait_seconds: float = DELETE_WAIT_SECONDS,
    ) -> None:
        self._client = client
        self._target = target
        self._exchange = exchange
        self._server = exchange_server
        self._http = log_http
        self._runtime_class = runtime_class
        self._out_cap = out_cap
        self._poll = poll_seconds
        self._delete_wait = delete_wait_seconds
        self._sandboxes: dict[str, _Sandbox] = {}
        self._lock = threading.Lock()

    @property
    def enforces(self) -> frozenset[str]:
        """:attr:`BASE_ENFORCES`, and ``pids_rlimit`` when the Pods get their own user namespace.

        RLIMIT_NPROC counts a uid's processes; every sandbox runs as uid 10001, so only in
        a Pod's own user namespace is that count the sandbox's alone. Without user
        namespaces the pids limit is not claimed, and preflight refuses the backend.
        """
        if self._target.user_namespaces:
            return self.BASE_ENFORCES | {PIDS_RLIMIT}
        return self.BASE_ENFORCES

    @property
    def namespace(self) -> str:
        """The namespace of every Pod and NetworkPolicy."""
        return self._target.namespace

    @property
    def exchange(self) -> Exchange:
        """The exchange the Pods fetch and upload through."""
        return self._exchange

    # ------------------------------------------------------------------ API helpers

    def _get_pod(self, name: str) -> dict[str, Any] | None:
        try:
            pod = self._client.get(Pod, name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:  # noqa: PLR2004 - HTTP Not Found
                return None
            raise SandboxError(f"cannot read the Pod {name}: {exc.status.message}") from exc
        except httpx2.HTTPError as exc:
            raise SandboxError(f"the Kubernetes API does not answer: {exc}") from exc
        return pod.to_dict()

    def _delete(self, kind: type[Pod | NetworkPolicy], name: str) -> None:
        try:
            if kind is Pod:
                self._client.delete(
                    Pod, name, namespace=self.namespace, grace_period=DELETE_GRACE_SECONDS
                )
            else:
                self._client.delete(NetworkPolicy, name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:  # noqa: PLR2004 - gone already is fine
                return
            raise SandboxError(
                f"cannot delete {kind.__name__} {name}: {exc.status.message}"
            ) from exc
        except httpx2.HTTPError as exc:
            raise SandboxError(f"the Kubernetes API does not answer: {exc}") from exc

    def _wait_gone(self, name: str, timeout: float) -> dict[str, Any] | None:
        """Wait until the Pod is gone; returns its last state seen, or None once gone."""
        deadline = time.monotonic() + timeout
        last = self._get_pod(name)
        while last is not None and time.monotonic() < deadline:
            time.sleep(min(0.1, self._poll))
            last = self._get_pod(name)
        return last

    def _open_log(self, name: str) -> httpx2.Response | None:
        """The main container's followed log, or None while it has not started."""
        url = f"/api/v1/namespaces/{self.namespace}/pods/{name}/log"
        params = {"container": MAIN_CONTAINER, "follow": "true"}
        request = self._http.build_request("GET", url, params=params)
        response = self._http.send(request, stream=True)
        if response.status_code == 200:  # noqa: PLR2004 - HTTP OK
            return response
        response.read()
        response.close()
        if response.status_code == 400:  # noqa: PLR2004 - "container ... is waiting to start"
            return None
        raise SandboxError(f"cannot follow the log of {name}: HTTP {response.status_code}")

    def _sandbox(self, handle: SandboxHandle) -> _Sandbox:
        with self._lock:
            sandbox = self._sandboxes.get(handle.id)
        if sandbox is None:
            raise SandboxError(f"no such sandbox: {handle.name}")
        return sandbox

    # ------------------------------------------------------------------ the Protocol

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        """Register ``in.tar`` with the exchange, create the NetworkPolicy, then the Pod."""
        if self._server is not None:  # served from the first Pod on, not by every open_engine
            self._server.ensure_started()
        run_id = spec.labels[LABEL_RUN]
        phase = spec.labels.get(LABEL_PHASE, PHASE_AGENT)
        # The agent's and the judge's sandboxes share a run id but never live at once.
        exchange_id = run_id
        try:
            policy_manifest = build_network_policy(spec, self._target, phase=phase)
        except ValueError as exc:
            raise SandboxError(f"{spec.name} cannot be a Pod: {exc}") from exc
        tokens = self._exchange.register(exchange_id, out_cap=self._out_cap)
        try:
            # The upload token travels inside in.tar, read-only to the command, never in the spec.
            note = {"url": exchange_url(self._target, run_id), "token": tokens.upload_out}
            in_tar = pack_stage(spec.mounts, {_EXCHANGE_MEMBER: json.dumps(note).encode()})
            self._exchange.put_in(exchange_id, in_tar)
            try:
                pod_manifest = build_pod(
                    spec,
                    self._target,
                    run_id=run_id,
                    phase=phase,
                    exchange_token=tokens.fetch_in,
                    # The policy's RuntimeClass wins over the controller-wide one.
                    runtime_class=spec.runtime_class or self._runtime_class,
                )
            except ValueError as exc:
                raise SandboxError(f"{spec.name} cannot be a Pod: {exc}") from exc
            policy_name = str(policy_manifest["metadata"]["name"])
            pod_name = str(pod_manifest["metadata"]["name"])
            created = self._create_pair(spec.name, policy_manifest, pod_manifest)
        except BaseException:
            self._exchange.remove(exchange_id)
            raise
        handle = SandboxHandle(id=created or pod_name, name=spec.name, run_id=run_id)
        with self._lock:
            self._sandboxes[handle.id] = _Sandbox(
                pod=pod_name,
                policy=policy_name,
                exchange_id=exchange_id,
                log_cap=spec.log_max_bytes,
            )
        return handle

    def _create_pair(
        self, name: str, policy_manifest: dict[str, Any], pod_manifest: dict[str, Any]
    ) -> str | None:
        """Create the NetworkPolicy, then the Pod (the policy is deleted again if the Pod is refused); the Pod's uid."""
        try:
            self._client.create(
                cast("NetworkPolicy", NetworkPolicy.from_dict(policy_manifest)),
                namespace=self.namespace,
            )
        except ApiError as exc:
            raise SandboxError(
                f"the cluster refused to create {name}: {exc.status.message}"
            ) from exc
        except httpx2.HTTPError as exc:
            raise SandboxError(f"the Kubernetes API does not answer: {exc}") from exc
        try:
            created = self._client.create(
                cast("Pod", Pod.from_dict(pod_manifest)), namespace=self.namespace
            )
        except BaseException as exc:
            self._delete(NetworkPolicy, str(policy_manifest["metadata"]["name"]))
            if isinstance(exc, ApiError):
                raise SandboxError(
                    f"the cluster refused to create {name}: {exc.status.message}"
                ) from exc
            if isinstance(exc, httpx2.HTTPError):
                raise SandboxError(f"the Kubernetes API does not answer: {exc}") from exc
            raise
        return created.metadata.uid if created.metadata else None

    def start(self, handle: SandboxHandle) -> None:
        """Release ``in.tar`` to the init container and start following the log; the wall clock starts here.

        A Pod runs as soon as it is scheduled; holding its files back until now is
        what keeps the command from starting before the run says so.
        """
        sandbox = self._sandbox(handle)
        self._exchange.release(sandbox.exchange_id)
        pod_log = _PodLog(lambda: self._open_log(sandbox.pod), sandbox.log_cap)
        with self._lock:
            sandbox.started = time.monotonic()
            sandbox.log = pod_log
        pod_log.start()

    def wait(
        self,
        handle: SandboxHandle,
        *,
        timeout_seconds: float,
        on_log: Callable[[str], None] | None = None,
    ) -> SandboxOutcome:
        """Follow the log and the Pod's status until the command ends; past the deadline delete the Pod."""
        sandbox = self._sandbox(handle)
        started = sandbox.started if sandbox.started is not None else time.monotonic()
        pod_log = sandbox.log
        if pod_log is None:  # started elsewhere: follow the log from here
            pod_log = _PodLog(lambda: self._open_log(sandbox.pod), sandbox.log_cap)
            with self._lock:
                sandbox.log = pod_log
            pod_log.start()
        pod_log.set_callback(on_log)
        deadline = started + timeout_seconds
        try:
            ended = self._wait_for_end(sandbox, handle, deadline)
            timed_out = ended is None or ended.deadline
            if ended is None:
                ended = self._kill(sandbox)
        except BaseException:
            pod_log.stop()
            raise
        duration = time.monotonic() - started
        pod_log.join(LOG_JOIN_SECONDS)
        pod_log.stop()
        if pod_log.error is not None:
            log.warning("log stream of %s ended early: %s", handle.name, pod_log.error)
        return SandboxOutcome(
            exit_code=ended.exit_code,
            oom_killed=ended.oom or (ended.exit_code == EXIT_SIGKILL and not timed_out),
            oom_confirmed=ended.oom,
            timed_out=timed_out,
            duration_seconds=round(duration, 3),
            log_tail=pod_log.tail(),
            log_truncated=pod_log.truncated,
        )

    def _wait_for_end(
        self, sandbox: _Sandbox, handle: SandboxHandle, deadline: float
    ) -> _Ended | None:
        """How the command ended, or None when the deadline came first."""
        pod_log = sandbox.log
        while True:
            pod = self._get_pod(sandbox.pod)
            if pod is None:
                raise SandboxError(f"{handle.name} was deleted while running")
            ended = _ended(pod, handle.name)
            if ended is not None:
                return ended
            now = time.monotonic()
            if now >= deadline:
                return None
            log_done = pod_log is not None and pod_log.ended.is_set()
            pause = POLL_AFTER_LOG_SECONDS if log_done else self._poll
            if pod_log is not None and not log_done:
                pod_log.ended.wait(min(pause, deadline - now))
            else:
                time.sleep(min(pause, deadline - now))

    def _kill(self, sandbox: _Sandbox) -> _Ended:
        """Delete the Pod at the deadline and wait for it to go; its exit status if the kubelet reported one."""
        self._delete(Pod, sandbox.pod)
        last = self._wait_gone(sandbox.pod, self._delete_wait)
        terminated = (
            ((_main_status(last).get("state") or {}).get("terminated") or {}) if last else {}
        )
        code = terminated.get("exitCode")
        return _Ended(exit_code=int(code) if code is not None else EXIT_SIGKILL, oom=False)

    def logs(self, handle: SandboxHandle) -> Iterator[str]:
        """The main container's log so far (the kubelet's own bounded copy)."""
        sandbox = self._sandbox(handle)
        try:
            lines = self._client.log(
                sandbox.pod, namespace=self.namespace, container=MAIN_CONTAINER
            )
            yield from lines
        except ApiError as exc:
            raise SandboxError(
                f"cannot read the log of {handle.name}: {exc.status.message}"
            ) from exc
        except httpx2.HTTPError as exc:
            raise SandboxError(f"the Kubernetes API does not answer: {exc}") from exc

    def collect(self, handle: SandboxHandle, caps: Mapping[str, int]) -> CollectedOutput:
        """Read the uploaded ``out.tar`` as untrusted bytes once the command has ended."""
        sandbox = self._sandbox(handle)
        pod = self._get_pod(sandbox.pod)
        if pod is not None and _ended(pod, handle.name) is None:
            raise SandboxError(
                f"{handle.name} is still running; output is collected after it stops"
            )
        upload = self._exchange.upload(sandbox.exchange_id)
        if upload.state is UploadState.RECEIVED and upload.data is not None:
            return read_out_tar(upload.data, caps)
        if upload.state is UploadState.NONE:
            log.warning("%s sent no out.tar: every output file is missing", handle.name)
            return CollectedOutput(missing=list(caps))
        reason = (
            f"the out folder's tar went past the exchange's cap of {self._out_cap} bytes"
            if upload.state is UploadState.OVERSIZED
            else "the upload of the out folder broke off"
        )
        log.warning("%s: %s", handle.name, reason)
        return CollectedOutput(refused=dict.fromkeys(caps, reason))

    def inspect(self, handle: SandboxHandle) -> dict[str, Any]:
        """The Pod as the API returns it, plus ``Image``: the main container's image reference.

        The exchange token in the init container's environment is redacted.
        ``Image`` is what the lifecycle records as the image the sandbox ran: the
        reference the Pod names (pin it by digest and it is content-addressed); once
        the Pod ran, ``status.containerStatuses[].imageID`` holds the digest the node resolved.
        """
        sandbox = self._sandbox(handle)
        pod = self._get_pod(sandbox.pod)
        if pod is None:
            raise SandboxError(f"cannot inspect {handle.name}: the Pod is gone")
        spec = pod.get("spec") or {}
        # The record keeps this: the in.tar token (live until start) is redacted, as the gateway's is.
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            for variable in container.get("env") or []:
                if variable.get("name") == ENV_EXCHANGE_TOKEN:
                    variable["value"] = REDACTED
        containers = spec.get("containers") or []
        main: dict[str, Any] = next((c for c in containers if c.get("name") == MAIN_CONTAINER), {})
        return {**pod, "Image": str(main.get("image", ""))}

    def remove(self, handle: SandboxHandle) -> None:
        """Delete the Pod, wait until it is gone, then its NetworkPolicy; gone already is fine."""
        with self._lock:
            sandbox = self._sandboxes.pop(handle.id, None)
        if sandbox is None:
            return
        if sandbox.log is not None:
            sandbox.log.stop()
        try:
            self._remove_pair(sandbox.pod, sandbox.policy)
        finally:
            self._exchange.remove(sandbox.exchange_id)

    def _remove_pair(self, pod: str, policy: str) -> None:
        self._delete(Pod, pod)
        if self._wait_gone(pod, self._delete_wait) is not None:
            # The policy must outlive every container of the Pod: left for recovery.
            log.warning(
                "the Pod %s is not gone after %s s; its NetworkPolicy stays", pod, self._delete_wait
            )
            return
        self._delete(NetworkPolicy, policy)

    def _list(
        self, kind: type[Pod | NetworkPolicy], controller_id: str | None
    ) -> list[dict[str, Any]]:
        labels: dict[str, Any] = {LABEL_MANAGED: "1"}
        if controller_id is not None:
            labels[LABEL_CONTROLLER] = label_value(controller_id)
        try:
            found = self._client.list(kind, namespace=self.namespace, labels=labels)
            return [item.to_dict() for item in found]
        except ApiError as exc:
            raise SandboxError(f"cannot list {kind.__name__}s: {exc.status.message}") from exc
        except httpx2.HTTPError as exc:
            raise SandboxError(f"the Kubernetes API does not answer: {exc}") from exc

    def _orphans(
        self, controller_id: str | None
    ) -> list[tuple[OrphanContainer, str | None, str | None]]:
        """Every labelled Pod (with its policy, of the same name) and every run's policy whose Pod is gone.

        The namespace's standing deny-all policy carries the managed label but no run:
        it is never an orphan.
        """
        pods = self._list(Pod, controller_id)
        policies = [
            p
            for p in self._list(NetworkPolicy, controller_id)
            if LABEL_RUN in (p["metadata"].get("labels") or {})
        ]
        policy_names = {str(p["metadata"]["name"]) for p in policies}
        pod_names = {str(p["metadata"]["name"]) for p in pods}
        found: list[tuple[OrphanContainer, str | None, str | None]] = []
        for pod in pods:
            meta = pod["metadata"]
            name = str(meta["name"])
            phase = str((pod.get("status") or {}).get("phase", ""))
            found.append((_orphan(meta, phase), name, name if name in policy_names else None))
        for policy in policies:
            meta = policy["metadata"]
            if meta["name"] not in pod_names:
                found.append(
                    (_orphan(meta, "NetworkPolicy without its Pod"), None, str(meta["name"]))
                )
        return found

    def find_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Every Pod labelled ``org.taskbox.managed=1`` (of one controller if given), and every such NetworkPolicy whose Pod is gone."""
        return [orphan for orphan, _, _ in self._orphans(controller_id)]

    def remove_orphans(self, controller_id: str | None = None) -> list[OrphanContainer]:
        """Delete what ``find_orphans`` finds (each Pod before its policy); returns what was removed."""
        found = self._orphans(controller_id)
        # Every Pod is deleted first and then waited for: the kubelets stop them in parallel.
        for _, pod, _ in found:
            if pod is not None:
                self._delete(Pod, pod)
        removed = []
        for orphan, pod, policy in found:
            if pod is not None and self._wait_gone(pod, self._delete_wait) is not None:
                log.warning("the orphan Pod %s is not gone yet; its NetworkPolicy stays", pod)
                continue
            if policy is not None:
                self._delete(NetworkPolicy, policy)
            log.info("removed orphan sandbox %s (run %s)", orphan.name, orphan.run_id)
            removed.append(orphan)
        with self._lock:
            gone = {h for h, s in self._sandboxes.items() if any(o.id == h for o in removed)}
            for handle_id in gone:
                sandbox = self._sandboxes.pop(handle_id)
                self._exchange.remove(sandbox.exchange_id)
        return removed


def _orphan(meta: dict[str, Any], status: str) -> OrphanContainer:
    labels = spec_labels(meta)  # the exact values, where a label holds a stand-in
    return OrphanContainer(
        id=str(meta.get("uid") or meta.get("name")),
        name=str(meta.get("name", "")),
        status=status,
        run_id=labels.get(LABEL_RUN, ""),
        task_key=labels.get(LABEL_TASK, ""),
        controller_id=labels.get(LABEL_CONTROLLER, ""),
    )


class KubernetesImages:
    """The image side of a cluster: it pulls a reference; building and pushing happen elsewhere.

    ``image_id`` of the controller's sandbox image (or of the cluster reference)
    is the cluster reference itself; every other image (a repository's dependency
    layer) is unknown here, so admission falls back to the policy's image.
    """

    def __init__(self, local_image: str, cluster_image: str) -> None:
        self._local = local_image
        self._cluster = cluster_image

    def image_id(self, ref: str) -> str | None:
        """The reference the cluster pulls for ``ref``, or None for an image it does not know."""
        return self._cluster if ref in (self._local, self._cluster) else None

    def image_labels(self, ref: str) -> dict[str, str]:  # noqa: ARG002 - no registry is read
        """No labels: the controller does not read the registry."""
        return {}

    def try_pull(self, ref: str) -> bool:  # noqa: ARG002 - the cluster pulls, not the controller
        """Never: the kubelet pulls."""
        return False

    def _refuse(self) -> SandboxError:
        return SandboxError(
            "images for a Kubernetes backend are built with Docker (`taskbox image build`), pushed "
            "to a registry the cluster pulls from, and named in TASKBOX_KUBERNETES_IMAGE"
        )

    def import_rootfs(self, tarball: Path, ref: str, changes: list[str]) -> str:  # noqa: ARG002
        """Refused: see :meth:`_refuse`."""
        raise self._refuse()

    def build(
        self,
        context: Path,  # noqa: ARG002
        *,
        tag: str,  # noqa: ARG002
        dockerfile: str = "Dockerfile",  # noqa: ARG002
        buildargs: Mapping[str, str] | None = None,  # noqa: ARG002
        labels: Mapping[str, str] | None = None,  # noqa: ARG002
        network: bool = False,  # noqa: ARG002
        on_output: Callable[[str], None] | None = None,  # noqa: ARG002
    ) -> str:
        """Refused: see :meth:`_refuse`."""
        raise self._refuse()

    def run_probe(self, image: str, command: list[str], *, timeout_seconds: int = 60) -> str:  # noqa: ARG002
        """Refused: see :meth:`_refuse`."""
        raise self._refuse()
