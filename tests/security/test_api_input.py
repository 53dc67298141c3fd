"""Hostile callers and hostile task input: the API's tokens, paths in tasks, widened policies, neighbours.

The API is the real app (``create_app``) with the real TaskRunner and Docker
backend behind it, served by uvicorn on loopback. A task that must be refused
at admission must never reach the engine: the labelled backend records every
container it creates, and those lists are asserted empty.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from pydantic import ValidationError

from controller.api import create_app
from controller.errors import InvalidTaskError, PolicyError
from controller.policy.loader import load_policy
from controller.policy.planner import RefusalReason
from controller.runs import TaskRunner
from controller.sandbox.docker import DockerImages
from controller.sandbox.spec import LABEL_POLICY
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import Task
from tests.security.conftest import (
    CONTROLLER_ID,
    PROBE_PATH,
    Arena,
    build_repo,
    make_task,
    probe_task,
    repo_state,
    write_script,
)

pytestmark = [pytest.mark.security]
TOKEN_ALL = secrets.token_urlsafe(24)
TOKEN_ALPHA = secrets.token_urlsafe(24)
FINISHED = ("succeeded", "failed", "timeout", "cancelled", "error")


@dataclass
class Served:
    """The API on loopback, and what it runs on."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    arena: Arena
    runner: TaskRunner

    def client(self, token: str | None = TOKEN_ALL, **headers: str) -> httpx2.Client:
        """A client with ``Authorization: Bearer token`` (none when ``token`` is None)."""
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return httpx2.Client(base_url=self.url, headers=sent, timeout=30)

    def submit(self, body: dict[str, Any], token: str = TOKEN_ALL) -> httpx2.Response:
        """POST /v1/tasks with a fresh idempotency key."""
        with self.client(token) as client:
            return client.post(
                "/v1/tasks", json=body, headers={"Idempotency-Key": secrets.token_hex(8)}
            )

    def finished(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        """Poll the task until it ends; its view."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                view: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
                if view["status"] in FINISHED:
                    return view
                assert time.monotonic() < deadline, f"task {task_id} did not finish"
                time.sleep(0.1)


def body(task: dict[str, Any], repository: str = "alpha", **extra: Any) -> dict[str, Any]:
    """A submission body."""
    return {"task": task, "repository": repository, **extra}


def wire_task(key: str = "SEC-API", **fields: Any) -> dict[str, Any]:
    """A valid task in wire form; ``fields`` replace or add keys."""
    task: dict[str, Any] = {
        "taskKey": key,
        "description": "Red-team task.",
        "ownsPaths": ["app/api/"],
        "contextJson": {f"{key}-ctx": {"relevant_files": ["pyproject.toml"]}},
    }
    task.update(fields)
    return task


@pytest.fixture(scope="module")
def served(arena: Arena, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The controller API with the real TaskRunner (scripted model that ends at once) on loopback."""
    tmp = tmp_path_factory.mktemp("api")
    beta, _ = build_repo(tmp / "beta", {"README.md": b"beta\n", "app/api/__init__.py": b""})
    script = write_script(
        tmp, [{"content": [{"type": "text", "text": "Nothing to do."}], "stop_reason": "end_turn"}]
    )
    settings = arena.settings(
        api_tokens={TOKEN_ALL: ["*"], TOKEN_ALPHA: ["alpha"]},
        repositories={"alpha": arena.repo, "beta": beta},
        database=tmp / "taskbox.sqlite3",
        max_concurrent_tasks=2,
        shutdown_grace_seconds=5,
    )
    runner = TaskRunner(
        settings,
        arena.backend,
        DockerImages(arena.client),
        model=f"scripted:{script}",
        controller_id=CONTROLLER_ID,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, runner), log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread, arena, runner)
    server.should_exit = True
    thread.join(30)


# --------------------------------------------------------------------------- tokens (invariant 10)

ROUTES = [
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/" + "0" * 32),
    ("GET", "/v1/tasks/" + "0" * 32 + "/result"),
    ("GET", "/v1/tasks/" + "0" * 32 + "/events"),
    ("GET", "/v1/tasks/" + "0" * 32 + "/audit"),
    ("POST", "/v1/tasks/" + "0" * 32 + "/cancel"),
    ("GET", "/v1/policies"),
    ("GET", "/metrics"),
]


