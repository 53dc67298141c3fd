"""A fake Kubernetes API server (FastAPI, served by uvicorn on loopback) with just what the backend calls.

Pods and NetworkPolicies in a namespace (create, get, list by equality label
selector, delete), a Pod's log (followed, as bytes), namespaces, RuntimeClasses and
DaemonSets (read only). The real lightkube client talks to it over real HTTP.

What a kubelet would do is played by a test's *kubelet handler*: when a Pod is
created, the handler runs in a thread with a :class:`FakePod`, through which it
fetches ``in.tar`` from the controller's exchange (as the init container would, with
the token from the Pod spec), starts the main container, prints, uploads an
``out.tar`` (with the token found in ``in.tar``) and ends the container (an exit
status, an OOM kill, a missing image, the kubelet's deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from lightkube import KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster, User

from taskbox_wire.pod import (
    ENV_EXCHANGE_TOKEN,
    ENV_EXCHANGE_URL,
    EXCHANGE_IN,
    EXCHANGE_OUT,
    INIT_CONTAINER,
    MAIN_CONTAINER,
)

PODS = "pods"
POLICIES = "networkpolicies"
#: The bearer token the client presents; the fake refuses any other (401), as an API server would.
API_TOKEN = "fake-api-token"  # noqa: S105 - a test value


def fake_config(url: str, namespace: str = "taskbox") -> SingleConfig:
    """A kubeconfig for the fake API at ``url``, with its bearer token."""
    config = KubeConfig.from_one(
        cluster=Cluster(server=url), user=User(token=API_TOKEN), namespace=namespace
    ).get()
    assert config is not None
    return config


def _status(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        },
        status_code=code,
    )


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        if sep != "=" or value.startswith("="):
            raise ValueError(f"the fake understands equality selectors only: {term!r}")
        if labels.get(key) != value:
            return False
    return True


class Deleted(Exception):  # noqa: N818 - what happened to the Pod, as the handler sees it
    """The Pod was deleted while its handler ran."""


class FakePod:
    """The kubelet's side of one Pod, for a handler: its manifest, the exchange, its state."""

    def __init__(self, cluster: FakeCluster, name: str) -> None:
        self._cluster = cluster
        self.name = name
        self.deleted = threading.Event()
        self.in_tar: bytes | None = None
        self.log = bytearray()

    @property
    def manifest(self) -> dict[str, Any]:
        """The Pod as created (a copy)."""
        return copy.deepcopy(self._cluster.objects[PODS][self.name])

    def _container(self, name: str) -> dict[str, Any]:
        spec = self.manifest["spec"]
        return next(
            c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
        )

    def init_env(self) -> dict[str, str]:
        """The init container's environment."""
        return {e["name"]: e["value"] for e in self._container(INIT_CONTAINER).get("env", [])}

    def _set(self, **status: Any) -> None:
        self._cluster.set_status(self.name, **status)

    def check(self) -> None:
        """Raise Deleted when the Pod is gone (a handler's step calls it)."""
        if self.deleted.is_set():
            raise Deleted

    def fetch_in(self, token: str | None = None) -> httpx.Response:
        """GET in.tar as the init container does; the response (its body in ``in_tar`` when 200)."""
        env = self.init_env()
        response = httpx.get(
            f"{env[ENV_EXCHANGE_URL]}/{EXCHANGE_IN}",
            headers={"Authorization": f"Bearer {token or env[ENV_EXCHANGE_TOKEN]}"},
            timeout=30,
        )
        if response.status_code == 200:
            self.in_tar = response.content
        return response

    def members(self) -> dict[str, tarfile.TarInfo]:
        """The members of the fetched in.tar, by name."""
        if self.in_tar is None:
            raise AssertionError("in.tar was not fetched")
        with tarfile.open(fileobj=io.BytesIO(self.in_tar)) as tar:
            return {m.name: m for m in tar.getmembers()}

    def read_in(self, name: str) -> bytes:
        """One file of the fetched in.tar."""
        if self.in_tar is None:
            raise AssertionError("in.tar was not fetched")
        with tarfile.open(fileobj=io.BytesIO(self.in_tar)) as tar:
            handle = tar.extractfile(name)
            if handle is None:
                raise AssertionError(f"{name} is not a file of in.tar")
            return handle.read()

    def exchange_note(self) -> dict[str, str]:
        """/taskbox/exchange.json as the main container reads it."""
        note: dict[str, str] = json.loads(self.read_in("taskbox/exchange.json"))
        return note

    def upload(self, data: bytes, *, token: str | None = None) -> httpx.Response:
        """PUT out.tar as the main container's wrapper does."""
        note = self.exchange_note()
        return httpx.put(
            f"{note['url']}/{EXCHANGE_OUT}",
            content=data,
            headers={"Authorization": f"Bearer {token or note['token']}"},
            timeout=30,
        )

    def image_missing(self) -> None:
        """The kubelet cannot pull the image: the init container waits with ErrImagePull."""
        self._set(
            phase="Pending",
            initContainerStatuses=[_waiting(INIT_CONTAINER, "ErrImagePull", "not found")],
            containerStatuses=[_waiting(MAIN_CONTAINER, "PodInitializing")],
        )

    def stage_in(self) -> None:
        """The init container: fetch in.tar (it must succeed) and end with status 0."""
        self.check()
        response = self.fetch_in()
        if response.status_code != 200:
            raise AssertionError(f"stage-in got HTTP {response.status_code}")

    def fail_stage_in(self, code: int = 1) -> None:
        """The init container ended with ``code``: the Pod fails without running its command."""
        self._set(
            phase="Failed",
            initContainerStatuses=[_terminated(INIT_CONTAINER, code, "Error")],
            containerStatuses=[_waiting(MAIN_CONTAINER, "PodInitializing")],
        )

    def run(self) -> None:
        """The main container runs."""
        self.check()
        self._set(
            phase="Running",
            initContainerStatuses=[_terminated(INIT_CONTAINER, 0, "Completed")],
            containerStatuses=[
                _container_status(MAIN_CONTAINER, {"running": {"startedAt": _now()}})
            ],
        )

    def print(self, data: bytes | str) -> None:
        """The command writes to its output."""
        self.check()
        with self._cluster.lock:
            self.log += data.encode() if isinstance(data, str) else data

    def sleep(self, seconds: float) -> None:
        """Run for ``seconds`` (real time); Deleted as soon as the Pod is deleted."""
        if self.deleted.wait(seconds):
            raise Deleted

    def exit(self, code: int, reason: str | None = None) -> None:
        """The main container ends with ``code`` (reason Completed, Error or the one given)."""
        self.check()
        why = reason or ("Completed" if code == 0 else "Error")
        self._set(
            phase="Succeeded" if code == 0 else "Failed",
            initContainerStatuses=[_terminated(INIT_CONTAINER, 0, "Completed")],
            containerStatuses=[_terminated(MAIN_CONTAINER, code, why)],
        )

    def deadline_exceeded(self) -> None:
        """The kubelet's activeDeadlineSeconds fired: the Pod fails with DeadlineExceeded."""
        self._set(
            phase="Failed",
            reason="DeadlineExceeded",
            message="active deadline exceeded",
            containerStatuses=[_terminated(MAIN_CONTAINER, 137, "Error")],
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _container_status(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """A container status with every field the API always sets."""
    return {
        "name": name,
        "image": "taskbox-sandbox:latest",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": state,
    }


def _waiting(name: str, reason: str, message: str = "") -> dict[str, Any]:
    return _container_status(name, {"waiting": {"reason": reason, "message": message}})


def _terminated(name: str, code: int, reason: str) -> dict[str, Any]:
    return _container_status(
        name, {"terminated": {"exitCode": code, "reason": reason, "finishedAt": _now()}}
    )


Handler = Callable[[FakePod], None]


@dataclass
class FakeCluster:
    """The fake API's state; ``handler`` plays each created Pod (None: Pods stay Pending)."""

    namespace: str = "taskbox"
    namespace_labels: dict[str, str] = field(
        default_factory=lambda: {"pod-security.kubernetes.io/enforce": "restricted"}
    )
    handler: Handler | None = None
    termination_seconds: float = 0.0
    """How long a deleted Pod stays (terminating) before it is gone, as a kubelet stopping it."""
    runtime_classes: set[str] = field(default_factory=set)
    daemonsets: list[dict[str, Any]] = field(default_factory=list)
    objects: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {PODS: {}, POLICIES: {}}
    )
    pods: dict[str, FakePod] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    """Every request: (method, path)."""
    errors: list[BaseException] = field(default_factory=list)
    """What the handlers raised (other than Deleted)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def set_status(self, name: str, **status: Any) -> None:
        with self.lock:
            pod = self.objects[PODS].get(name)
            if pod is not None:
                pod["status"] = {**pod.get("status", {}), **status}

    def join(self, timeout: float = 10) -> None:
        """Wait for every handler thread."""
        for thread in list(self._threads):
            thread.join(timeout)

    def _play(self, pod: FakePod) -> None:
        if self.handler is None:
            return
        try:
            self.handler(pod)
        except Deleted:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported to the test through ``errors``
            self.errors.append(exc)

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Store a new object (None when the name is taken); a Pod's handler starts after."""
        meta = body.setdefault("metadata", {})
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion="1")
        meta.setdefault("namespace", self.namespace)
        if kind == PODS:
            body["status"] = {
                "phase": "Pending",
                "initContainerStatuses": [_waiting(INIT_CONTAINER, "PodInitializing")],
                "containerStatuses": [_waiting(MAIN_CONTAINER, "PodInitializing")],
            }
        with self.lock:
            if meta.get("name") in self.objects[kind]:
                return None
            self.objects[kind][meta["name"]] = body
            stored = copy.deepcopy(body)
        if kind == PODS:
            pod = FakePod(self, meta["name"])
            self.pods[meta["name"]] = pod
            thread = threading.Thread(target=self._play, args=(pod,), daemon=True)
            self._threads.append(thread)
            thread.start()
        return stored


