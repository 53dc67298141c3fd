"""compose.yaml for real: the machine's compose tool brings the controller up, it runs a task, and reproduces it.

The tool is Compose v2 (``docker compose``) when the Docker CLI has it, else Debian's
``docker-compose`` 1.29; the commands are the README's. Each test uses its own compose
project name, host port and folder (standing for the checkout compose runs from, mounted
at its own path), and removes every container and network of its project. With
``TASKBOX_REQUIRE_COMPOSE=1`` (CI) a missing compose tool fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx2
import pytest
import yaml
from docker.errors import ImageNotFound

from controller.image import CONTROLLER_IMAGE, LABEL_PROJECT, SANDBOX_IMAGE, build_project_wheel
from controller.sandbox.spec import LABEL_MANAGED, LABEL_RUN
from controller.settings import PROJECT_ROOT
from tests.conftest import copy_example_repo, git

pytestmark = [pytest.mark.compose, pytest.mark.docker]

COMPOSE_FILE = PROJECT_ROOT / "compose.yaml"
EXAMPLES = PROJECT_ROOT / "examples"
REQUIRE_ENV = "TASKBOX_REQUIRE_COMPOSE"
PROJECT_LABEL = "com.docker.compose.project"  # both compose tools put it on what they create
FINAL_STATES = {"succeeded", "failed", "timeout", "cancelled", "error"}
#: Environment passed through to the compose tool (it needs no other variable of the caller's).
PASSED_THROUGH = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH")


def compose_tool() -> list[str] | None:
    """``docker compose`` (v2) if the Docker CLI has it, else ``docker-compose`` (1.29), else None."""
    docker_cli = shutil.which("docker")
    if docker_cli is not None:
        probe = subprocess.run(
            [docker_cli, "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [docker_cli, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def require_compose_tool() -> list[str]:
    """The compose tool; skip without one, or fail when TASKBOX_REQUIRE_COMPOSE=1 (CI)."""
    tool = compose_tool()
    if tool is None:
        message = (
            "no compose tool: neither `docker compose` (v2) nor `docker-compose` (1.29); "
            "scripts/ensure-compose installs Debian's docker-compose"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
        pytest.skip(message)
    return tool


def ensure_controller_image() -> None:
    """Build taskbox-controller:latest when it is missing or was built from other sources.

    The image is the project's own and stays cached between runs: it is rebuilt only when
    its project label differs from the current sources' wheel (content-addressed).
    """
    wanted = build_project_wheel().parent.name
    try:
        labels = docker.from_env().images.get(CONTROLLER_IMAGE).labels or {}
    except ImageNotFound:
        labels = {}
    if labels.get(LABEL_PROJECT) == wanted:
        return
    built = subprocess.run(
        [sys.executable, "-m", "controller", "image", "build", "--controller", "--quiet"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-4000:]


def free_loopback_port() -> int:
    """A TCP port nothing listens on at the moment, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Compose:
    """The compose tool run as the README shows it, from ``folder``, in one named project."""

    tool: list[str]
    project: str
    folder: Path
    variables: Mapping[str, str]

    def __call__(
        self, *args: str, without: tuple[str, ...] = (), timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<tool> ARGS`` with the test's variables (minus ``without``); never raises on exit status."""
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        env |= {
            "PWD": str(
                self.folder
            ),  # what compose.yaml mounts: a shell sets it, a subprocess does not
            "COMPOSE_FILE": str(COMPOSE_FILE),
            "COMPOSE_PROJECT_NAME": self.project,
        }
        env |= {name: value for name, value in self.variables.items() if name not in without}
        return subprocess.run(
            [*self.tool, *args],
            cwd=self.folder,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def logs(self) -> str:
        """The service's log, for a failure message."""
        done = self("logs", "--no-color", "--tail", "60", timeout=60)
        return done.stdout[-6000:] + done.stderr[-2000:]


@dataclass(frozen=True)
class Leftovers:
    """What was still on the engine after ``down``, and was removed by force."""

    containers: list[str]
    networks: list[str]


def remove_project(compose: Compose) -> tuple[subprocess.CompletedProcess[str], Leftovers]:
    """``down -v --remove-orphans``, then force-remove whatever of the project is still there."""
    down = compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=180)
    client = docker.from_env()
    label: dict[str, str | list[str] | bool] = {"label": f"{PROJECT_LABEL}={compose.project}"}
    containers = client.containers.list(all=True, filters=label)
    for container in containers:
        container.remove(force=True)
    networks = client.networks.list(filters=label)
    for network in networks:
        network.remove()
    return down, Leftovers(
        containers=[str(c.name) for c in containers], networks=[str(n.name) for n in networks]
    )


def sandboxes_of(run_ids: list[str]) -> list[str]:
    """Names of Taskbox sandboxes still on the engine for these runs (and removes them)."""
    found = []
    managed = docker.from_env().containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
    for container in managed:
        if container.labels.get(LABEL_RUN) in run_ids:
            found.append(str(container.name))
            container.remove(force=True)
    return found


def wait_until_ready(client: httpx2.Client, compose: Compose, timeout: float = 90) -> None:
    """Poll /readyz until it answers 200; fail with the service's log if it never does."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = client.get("/readyz")
        except httpx2.TransportError as exc:
            last = repr(exc)
        else:
            if reply.status_code == 200:
                return
            last = f"{reply.status_code} {reply.text}"
        time.sleep(0.5)
    pytest.fail(f"the controller never became ready ({last}); its log:\n{compose.logs()}")


def wait_until_final(client: httpx2.Client, task_id: str, timeout: float = 240) -> dict[str, Any]:
    """Poll GET /v1/tasks/{id} until the task reaches a final state; return its view."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = client.get(f"/v1/tasks/{task_id}")
        assert reply.status_code == 200, reply.text
        view = reply.json()
        if view["status"] in FINAL_STATES:
            return view
        time.sleep(1)
    pytest.fail(f"task {task_id} did not finish in {timeout} s: {view}")


@pytest.fixture
def tool() -> list[str]:
    """The machine's compose tool (see ``require_compose_tool``)."""
    return require_compose_tool()


@pytest.fixture
def compose_project(tool: list[str], tmp_path: Path) -> Iterator[Compose]:
    """A compose project of this test (unique name, free port, its own folder); removed afterwards."""
    ensure_controller_image()
    folder = tmp_path / "checkout"  # stands for the folder a developer runs compose from
    folder.mkdir()
    token = secrets.token_urlsafe(32)
    compose = Compose(
        tool=tool,
        project=f"taskbox-test-{secrets.token_hex(4)}",
        folder=folder,
        variables={
            "TASKBOX_API_TOKENS": f"{token}=hello",
            "TASKBOX_REPOSITORIES": f"hello={folder / 'hello-api'}",
            "TASKBOX_MODEL_UPSTREAM": f"scripted:{folder / 'greetings.script.jsonl'}",
            "TASKBOX_ANTHROPIC_API_KEY": "",  # never a developer's key from a .env
            "TASKBOX_HOST_PORT": str(free_loopback_port()),
        },
    )
    try:
        yield compose
    finally:
        # Also after a failure; the test itself asserts that `down` alone left nothing.
        remove_project(compose)
        sandboxes_of(run_ids(compose))


def run_ids(compose: Compose) -> list[str]:
    """The runs recorded in the project's folder (var/runs/<run-id>)."""
    runs = compose.folder / "var" / "runs"
    return [p.name for p in runs.iterdir()] if runs.is_dir() else []


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of ``config`` output: 1.29 writes strings, v2 mappings."""
    found = []
    for port in service["ports"]:
        if isinstance(port, str):
            host_ip, host_port, target = port.split("/")[0].rsplit(":", 2)
        else:
            host_ip, host_port, target = port["host_ip"], port["published"], port["target"]
        found.append((str(host_ip), str(host_port), str(target)))
    return found


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of ``config`` output: 1.29 writes strings, v2 mappings."""
    found = []
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found.append((str(source), str(target)))
    return found


def test_compose_config_resolves_with_no_taskbox_variable_set(
    tool: list[str], tmp_path: Path
) -> None:
    """With no TASKBOX_ variable set, the tool reads compose.yaml: loopback 8080, the folder mounted at its own path."""
    compose = Compose(tool=tool, project="taskbox-config", folder=tmp_path, variables={})
    done = compose("config", timeout=60)
    assert done.returncode == 0, done.stderr
    service = yaml.safe_load(done.stdout)["services"]["controller"]
    folder = str(tmp_path)
    assert published_ports(service) == [("127.0.0.1", "8080", "8080")]
    assert (folder, folder) in bind_mounts(service)
    assert service["working_dir"] == folder
    assert service["environment"]["TASKBOX_RUNS_DIR"] == f"{folder}/var/runs"
    assert service["environment"]["TASKBOX_API_TOKENS"] == ""  # serve refuses; reproduce needs none


# A cold controller image build (first run, or sources changed) takes minutes on 2 busy cores.
@pytest.mark.timeout(900)
def test_compose_up_runs_a_task_over_http_and_compose_run_reproduces_it(
    compose_project: Compose,
) -> None:
    """`compose up` serves the API on loopback; a task submitted over HTTP lands its branch; `compose run --rm controller reproduce` says identical."""
    folder = compose_project.folder
    repo = copy_example_repo(folder / "hello-api")
    shutil.copy2(EXAMPLES / "greetings.script.jsonl", folder / "greetings.script.jsonl")
    token = compose_project.variables["TASKBOX_API_TOKENS"].partition("=")[0]
    port = compose_project.variables["TASKBOX_HOST_PORT"]

    sandbox_image = docker.from_env().images.get(SANDBOX_IMAGE).id
    up = compose_project("up", "-d", timeout=120)
    assert up.returncode == 0, up.stderr

    # Both tools applied compose.yaml's hardening and published the port on loopback only.
    (service,) = docker.from_env().containers.list(
        filters={"label": f"{PROJECT_LABEL}={compose_project.project}"}
    )
    host_config = service.attrs["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"]
    assert set(host_config["CapAdd"]) == {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    assert host_config["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": port}]}

    with httpx2.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as client:
        wait_until_ready(client, compose_project)
        body = {
            "task": json.loads((EXAMPLES / "task-greetings.json").read_text()),
            "repository": "hello",
            "baseRef": "main",
        }
        reply = client.post(
            "/v1/tasks", json=body, headers={"Idempotency-Key": compose_project.project}
        )
        assert reply.status_code == 202, reply.text
        view = wait_until_final(client, reply.json()["id"])
        if view["status"] != "succeeded":
            pytest.fail(f"task {view['status']}: {view['reason']}\n{compose_project.logs()}")
        result = client.get(f"/v1/tasks/{view['id']}/result").json()

    commit = git(repo, "rev-parse", "--verify", "taskbox/BE-101").strip()
    assert result["git_commit"] == commit
    run_dir = f"var/runs/{view['runId']}"
    assert (folder / run_dir / "record" / "result.json").is_file()  # same path inside and out

    # The README's line, as typed: no token is needed to reproduce.
    again = compose_project(
        "run", "--rm", "controller", "reproduce", run_dir, without=("TASKBOX_API_TOKENS",)
    )
    if again.returncode != 0:
        # On a shared engine someone may rebuild the sandbox image mid-test: say so.
        rebuilt = docker.from_env().images.get(SANDBOX_IMAGE).id != sandbox_image
        pytest.fail(
            f"reproduce exited {again.returncode}"
            + (f" ({SANDBOX_IMAGE} was rebuilt during the test)" if rebuilt else "")
            + f":\n{again.stdout[-3000:]}\n--- stderr ---\n{again.stderr[-1500:]}"
        )
    assert f"identical: same commit {commit}" in again.stdout, again.stdout[-4000:]

    # `down` alone removes the service, the network and the one-off containers; the
    # controller removed its sandboxes.
    down, leftovers = remove_project(compose_project)
    assert down.returncode == 0, down.stderr
    assert leftovers == Leftovers(containers=[], networks=[])
    assert sandboxes_of(run_ids(compose_project)) == []