def bad_credentials() -> dict[str, dict[str, str]]:
    """Ways to present no valid token: each is a set of headers."""
    return {
        "none": {},
        "wrong": {"Authorization": "Bearer " + secrets.token_urlsafe(24)},
        "truncated": {"Authorization": "Bearer " + TOKEN_ALL[:-1]},
        "extended": {"Authorization": "Bearer " + TOKEN_ALL + "x"},
        "empty": {"Authorization": "Bearer"},
        "basic": {"Authorization": "Basic " + base64.b64encode(f"x:{TOKEN_ALL}".encode()).decode()},
        "no-scheme": {"Authorization": TOKEN_ALL},
        "x-api-key": {"x-api-key": TOKEN_ALL},
        "cookie": {"Cookie": f"token={TOKEN_ALL}"},
    }


@pytest.mark.docker
@pytest.mark.invariant(10)
def test_every_route_refuses_callers_without_a_valid_token(served: Served) -> None:
    """Invariant 10: no token, a wrong, truncated or extended one, Basic, a query parameter or a cookie: 401 everywhere."""
    for name, headers in bad_credentials().items():
        with httpx2.Client(base_url=served.url, headers=headers, timeout=30) as client:
            for method, path in ROUTES:
                answer = client.request(
                    method,
                    path,
                    json=body(wire_task()) if method == "POST" else None,
                    headers={"Idempotency-Key": secrets.token_hex(8)},
                )
                assert answer.status_code == 401, f"{name} {method} {path}: {answer.status_code}"
                assert answer.json()["error"]["code"] == "unauthenticated", answer.text
    with httpx2.Client(base_url=served.url, timeout=30) as client:
        answer = client.get("/v1/tasks", params={"token": TOKEN_ALL, "access_token": TOKEN_ALL})
        assert answer.status_code == 401
        # Liveness and readiness are the documented exceptions.
        assert client.get("/healthz").status_code == 200
    with served.client() as client:
        assert client.get("/v1/tasks").json()["items"] == [], "a refused request created a task"
    assert served.arena.backend.created == []


@pytest.mark.docker
@pytest.mark.invariant(10)
def test_token_of_one_repository_cannot_use_another(served: Served) -> None:
    """Invariant 10: a token for `alpha` cannot submit to or list `beta`, and `beta`'s tasks are 404 to it,
    exactly like ids that do not exist (no 403 that would confirm the id or name its repository)."""
    answer = served.submit(
        body(wire_task("SEC-BETA", ownsPaths=["../escape/"]), "beta"), TOKEN_ALPHA
    )
    assert answer.status_code == 403
    created = served.submit(body(wire_task("SEC-BETA2"), "beta"))
    assert created.status_code == 202, created.text
    beta_task = created.json()
    missing = "f" * 32
    with served.client(TOKEN_ALPHA) as client:
        for method, suffix in (
            ("GET", ""),
            ("GET", "/result"),
            ("GET", "/events"),
            ("GET", "/audit"),
            ("POST", "/cancel"),
        ):
            foreign = client.request(method, f"/v1/tasks/{beta_task['id']}{suffix}")
            unknown = client.request(method, f"/v1/tasks/{missing}{suffix}")
            assert foreign.status_code == unknown.status_code == 404, suffix
            assert foreign.json()["error"]["code"] == "task_not_found"
            assert "beta" not in foreign.text
            assert foreign.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
                missing, beta_task["id"]
            )
        assert client.get("/v1/tasks", params={"repository": "beta"}).status_code == 403
        listed = client.get("/v1/tasks").json()["items"]
        assert all(item["repository"] == "alpha" for item in listed)
    view = served.finished(beta_task["id"])
    assert view["status"] != "cancelled", "a foreign token's cancel reached the task"


# --------------------------------------------------------------------------- paths in tasks (invariant 4)


@pytest.mark.docker
@pytest.mark.invariant(4)
@pytest.mark.parametrize(
    "repository",
    ["/etc", "../alpha", "alpha/../beta", "/work/main", "alpha\x00", ".git", "~root"],
)
def test_repository_is_a_name_never_a_path(served: Served, repository: str) -> None:
    """Invariant 4: the caller names a configured repository; a path in its place is refused (422)."""
    answer = served.submit(body(wire_task(), repository))
    assert answer.status_code == 422, answer.text