def make_app(cluster: FakeCluster) -> FastAPI:  # noqa: C901, PLR0915 - one route per API call, kept together
    """The fake API server's routes."""
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Any]) -> Any:
        cluster.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {API_TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        return await call_next(request)

    def known(namespace: str) -> JSONResponse | None:
        if namespace != cluster.namespace:
            return _status(404, "NotFound", f'namespaces "{namespace}" not found')
        return None

    async def create(kind: str, namespace: str, request: Request) -> Response:
        if (missing := known(namespace)) is not None:
            return missing
        body = await request.json()
        created = cluster.create(kind, body)
        if created is None:
            name = body["metadata"].get("name")
            return _status(409, "AlreadyExists", f'{kind} "{name}" already exists')
        return JSONResponse(created, status_code=201)

    def get(kind: str, namespace: str, name: str) -> Response:
        with cluster.lock:
            found = cluster.objects[kind].get(name) if namespace == cluster.namespace else None
            if found is None:
                return _status(404, "NotFound", f'{kind} "{name}" not found')
            return JSONResponse(copy.deepcopy(found))

    def listing(kind: str, namespace: str, request: Request) -> Response:
        selector = request.query_params.get("labelSelector")
        list_kind = {
            PODS: ("v1", "PodList"),
            POLICIES: ("networking.k8s.io/v1", "NetworkPolicyList"),
        }
        with cluster.lock:
            try:
                items = [
                    copy.deepcopy(o)
                    for o in cluster.objects[kind].values()
                    if namespace == cluster.namespace
                    and _matches(o["metadata"].get("labels") or {}, selector)
                ]
            except ValueError as exc:
                return _status(400, "BadRequest", str(exc))
        api_version, list_name = list_kind[kind]
        return JSONResponse(
            {
                "apiVersion": api_version,
                "kind": list_name,
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
        )

    def delete(kind: str, namespace: str, name: str) -> Response:
        with cluster.lock:
            found = cluster.objects[kind].get(name) if namespace == cluster.namespace else None
            if found is not None and (kind != PODS or not cluster.termination_seconds):
                del cluster.objects[kind][name]
            elif found is not None:
                found["metadata"].setdefault("deletionTimestamp", _now())
        if found is None:
            return _status(404, "NotFound", f'{kind} "{name}" not found')
        if kind == PODS and name in cluster.pods:
            cluster.pods[name].deleted.set()
            if cluster.termination_seconds:
                timer = threading.Timer(
                    cluster.termination_seconds, lambda: cluster.objects[PODS].pop(name, None)
                )
                timer.daemon = True
                timer.start()
        return JSONResponse({"apiVersion": "v1", "kind": "Status", "status": "Success"})

    for kind, prefix in ((PODS, "/api/v1"), (POLICIES, "/apis/networking.k8s.io/v1")):
        base = f"{prefix}/namespaces/{{namespace}}/{kind}"

        async def create_route(namespace: str, request: Request, kind: str = kind) -> Response:
            return await create(kind, namespace, request)

        def list_route(namespace: str, request: Request, kind: str = kind) -> Response:
            return listing(kind, namespace, request)

        def get_route(namespace: str, name: str, kind: str = kind) -> Response:
            return get(kind, namespace, name)

        def delete_route(namespace: str, name: str, kind: str = kind) -> Response:
            return delete(kind, namespace, name)

        app.add_api_route(base, create_route, methods=["POST"])
        app.add_api_route(base, list_route, methods=["GET"])
        app.add_api_route(f"{base}/{{name}}", get_route, methods=["GET"])
        app.add_api_route(f"{base}/{{name}}", delete_route, methods=["DELETE"])

    @app.get("/api/v1/namespaces/{namespace}/pods/{name}/log")
    async def pod_log(
        namespace: str, name: str, container: str | None = None, follow: bool = False
    ) -> Response:
        pod = cluster.pods.get(name)
        with cluster.lock:
            manifest = cluster.objects[PODS].get(name)
        if manifest is None or pod is None or namespace != cluster.namespace:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if container not in (None, MAIN_CONTAINER):
            return _status(400, "BadRequest", "the fake logs only the main container")

        def main_state() -> dict[str, Any]:
            with cluster.lock:
                current = cluster.objects[PODS].get(name) or {}
            statuses = (current.get("status") or {}).get("containerStatuses") or [{}]
            state: dict[str, Any] = statuses[0].get("state") or {}
            return state

        if "waiting" in main_state():
            return _status(400, "BadRequest", f'container "{MAIN_CONTAINER}" is waiting to start')

        async def stream() -> AsyncIterator[bytes]:
            sent = 0
            while True:
                with cluster.lock:
                    chunk = bytes(pod.log[sent : sent + 65536])
                if chunk:
                    sent += len(chunk)
                    yield chunk
                    continue
                if not follow or "running" not in main_state() or pod.deleted.is_set():
                    return
                await asyncio.sleep(0.01)

        return StreamingResponse(stream(), media_type="text/plain")

    @app.get("/version")
    def version() -> Response:
        return JSONResponse({"major": "1", "minor": "37", "gitVersion": "v1.37.0-fake"})

    @app.get("/api/v1/namespaces/{name}")
    def namespace(name: str) -> Response:
        if name != cluster.namespace:
            return _status(404, "NotFound", f'namespaces "{name}" not found')
        return JSONResponse(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/metadata.name": name, **cluster.namespace_labels},
                },
            }
        )

    @app.get("/apis/node.k8s.io/v1/runtimeclasses/{name}")
    def runtime_class(name: str) -> Response:
        if name not in cluster.runtime_classes:
            return _status(404, "NotFound", f'runtimeclasses.node.k8s.io "{name}" not found')
        return JSONResponse(
            {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": name},
                "handler": name,
            }
        )

    @app.get("/apis/apps/v1/daemonsets")
    def daemonsets() -> Response:
        return JSONResponse(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSetList",
                "metadata": {"resourceVersion": "1"},
                "items": copy.deepcopy(cluster.daemonsets),
            }
        )

    return app


def daemonset(name: str, namespace: str = "kube-system", image: str = "") -> dict[str, Any]:
    """A DaemonSet as the API lists it (what a CNI's agent looks like)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": name}},
            "template": {
                "metadata": {"labels": {"k8s-app": name}},
                "spec": {
                    "containers": [{"name": name, "image": image or f"example.invalid/{name}:1"}]
                },
            },
        },
    }


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
