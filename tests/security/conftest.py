"""Fixtures of the red-team suite: hostile repositories, short-deadline policies, real sandboxes.

Every attack runs against the real Docker engine and the real sandbox image,
either as a direct probe (``run_in_task_sandbox``, what ``taskbox sandbox run``
does) or as a whole task whose hostile code a scripted model writes into its
owned paths (``TaskRunner.execute``). The fixtures here also hash the host files
around each run and check that no container of this session is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import DockerException

from controller.admission import admit
from controller.gitrepo import SAFE_GIT_ENV
from controller.runs import TaskRunner
from controller.sandbox.backend import SandboxHandle
from controller.sandbox.docker import DockerBackend, DockerImages
from controller.sandbox.spec import (
    LABEL_CONTROLLER,
    LABEL_MANAGED,
    LABEL_RUN,
    ContainerSpec,
    StagingPaths,
    build_container_spec,
)
from controller.sandbox.task_sandbox import (
    TaskSandboxRun,
    run_config_for,
    run_in_task_sandbox,
)
from controller.settings import PROJECT_ROOT, Settings
from controller.staging import remove_staging, stage_run
from taskbox_wire.contract import Task

HERE = Path(__file__).resolve().parent
PROBE_SOURCE = HERE / "probes" / "sandbox_probe.py"
PROBE_PATH = "probes/sandbox_probe.py"
REPORT_PREFIX = "TASKBOX-PROBE "
READY_LINE = "TASKBOX-READY "
LISTENING_LINE = "TASKBOX-LISTENING "
IMAGE = "taskbox-sandbox:latest"

#: This session's controller id: every container of the suite carries it, so the leftover
#: check never confuses the suite's containers with those of people using the same engine.
CONTROLLER_ID = f"redteam-{secrets.token_hex(4)}"
TEST_LABEL = "taskbox.test"

#: Secrets that must never be seen inside a sandbox.
API_KEY_CANARY = f"sk-ant-api03-CANARY{secrets.token_hex(12)}"
DOTENV_CANARY = f"dotenv-CANARY-{secrets.token_hex(8)}"
SECRET_FILE_CANARY = f"secretfile-CANARY-{secrets.token_hex(8)}"

GIT_ENV = {
    **SAFE_GIT_ENV,
    "GIT_AUTHOR_NAME": "Red Team",
    "GIT_AUTHOR_EMAIL": "redteam@example.invalid",
    "GIT_COMMITTER_NAME": "Red Team",
    "GIT_COMMITTER_EMAIL": "redteam@example.invalid",
    "GIT_AUTHOR_DATE": "@1767225600 +0000",
    "GIT_COMMITTER_DATE": "@1767225600 +0000",
}

# A probe policy: the default's hardening with small limits and short deadlines.
PROBE_POLICY = """\
description: Red-team probes; the default hardening with small limits and a short deadline.
image: taskbox-sandbox:latest
uid: 10001
gid: 10001
limits: {memory_mb: 256, cpus: 0.5, pids: 64, nofile: 256, file_size_mb: 8, wall_clock_seconds: 40, log_max_mb: 1}
max: {memory_mb: 512, cpus: 1.0, pids: 128, wall_clock_seconds: 120}
tmpfs: [{path: /tmp, size_mb: 16}, {path: /home/sandbox, size_mb: 4}]
deny: [".git/", ".env*", "*.pem", "*.key", "id_rsa*", "secrets/", ".netrc", ".docker/", ".ssh/"]
model:
  allowed_models: ["claude-sonnet-4-6"]
  default_model: "claude-sonnet-4-6"
  max_tokens_per_request: 4000
  max_total_tokens: 200000
  max_requests: 20
  max_rounds: 2
ingestion: {max_result_bytes: 200000, max_bundle_bytes: 2000000}
"""

# A whole-task policy: room for the runner's checks (ruff, pytest with coverage) on FastAPI.
RUN_POLICY = """\
description: Red-team whole-task runs; enough for the runner's checks, still a short deadline.
image: taskbox-sandbox:latest
uid: 10001
gid: 10001
limits: {memory_mb: 1024, cpus: 1.0, pids: 256, nofile: 1024, file_size_mb: 16, wall_clock_seconds: 120, log_max_mb: 2}
max: {memory_mb: 2048, cpus: 2.0, pids: 512, wall_clock_seconds: 300}
tmpfs: [{path: /tmp, size_mb: 256}, {path: /home/sandbox, size_mb: 16}]
deny: [".git/", ".env*", "*.pem", "*.key", "id_rsa*", "secrets/", ".netrc", ".docker/", ".ssh/"]
model:
  allowed_models: ["claude-sonnet-4-6"]
  default_model: "claude-sonnet-4-6"
  max_tokens_per_request: 4000
  max_total_tokens: 400000
  max_requests: 20
  max_rounds: 2