OWNED_ATTACKS = [
    "../outside/",
    "../../etc/",
    "app/../../escape.py",
    "/etc/",
    "/var/run/docker.sock",
    str(PROJECT_ROOT / "var" / "runs") + "/",
    "~/.ssh/",
    ".",
    "/",
    ".git/hooks/",
    ".git",
    ".env",
    "secrets/",
    "docs/passwd",
    "app\\..\\..\\x",
    "app/api/\nx",
]


@pytest.mark.docker
@pytest.mark.invariant(4)
def test_hostile_owned_paths_are_refused_before_any_container(served: Served) -> None:
    """Invariant 4: `..`, absolute, home, docker.sock, controller folders, .git, secrets, repo symlinks:
    422 `invalid_task` at submit with the plan's reason; no task is queued and no container made."""
    before = repo_state(served.arena.repo)
    created_before = len(served.arena.backend.created)
    with served.client() as client:
        listed_before = len(client.get("/v1/tasks", params={"limit": 200}).json()["items"])
    for index, owned in enumerate(OWNED_ATTACKS):
        answer = served.submit(body(wire_task(f"SEC-OWN{index}", ownsPaths=[owned])))
        assert answer.status_code == 422, (owned, answer.text)
        error = answer.json()["error"]
        assert error["code"] in ("invalid_task", "validation_error"), owned
        if error["code"] == "invalid_task":
            assert "refused by the plan" in error["message"], owned
    with served.client() as client:
        listed_after = len(client.get("/v1/tasks", params={"limit": 200}).json()["items"])
    assert listed_after == listed_before, "a refused task was queued"
    assert len(served.arena.backend.created) == created_before
    assert repo_state(served.arena.repo) == before


@pytest.mark.docker
@pytest.mark.invariant(4)
def test_hostile_relevant_files_become_missing_context_never_mounts(served: Served) -> None:
    """Invariant 4: the same attacks as relevant files are reported as missing context and never mounted."""
    hostile = [
        "../../etc/passwd",
        "/etc/shadow",
        "docs/passwd",
        ".env",
        ".git/config",
        "secrets/api.key",
        "config/id_rsa",
        "/var/run/docker.sock",
        "app/../../x",
        str(PROJECT_ROOT / "pyproject.toml"),
    ]
    task = make_task("SEC-REL", owns=["app/api/"], relevant=hostile, contract="../../etc/passwd")
    arena = served.arena
    plan = served.runner.admit(task, arena.repo, "HEAD", "sec-probe").plan
    mounted = {e.path for e in [*plan.read_only, *plan.read_write]} | {s.path for s in plan.staged}
    assert mounted == {"app/api", "app/api/__init__.py"}
    refused = {r.path: r.reason for r in plan.refused}
    for path in hostile:
        assert path in refused, path
    assert refused["docs/passwd"] is RefusalReason.SYMLINK
    assert refused[".env"] is RefusalReason.DENIED
    assert refused["/etc/shadow"] is RefusalReason.ABSOLUTE
    assert len(plan.missing_context) == len(hostile) + 1  # and the contract


@pytest.mark.invariant(4)
@pytest.mark.parametrize(
    "key", ["../x", "a/b", "-rf", "x\ny", "", "x" * 65, "é", "HEAD:refs/heads/main"]
)
def test_task_key_cannot_reach_branch_names_or_labels(key: str) -> None:
    """Invariant 4: a task key that would be an odd branch name, label or option is refused by the contract."""
    with pytest.raises(ValidationError):
        Task.model_validate(wire_task(key))


# --------------------------------------------------------------------------- widening (invariant 9)

WIDENING_FIELDS: dict[str, Any] = {
    "image": "alpine:latest",
    "user": "0:0",
    "workdir": "/proc/self/fd/7",
    "workingDir": "/proc/self/fd/7",
    "env": {"LD_PRELOAD": "/tmp/x.so"},
    "environment": {"DOCKER_HOST": "unix:///var/run/docker.sock"},
    "network": "host",
    "networkMode": "bridge",
    "capAdd": ["SYS_ADMIN"],
    "privileged": True,
    "volumes": ["/:/host"],
    "mounts": [{"source": "/", "target": "/host"}],
    "policy": "unconfined",
    "runtime": "runc",
    "securityOpt": ["seccomp=unconfined"],
}


