"""Fixtures of the API tests: settings, the app served by uvicorn on loopback, clients with tokens.

``serve_api`` runs the app in a thread with any executor (the fake here; the
real Docker executor in end-to-end tests). ``serve_process`` runs
``python -m controller serve`` in a subprocess, for the tests that kill it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from fastapi import FastAPI

from controller.api import create_app
from controller.api.deps import AppContext
from controller.service import TaskExecutor, TaskService
from controller.settings import Settings
from tests.controller.api.fake_executor import CONTROL_ENV, FakeExecutor, wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]

TOKEN_ALL = "all-repositories-token-0123456789"  # noqa: S105 - test tokens, not secrets
TOKEN_ALPHA = "alpha-only-token-0123456789abc"  # noqa: S105
TOKEN_BETA = "beta-only-token-0123456789abcd"  # noqa: S105
TOKEN_UNKNOWN = "nobody-configured-this-token-0123"  # noqa: S105
TOKENS = {TOKEN_ALL: ["*"], TOKEN_ALPHA: ["alpha"], TOKEN_BETA: ["beta"]}

SettingsFactory = Callable[..., Settings]


def task_body(key: str = "BE-1", repository: str = "alpha", **task_fields: Any) -> dict[str, Any]:
    """A valid submission body for a task with ``key``; keyword arguments change task fields."""
    task: dict[str, Any] = {
        "taskKey": key,
        "description": "Add a greeting endpoint.",
        "ownsPaths": ["app/"],
        "contextJson": {f"{key}-ctx": {"relevant_files": ["README.md"]}},
    }
    task.update(task_fields)
    return {"task": task, "repository": repository}


@dataclass
class ServedApi:
    """An app served by uvicorn in a thread on 127.0.0.1."""

    url: str
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx2.Client] = field(default_factory=list)

    @property
    def service(self) -> TaskService:
        """The app's running task service."""
        context: AppContext = self.app.state.taskbox
        assert context.service is not None
        return context.service

    def client(self, token: str | None = TOKEN_ALL) -> httpx2.Client:
        """An HTTP client for this server; ``token=None`` sends no Authorization header."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        client = httpx2.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        """Shut the server down the way SIGTERM would (lifespan shutdown included)."""
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the server did not stop"


def serve_app_in_thread(app: FastAPI) -> ServedApi:
    """Serve ``app`` with uvicorn on a free loopback port in a daemon thread; wait until it is up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True
    )
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
    if not server.started:
        raise RuntimeError("uvicorn did not start (see the log above)")
    return ServedApi(url=f"http://127.0.0.1:{port}", app=app, server=server, thread=thread)


@pytest.fixture
def repos(make_repo: Callable[..., tuple[Path, str]]) -> dict[str, Path]:
    """Two real git repositories, ``alpha`` and ``beta``."""
    alpha, _ = make_repo({"README.md": "alpha\n"}, name="alpha")
    beta, _ = make_repo({"README.md": "beta\n"}, name="beta")
    return {"alpha": alpha, "beta": beta}


@pytest.fixture
def make_settings(tmp_path: Path, repos: dict[str, Path]) -> SettingsFactory:
    """Settings for a test server: three tokens, two repositories, a store in tmp_path."""

    def make(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "api_tokens": TOKENS,
            "repositories": repos,
            "database": tmp_path / "taskbox.sqlite3",
            "runs_dir": tmp_path / "runs",
            "max_concurrent_tasks": 2,
            "shutdown_grace_seconds": 5,
        }
        fields.update(overrides)
        return Settings(_env_file=None, **fields)  # type: ignore[call-arg]

    return make


@pytest.fixture
def fake(tmp_path: Path) -> FakeExecutor:
    """The file-steered fake executor, its control folder in tmp_path."""
    return FakeExecutor(tmp_path / "control")