ingestion: {max_result_bytes: 200000, max_bundle_bytes: 2000000}
"""

#: The target repository every attack starts from: the example app, secrets it must never
#: show a sandbox, and the probe script as a relevant (read-only) file.
EXAMPLE = PROJECT_ROOT / "examples" / "hello-api"


def repository_files() -> dict[str, bytes]:
    """The files of the hostile-task target repository."""
    files = {
        str(path.relative_to(EXAMPLE)): path.read_bytes()
        for path in sorted(EXAMPLE.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.name != ".env"
    }
    files[".env"] = f"API_KEY={DOTENV_CANARY}\n".encode()
    files["secrets/api.key"] = f"{SECRET_FILE_CANARY}\n".encode()
    files["config/id_rsa"] = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET_FILE_CANARY}\n".encode()
    files["app/api/__init__.py"] = b""
    files["notes/unplanned.md"] = b"not in any plan\n"
    files[PROBE_PATH] = PROBE_SOURCE.read_bytes()
    return files


def git(repo: Path, *args: str, input_bytes: bytes | None = None) -> bytes:
    """Run git in ``repo`` with a fixed identity and no user or system config."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=input_bytes,
        capture_output=True,
        env=GIT_ENV,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def build_repo(
    root: Path, files: Mapping[str, bytes], symlinks: Mapping[str, str] | None = None
) -> tuple[Path, str]:
    """A committed git repository at ``root`` with ``files`` and ``symlinks``; (path, commit)."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, target in (symlinks or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root, git(root, "rev-parse", "HEAD").decode().strip()


def make_task(
    key: str,
    *,
    owns: list[str],
    relevant: list[str] | None = None,
    resources: dict[str, Any] | None = None,
    contract: str | None = None,
) -> Task:
    """A task in the orchestrator's wire form."""
    context: dict[str, Any] = {
        f"{key}-ctx": {"relevant_files": relevant or [], "world_state": "red-team target"}
    }
    if contract is not None:
        context[f"{key}-contract"] = {"openapi_path": contract}
    wire: dict[str, Any] = {
        "taskKey": key,
        "description": "Red-team task: the code it runs is hostile.",
        "ownsPaths": owns,
        "contextJson": context,
    }
    if resources is not None:
        wire["resources"] = resources
    return Task.model_validate(wire)


# --------------------------------------------------------------------------- host state