@pytest.mark.docker
@pytest.mark.invariant(9)
def test_task_cannot_choose_image_user_workdir_env_network_or_capabilities(served: Served) -> None:
    """Invariant 9: any container setting in a task, or beside it in the request, is refused (422)."""
    created = len(served.arena.backend.created)
    for name, value in WIDENING_FIELDS.items():
        answer = served.submit(body(wire_task(**{name: value})))
        assert answer.status_code == 422, name
        answer = served.submit(body(wire_task(), **{name: value}))
        assert answer.status_code == 422, f"top-level {name}"
        with pytest.raises(ValidationError):
            Task.model_validate(wire_task(**{name: value}))
    worker = served.submit(body(wire_task(worker="root-shell")))
    assert worker.status_code == 422
    assert len(served.arena.backend.created) == created


@pytest.mark.docker
@pytest.mark.invariant(9)
def test_resource_requests_above_the_policy_maximum_are_refused(served: Served) -> None:
    """Invariant 9: asking for more memory, CPU, pids or time than the policy's max is refused, never clamped up."""
    arena = served.arena
    for field, value in (
        ("memory_mb", 1_000_000),
        ("cpus", 64),
        ("pids", 32768),
        ("wall_clock_seconds", 86400),
    ):
        task = make_task("SEC-RES", owns=["app/api/"], resources={field: value})
        with pytest.raises(InvalidTaskError, match="asks for more than"):
            served.runner.admit(task, arena.repo, "HEAD", "sec-probe")
    # Lowering is allowed and shows in the effective policy (and so in its digest).
    lowered = make_task("SEC-RES", owns=["app/api/"], resources={"memory_mb": 128})
    admission = served.runner.admit(lowered, arena.repo, "HEAD", "sec-probe")
    policy, plan = admission.policy, admission.plan
    assert policy.limits.memory_mb == 128
    assert (
        plan.policy_digest == policy.digest() != load_policy(arena.policies, "sec-probe").digest()
    )
    created = len(arena.backend.created)
    for resources in ({"memoryMb": 1_000_000}, {"pids": 1_000_000}, {"wallClockSeconds": 10**7}):
        answer = served.submit(body(wire_task("SEC-RES2", resources=resources)))
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_task"
        assert "asks for more than" in answer.json()["error"]["message"]
    assert len(arena.backend.created) == created


POLICY_BASE = {
    "image": "taskbox-sandbox:latest",
    "uid": 10001,
    "gid": 10001,
    "limits": {"memory_mb": 256, "cpus": 0.5, "pids": 64, "wall_clock_seconds": 30},
    "max": {"memory_mb": 256, "cpus": 0.5, "pids": 64, "wall_clock_seconds": 30},
    "tmpfs": [{"path": "/tmp", "size_mb": 8}],
    "deny": [],
    "model": {
        "allowed_models": ["claude-sonnet-4-6"],
        "default_model": "claude-sonnet-4-6",
        "max_tokens_per_request": 1000,
        "max_total_tokens": 10000,
        "max_requests": 10,
        "max_rounds": 1,
    },
}


@pytest.mark.invariant(9)
@pytest.mark.parametrize(
    "change",
    [
        {"mounts": [{"source": "/", "target": "/host", "read_only": False}]},
        {"privileged": True},
        {"network_mode": "host"},
        {"cap_add": ["SYS_ADMIN"]},
        {"uid": 0},
        {"gid": 0},
        {"deny": ["!.env"]},
        {"tmpfs": [{"path": "/tmp", "size_mb": 8}, {"path": "/work", "size_mb": 8}]},
        {"tmpfs": [{"path": "/tmp", "size_mb": 8}, {"path": "/run/taskbox", "size_mb": 8}]},
        {"tmpfs": [{"path": "/tmp", "size_mb": 8}, {"path": "/proc", "size_mb": 8}]},
        {"limits": {"memory_mb": 512, "cpus": 0.5, "pids": 64, "wall_clock_seconds": 30}},
    ],
    ids=[
        "rw-mount",
        "privileged",
        "host-network",
        "capability",
        "root-uid",
        "root-gid",
        "negated-deny",
        "tmpfs-over-work",
        "tmpfs-over-gateway",
        "tmpfs-over-proc",
        "limits-above-max",
    ],
)
def test_policy_files_cannot_add_mounts_privileges_or_undo_denies(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    """Invariant 9: a policy file that adds a mount, a privilege, root, an allow rule or limits above its max is refused."""
    import yaml  # noqa: PLC0415 - only these tests write policy files

    (tmp_path / "widened.yaml").write_text(yaml.safe_dump({**POLICY_BASE, **change}))
    with pytest.raises(PolicyError):
        load_policy(tmp_path, "widened")


@pytest.mark.invariant(9)
def test_child_policy_cannot_drop_the_mandatory_deny_rules(tmp_path: Path) -> None:
    """Invariant 9: `extends` with `deny: []` (or an empty file) still denies .git, .env, keys and secrets."""
    import yaml  # noqa: PLC0415

    (tmp_path / "parent.yaml").write_text(yaml.safe_dump({**POLICY_BASE, "deny": ["*.sqlite3"]}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "parent", "deny": []}))
    child = load_policy(tmp_path, "child")
    for rule in (".git/", ".env*", "*.pem", "*.key", "id_rsa*", "secrets/", "*.sqlite3"):
        assert rule in child.deny