@pytest.fixture
def serve_api(
    make_settings: SettingsFactory, fake: FakeExecutor
) -> Iterator[Callable[..., ServedApi]]:
    """Start servers: ``serve_api(settings=None, executor=None, probes=None)``; all stop at teardown."""
    served: list[ServedApi] = []

    def start(
        settings: Settings | None = None,
        executor: TaskExecutor | None = None,
        probes: Mapping[str, Callable[[], None]] | None = None,
    ) -> ServedApi:
        app = create_app(
            settings or make_settings(),
            executor if executor is not None else fake,
            readiness_probes=probes,
        )
        api = serve_app_in_thread(app)
        served.append(api)
        return api

    yield start
    fake.release()  # let held runs end so shutdown does not wait for its grace period
    for api in served:
        if api.thread.is_alive():
            api.stop()


@pytest.fixture
def api(serve_api: Callable[..., ServedApi]) -> ServedApi:
    """One server with the default settings and the fake executor."""
    return serve_api()


# --------------------------------------------------------------------------- subprocess


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServedProcess:
    """``python -m controller serve`` running in a subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str | None = TOKEN_ALL) -> httpx2.Client:
        """An HTTP client for this server."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)

    def kill(self) -> None:
        """SIGKILL: no lifespan shutdown, no cleanup, like a crash."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the graceful exit; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def serve_process(
    tmp_path: Path, repos: dict[str, Path], fake: FakeExecutor
) -> Iterator[Callable[..., ServedProcess]]:
    """Start ``taskbox serve`` subprocesses over one store; ``serve_process(**settings_env)``."""
    started: list[ServedProcess] = []
    workdir = tmp_path / "serve-cwd"  # an empty cwd, so no developer's .env is read
    workdir.mkdir()

    def start(**settings_env: str) -> ServedProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBOX_")}
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT),
                "TASKBOX_API_TOKENS": ";".join(f"{t}={','.join(r)}" for t, r in TOKENS.items()),
                "TASKBOX_REPOSITORIES": ";".join(f"{n}={p}" for n, p in repos.items()),
                "TASKBOX_DATABASE": str(tmp_path / "taskbox.sqlite3"),
                "TASKBOX_RUNS_DIR": str(tmp_path / "runs"),
                "TASKBOX_EXECUTOR_MODULE": "tests.controller.api.fake_executor",
                CONTROL_ENV: str(fake.control),
            }
        )
        env.update(settings_env)
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "controller", "serve", "--port", str(port)],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        served = ServedProcess(url=f"http://127.0.0.1:{port}", process=process, log=log)
        started.append(served)

        def up() -> bool:
            if process.poll() is not None:
                return True
            try:
                return httpx2.get(f"{served.url}/healthz", timeout=1).status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(up, timeout=30, what="taskbox serve to answer")
        if process.poll() is not None:
            raise RuntimeError(f"taskbox serve exited:\n{log.read_text()}")
        return served

    yield start
    fake.release()
    for served in started:
        if served.process.poll() is None:
            served.kill()
    remove_run_containers(tmp_path / "runs")


def remove_run_containers(runs_dir: Path) -> None:
    """Remove the containers of the runs recorded under ``runs_dir`` (a killed server's, a failed test's).

    A test that kills the server leaves its sandboxes to the next server's recovery; when the
    test fails before that, nothing else would remove them. Only this test's runs are touched:
    the run ids are the names of its run folders.
    """
    if not runs_dir.is_dir():
        return
    run_ids = {entry.name for entry in runs_dir.iterdir() if entry.is_dir()}
    if not run_ids:
        return
    import docker  # noqa: PLC0415 - only tests that ran real sandboxes get here

    try:
        client = docker.from_env()
    except docker.errors.DockerException:
        return  # no engine: no sandbox can have been started
    try:
        for container in client.containers.list(
            all=True, filters={"label": "org.taskbox.managed=1"}
        ):
            if container.labels.get("org.taskbox.run") in run_ids:
                container.remove(force=True)
    finally:
        client.close()