def _hash_file(path: Path) -> str:
    if path.is_symlink():
        return "link:" + str(path.readlink())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_state(*roots: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file (a link's target text, never followed) below ``roots``."""
    state: dict[str, str] = {}
    for root in roots:
        if root.is_file() or root.is_symlink():
            state[str(root)] = _hash_file(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
            for name in [*filenames, *(d for d in dirnames if Path(dirpath, d).is_symlink())]:
                path = Path(dirpath, name)
                state[str(path.relative_to(root.parent))] = _hash_file(path)
    return state


def repo_state(repo: Path) -> dict[str, str]:
    """What must not change in a target repository: working tree, config, hooks, HEAD, index, refs."""
    state = tree_state(repo, skip=(".git",))
    git_dir = repo / ".git"
    for name in ("config", "HEAD", "index", "packed-refs", "description"):
        if (git_dir / name).exists():
            state[f".git/{name}"] = _hash_file(git_dir / name)
    for folder in ("hooks", "info"):
        state.update(
            {f".git/{k}": v for k, v in tree_state(git_dir / folder).items()}
            if (git_dir / folder).exists()
            else {}
        )
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").decode()
    state["refs"] = refs
    return state


@dataclass
class HostFiles:
    """Host files a sandbox link may aim at: a file that is a valid result, and a folder."""

    root: Path
    file: Path
    folder: Path

    def state(self) -> dict[str, str]:
        """Hashes of everything here."""
        return tree_state(self.root)


#: The host file a planted link points at. It is a *valid* result.json on purpose: a
#: collector that followed the link would accept it, so the attack shows up as a success.
HOST_RESULT_SUMMARY = f"host-file-CANARY-{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def host_files(tmp_path_factory: pytest.TempPathFactory) -> HostFiles:
    """A host file and folder outside every repository and run folder."""
    root = tmp_path_factory.mktemp("host-side")
    file = root / "host-result.json"
    file.write_text(
        json.dumps({"task_key": "SEC-1", "status": "succeeded", "summary": HOST_RESULT_SUMMARY})
    )
    folder = root / "host-folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("must survive every run\n")
    return HostFiles(root=root, file=file, folder=folder)


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine; the suite fails loudly (never skips) when it or the sandbox image is missing."""
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        pytest.fail(f"the red-team suite needs a running Docker engine: {exc}")
    if DockerImages(client).image_id(IMAGE) is None:
        pytest.fail(f"the sandbox image {IMAGE} is missing: run `.venv/bin/taskbox image build`")
    yield client
    client.close()


def session_containers(client: docker.DockerClient, run_id: str | None = None) -> list[str]:
    """Containers of this session (optionally of one run) still on the engine, running or not."""
    labels = [f"{LABEL_MANAGED}=1", f"{LABEL_CONTROLLER}={CONTROLLER_ID}"]
    if run_id is not None:
        labels.append(f"{LABEL_RUN}={run_id}")
    found = client.api.containers(all=True, filters={"label": labels})
    return [str(item["Id"]) for item in found]


@pytest.fixture(autouse=True)
def no_container_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every engine test: no container of this session is left (removed, and the test fails)."""
    yield
    if request.node.get_closest_marker("docker") is None:
        return
    client = request.getfixturevalue("docker_client")
    left = session_containers(client)
    for container_id in left:
        client.api.remove_container(container_id, force=True)
    assert not left, f"containers left behind: {left}"


class LabelledDockerBackend(DockerBackend):
    """The real Docker backend, plus the test label on each container and a list of what it created."""

    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client)
        self.created: list[SandboxHandle] = []
        self.specs: list[ContainerSpec] = []

    def create(self, spec: ContainerSpec) -> SandboxHandle:
        """Create exactly as the controller would, with ``taskbox.test=1`` added."""
        labelled = spec.model_copy(update={"labels": {**spec.labels, TEST_LABEL: "1"}})
        handle = super().create(labelled)
        self.created.append(handle)
        self.specs.append(labelled)
        return handle


# --------------------------------------------------------------------------- probes


@dataclass
class ProbeRun:
    """One direct probe: the sandbox run, all it printed, and its parsed report."""

    run: TaskSandboxRun
    log: str
    report: dict[str, Any]

    @property
    def exit_code(self) -> int | None:
        """The probe's exit status (None when the deadline killed it)."""
        return self.run.run.outcome.exit_code


def parse_report(log: str) -> dict[str, Any]:
    """The last ``TASKBOX-PROBE`` line of a log, parsed (empty when there is none)."""
    lines = [ln for ln in log.splitlines() if ln.startswith(REPORT_PREFIX)]
    return json.loads(lines[-1][len(REPORT_PREFIX) :]) if lines else {}


@dataclass
class Arena:
    """Everything an attack needs: engine, backend, policies, a hostile repository, a runs folder."""

    client: docker.DockerClient
    backend: LabelledDockerBackend
    policies: Path
    runs: Path
    repo: Path
    commit: str
    host: HostFiles
    tmp: Path
    logs: list[str] = field(default_factory=list)

    def probe(
        self,
        attack: str,
        *args: str,
        task: Task | None = None,
        collect: Mapping[str, int] | None = None,
        on_log: Callable[[str], None] | None = None,
        keep: bool = False,
        policy: str = "sec-probe",
    ) -> ProbeRun:
        """Run one probe attack in the sandbox ``task`` gets (a default task when None)."""
        chunks: list[str] = []

        def sink(text: str) -> None:
            chunks.append(text)
            if on_log is not None:
                on_log(text)

        result = run_in_task_sandbox(
            task or probe_task(),
            repo=self.repo,
            command=["python", f"/work/{PROBE_PATH}", attack, *args],
            backend=self.backend,
            policies_dir=self.policies,
            runs_dir=self.runs,
            policy_name=policy,
            keep=keep,
            extra_labels={TEST_LABEL: "1"},
            collect=collect,
            on_log=sink,
            controller_id=CONTROLLER_ID,
        )
        log = "".join(chunks)
        self.logs.append(log)
        assert session_containers(self.client, result.run_id) == [], "the probe's container is left"
        return ProbeRun(run=result, log=log, report=parse_report(log))

    @contextlib.contextmanager
    def started(
        self, command: list[str], *, task: Task | None = None, policy: str = "sec-probe"
    ) -> Iterator[StartedSandbox]:
        """A sandbox planned, staged and started exactly as a run's, removed (with its staging) on exit."""
        task = task or probe_task()
        admission = admit(
            task, repo=self.repo, base_ref="HEAD", policies_dir=self.policies, policy_name=policy
        )
        top, effective, plan = admission.repo, admission.policy, admission.plan
        run_id = f"sbx-{secrets.token_hex(6)}"
        root = self.runs / run_id
        staging = stage_run(
            repo=top,
            plan=plan,
            policy=effective,
            root=root / "stage",
            run_config_json=run_config_for(task, plan, effective, run_id).dump_for_sandbox(),
        )
        spec = build_container_spec(
            policy=effective,
            plan=plan,
            staging=staging,
            image=effective.image,
            run_id=run_id,
            command=command,
            controller_id=CONTROLLER_ID,
        )
        handle = self.backend.create(spec)
        try:
            self.backend.start(handle)
            yield StartedSandbox(handle=handle, spec=spec, staging=staging)
        finally:
            self.backend.remove(handle)
            remove_staging(root)

    def settings(self, **overrides: Any) -> Settings:
        """Controller settings for whole-task runs of this arena."""
        values: dict[str, Any] = {
            "policies_dir": self.policies,
            "runs_dir": self.runs,
            "keep_staging": False,
            "anthropic_api_key": API_KEY_CANARY,
            "anthropic_base_url": "http://127.0.0.1:9",
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]  # pydantic-settings' own init keyword

    def runner(self, model: str, **settings: Any) -> TaskRunner:
        """A TaskRunner on the labelled backend, as ``taskbox run`` builds one."""
        return TaskRunner(
            self.settings(**settings),
            self.backend,
            DockerImages(self.client),
            model=model,
            controller_id=CONTROLLER_ID,
        )


@dataclass
class StartedSandbox:
    """A running sandbox of :meth:`Arena.started`."""

    handle: SandboxHandle
    spec: ContainerSpec
    staging: StagingPaths


def probe_task(key: str = "SEC-1", **kwargs: Any) -> Task:
    """The default probe task: owns a folder and a file, reads the probe and one app file."""
    kwargs.setdefault("owns", ["app/api/", "app/main.py"])
    kwargs.setdefault("relevant", [PROBE_PATH, "app/__init__.py", "pyproject.toml"])
    return make_task(key, **kwargs)


@pytest.fixture(scope="session")
def security_policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's policies plus the suite's short-deadline ones."""
    folder = tmp_path_factory.mktemp("policies")
    for path in (PROJECT_ROOT / "policies").glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    (folder / "sec-probe.yaml").write_text(PROBE_POLICY)
    (folder / "sec-run.yaml").write_text(RUN_POLICY)
    return folder


@pytest.fixture(scope="module")
def arena(
    docker_client: docker.DockerClient,
    security_policies: Path,
    host_files: HostFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Arena:
    """A fresh hostile repository and runs folder per test module, on the real engine."""
    tmp = tmp_path_factory.mktemp("arena")
    repo, commit = build_repo(tmp / "target", repository_files(), {"docs/passwd": "/etc/passwd"})
    runs = tmp / "runs"
    runs.mkdir()
    return Arena(
        client=docker_client,
        backend=LabelledDockerBackend(docker_client),
        policies=security_policies,
        runs=runs,
        repo=repo,
        commit=commit,
        host=host_files,
        tmp=tmp,
    )


# --------------------------------------------------------------------------- scripted models


def editor_create(path: str, text: str) -> dict[str, Any]:
    """A tool call of the runner's editor that creates ``path``."""
    return {
        "type": "tool_use",
        "name": "str_replace_based_edit_tool",
        "input": {"command": "create", "path": path, "file_text": text},
    }


RUN_CHECKS: dict[str, Any] = {"type": "tool_use", "name": "run_checks", "input": {}}


def hostile_script(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two turns: the hostile tool calls plus run_checks, then the end of the turn."""
    return [
        {"content": [{"type": "text", "text": "Writing the code."}, *calls, RUN_CHECKS]},
        {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"},
    ]


def write_script(folder: Path, turns: list[dict[str, Any]]) -> Path:
    """A scripted-model file of these turns."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"script-{secrets.token_hex(4)}.jsonl"
    path.write_text("".join(json.dumps(turn) + "\n" for turn in turns))
    return path


def forwarding_test(*attacks: list[str], before: str = "") -> str:
    """A pytest test that runs probes during verification and writes their reports to the container log.

    pytest's output goes to files inside the sandbox; PID 1's stdout is the container
    log, which the controller keeps as ``record/sandbox.log``. ``before`` is more
    hostile code run first, inside the test.
    """
    argvs = json.dumps([["/work/" + PROBE_PATH, *attack] for attack in attacks])
    return (
        '"""Hostile test: runs probes during verification and reports through PID 1."""\n\n'
        "import json\nimport os\nimport subprocess\nimport sys\nfrom pathlib import Path\n\n\n"
        "def test_probe() -> None:\n"
        f"{textwrap.indent(before, '    ')}\n"
        f"    for argv in {argvs}:\n"
        "        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=False)\n"
        '        with open("/proc/1/fd/1", "w") as log:\n'
        "            log.write(done.stdout + done.stderr)\n"
    )


def reports_in(log: str) -> dict[str, dict[str, Any]]:
    """Every probe report of a log, by attack name."""
    found: dict[str, dict[str, Any]] = {}
    for line in log.splitlines():
        _, marker, payload = line.partition(REPORT_PREFIX)
        if marker:
            report = json.loads(payload)
            found[report["attack"]] = report
    return found


# --------------------------------------------------------------------------- a fake upstream


@dataclass
class FakeMessagesApi:
    """A loopback Messages API that answers canned turns and keeps every request's headers and body."""

    url: str
    server: ThreadingHTTPServer
    turns: list[dict[str, Any]]
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def stop(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()


def serve_fake_messages_api(turns: list[dict[str, Any]]) -> FakeMessagesApi:
    """Start the fake API on 127.0.0.1 (a free port) in a thread."""
    state: dict[str, FakeMessagesApi] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            """Quiet: the test reads the requests, not a log."""

        def do_POST(self) -> None:
            """Answer the next canned turn as the real API would."""
            api = state["api"]
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
            api.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            turn = api.turns.pop(0) if api.turns else {"content": [{"type": "text", "text": "."}]}
            content = [
                {**block, "id": f"toolu_{secrets.token_hex(8)}"}
                if block["type"] == "tool_use"
                else block
                for block in turn["content"]
            ]
            uses_tool = any(block["type"] == "tool_use" for block in content)
            answer = {
                "id": f"msg_{secrets.token_hex(8)}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "claude-sonnet-4-6"),
                "content": content,
                "stop_reason": turn.get("stop_reason", "tool_use" if uses_tool else "end_turn"),
                "stop_sequence": None,
                "usage": {"input_tokens": 100, "output_tokens": 50},
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("request-id", f"req_{secrets.token_hex(6)}")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api = FakeMessagesApi(
        url=f"http://127.0.0.1:{server.server_address[1]}", server=server, turns=turns
    )
    state["api"] = api
    threading.Thread(target=server.serve_forever, name="fake-messages-api", daemon=True).start()
    return api


# --------------------------------------------------------------------------- markers

#: The security invariants of the design (shared/design.md), numbered 1..13.
INVARIANTS = 13


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every red-team test names the invariant it attacks (``@pytest.mark.invariant(N)``)."""
    for item in items:
        if HERE not in Path(str(item.path)).parents:
            continue
        marker = item.get_closest_marker("invariant")
        if marker is None or not all(
            isinstance(n, int) and 1 <= n <= INVARIANTS for n in marker.args
        ):
            raise pytest.UsageError(f"{item.nodeid} does not name the invariant it attacks")
        item.add_marker(pytest.mark.security)