@pytest.mark.docker
@pytest.mark.invariant(9)
def test_every_run_records_its_effective_policy_and_digest(served: Served) -> None:
    """Invariant 9: a run's audit holds the effective policy and its digest, the same as the plan and the container label."""
    answer = served.submit(body(wire_task("SEC-AUDIT", resources={"memory_mb": 512})))
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    served.finished(task_id)
    with served.client() as client:
        audit = client.get(f"/v1/tasks/{task_id}/audit").json()["audit"]
    digest = audit["policy"]["digest"]
    assert audit["policy"]["policy"]["limits"]["memory_mb"] == 512
    assert audit["plan"]["policy_digest"] == digest
    assert audit["container"]["Config"]["Labels"][LABEL_POLICY] == digest
    assert audit["container"]["HostConfig"]["Memory"] == 512 * 1024 * 1024


# --------------------------------------------------------------------------- neighbours (invariant 4)


@pytest.mark.docker
@pytest.mark.invariant(4)
def test_one_task_cannot_see_another_tasks_processes_or_files(arena: Arena) -> None:
    """Invariant 4: two sandboxes at once: each sees only its own processes, and neither the other's nor the host's run folders."""
    markers = [f"neighbour-{secrets.token_hex(4)}" for _ in range(2)]
    runs: dict[int, Any] = {}

    def run(index: int) -> None:
        task = probe_task(f"SEC-N{index}", relevant=[PROBE_PATH])
        runs[index] = arena.probe("neighbour", markers[index], markers[1 - index], "3", task=task)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(runs) == {0, 1}
    for index in range(2):
        report = runs[index].report
        assert report["seen_other_process"] is False
        assert report["pid_count_seen"] < 10  # init, the probe, and nothing of the neighbour's
        assert report["host_runs_dir"], "the probe could not name its own host folder"
        assert report["host_runs_dir_visible"] is False


# --------------------------------------------------------------------------- host paths (invariant 10)


@pytest.mark.docker
@pytest.mark.invariant(10)
def test_audit_shows_no_host_path_and_the_record_keeps_them(served: Served) -> None:
    """Invariant 10: the audit of a real run names no staging folder, repository, engine root, overlay
    layer or log file of the host; the run record on disk still has them for the operator."""
    answer = served.submit(body(wire_task("SEC-HOSTPATH")))
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    served.finished(task_id)
    with served.client() as client:
        response = client.get(f"/v1/tasks/{task_id}/audit")
    assert response.status_code == 200, response.text
    text = response.text
    arena = served.arena
    for host in (str(arena.runs), str(arena.repo), "/var/lib/docker", "overlay2/", "-json.log"):
        assert host not in text, host
    container = response.json()["audit"]["container"]
    layers = json.loads(
        (arena.runs / response.json()["runId"] / "record" / "container.json").read_text()
    )["GraphDriver"]["Data"]
    for layer_path in layers.values():
        for piece in layer_path.split(":"):
            assert piece.rsplit("/", 2)[-2] not in text, "an overlay layer id leaked"
    # Inspected before the start, some of these are still empty; none may name a host file.
    for field in ("LogPath", "ResolvConfPath", "HostsPath", "HostnamePath"):
        assert container[field] in ("", "<host path>"), field
    assert set(container["GraphDriver"]["Data"].values()) == {"<host path>"}
    assert all(m["Source"] == "<host path>" for m in container["Mounts"] if m["Type"] == "bind")
    assert {m["Destination"] for m in container["Mounts"]} >= {"/out"}  # container side kept
    on_disk = (arena.runs / response.json()["runId"] / "record" / "container.json").read_text()
    assert str(arena.runs) in on_disk
    assert "LogPath" in on_disk
