"""A task's agent phase through ``TaskRunner.execute`` on a fake Kubernetes cluster: the gateway over TCP.

The real task runner, staging, exchange (uvicorn on loopback), lightkube client,
gateway (scripted upstream) and in-pod stage-in (``taskbox_runner.podio.stage_in``,
run on the host) are used; only the cluster is fake. The fake kubelet plays the
agent's Pod: it unpacks ``in.tar`` as podio does, reads ``/taskbox/run.json``,
calls the run's gateway with the anthropic SDK at the URL and with the token it
finds there, and sends a result back. What only a real cluster shows (that the
network plugin lets the Pod reach that port and nothing else) is not claimed here.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import pytest
from taskbox_runner.podio import stage_in

from controller.runs import TaskRunner, new_run_id
from controller.sandbox.engines import sandbox_wiring
from controller.sandbox.kubernetes.backend import KubernetesBackend, KubernetesImages
from controller.sandbox.kubernetes.client import kube_client, raw_client
from controller.sandbox.kubernetes.exchange import Exchange, ExchangeServer
from controller.sandbox.kubernetes.target import target_from_settings
from controller.settings import PROJECT_ROOT, Settings
from controller.staging import stage_run
from taskbox_wire.contract import Task
from taskbox_wire.paths import GATEWAY_DIR, RESULT_FILE
from taskbox_wire.pod import ENV_EXCHANGE_TOKEN, ENV_EXCHANGE_URL, EXCHANGE_OUT, MAIN_CONTAINER
from tests.conftest import copy_example_repo
from tests.controller.sandbox.kubernetes.fake_api import (
    POLICIES,
    FakeCluster,
    FakePod,
    fake_config,
    make_app,
    serve,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

NAMESPACE = "taskbox"
CLUSTER_IMAGE = "registry.example/taskbox-sandbox:1"
EXAMPLE_TASK = PROJECT_ROOT / "examples" / "task-greetings.json"
MODEL = "claude-sonnet-4-6"


@dataclass
class Seen:
    """What the fake kubelet saw inside the agent's Pod."""

    run_config: dict[str, Any] = field(default_factory=dict)
    policy_ports: list[int] = field(default_factory=list)
    reply: str = ""
    wrong_token_status: int | None = None
    pod: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cluster:
    """The fake cluster, a task runner on it, and what its kubelet saw."""

    cluster: FakeCluster
    runner: TaskRunner
    settings: Settings
    exchange_port: int
    seen: Seen


def _sdk(base_url: str, token: str) -> anthropic.Anthropic:
    """The anthropic SDK as the runner makes it for a TCP gateway (no proxy from the environment)."""
    return anthropic.Anthropic(
        api_key=token,
        base_url=base_url,
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(transport=httpx2.HTTPTransport()),
    )


def agent_kubelet(cluster: FakeCluster, stage: Path, seen: Seen) -> Any:
    """A kubelet for the agent's Pod: podio's stage-in, one model call through the gateway, a result back."""

    def handler(pod: FakePod) -> None:
        try:
            play(pod)
        except Exception:
            pod.exit(125)  # the run ends at once instead of at the policy's deadline
            raise

    def play(pod: FakePod) -> None:
        env = pod.init_env()
        stage.mkdir()
        stage_in(env[ENV_EXCHANGE_URL], env[ENV_EXCHANGE_TOKEN], stage)
        pod.run()
        seen.pod = pod.manifest
        with cluster.lock:
            policy = next(iter(cluster.objects[POLICIES].values()))
        seen.policy_ports = [p["port"] for p in policy["spec"]["egress"][0]["ports"]]
        config = json.loads((stage / "taskbox" / "run.json").read_text())
        seen.run_config = config
        with _sdk(config["gateway_url"], config["gateway_token"]) as client:
            message = client.messages.create(
                model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "Hi."}]
            )
        seen.reply = "".join(b.text for b in message.content if b.type == "text")
        with _sdk(config["gateway_url"], "not-the-run-token") as wrong:
            try:
                wrong.messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )
            except anthropic.APIStatusError as exc:
                seen.wrong_token_status = exc.status_code
        pod.print("agent ran\n")
        task = config["task"]
        key = task.get("taskKey", task.get("task_key"))
        result = {"taskKey": key, "status": "failed", "summary": "no"}
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            data = json.dumps(result).encode()
            info = tarfile.TarInfo(RESULT_FILE)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        # As podio's run does: the out.tar token is in the staged, read-only exchange note.
        note = json.loads((stage / "taskbox" / "exchange.json").read_text())
        sent = httpx2.put(
            f"{note['url']}/{EXCHANGE_OUT}",
            content=buffer.getvalue(),
            headers={"Authorization": f"Bearer {note['token']}"},
            timeout=30,
        )
        assert sent.status_code == 204
        pod.exit(0)

    return handler


@pytest.fixture
def on_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A TaskRunner whose engine is the Kubernetes backend on a fake cluster, with a scripted model."""
    fake = FakeCluster(namespace=NAMESPACE)
    exchange = Exchange()
    seen = Seen()
    fake.handler = agent_kubelet(fake, tmp_path / "pod-stage", seen)
    with serve(make_app(fake)) as url, ExchangeServer(exchange, "127.0.0.1", 0) as server:
        settings = Settings(
            sandbox_backend="kubernetes",
            runs_dir=tmp_path / "runs",
            kubernetes_namespace=NAMESPACE,
            kubernetes_image=CLUSTER_IMAGE,
            kubernetes_exchange_host="127.0.0.1",
            kubernetes_exchange_port=server.port,
            kubernetes_exchange_url=f"http://127.0.0.1:{server.port}",
            kubernetes_controller_cidrs=["127.0.0.1/32"],
        )
        config = fake_config(url)
        client, http = kube_client(config, NAMESPACE), raw_client(config)
        backend = KubernetesBackend(
            client,
            target_from_settings(settings),
            exchange,
            log_http=http,
            poll_seconds=0.05,
            delete_wait_seconds=2,
        )
        runner = TaskRunner(settings, backend, KubernetesImages(settings.image, CLUSTER_IMAGE))
        try:
            yield Cluster(fake, runner, settings, server.port, seen)
        finally:
            fake.join()
            client.close()
            http.close()
            exchange.close()
    assert not fake.errors, fake.errors


def test_the_agent_reaches_its_own_gateway_over_tcp(on_cluster: Cluster, tmp_path: Path) -> None:
    """execute on Kubernetes: run.json names the run's own TCP gateway, its NetworkPolicy opens that port, the SDK gets an answer there with the run's token only."""
    script = tmp_path / "model.jsonl"
    script.write_text(json.dumps({"content": [{"type": "text", "text": "Hello, pod."}]}) + "\n")
    repo = copy_example_repo(tmp_path / "repo")
    task = Task.model_validate(json.loads(EXAMPLE_TASK.read_text()))
    run_id = new_run_id(task.task_key)

    result = on_cluster.runner.execute(
        run_id=run_id, task=task, repo=repo, base_ref="HEAD", model=f"scripted:{script}"
    )

    seen = on_cluster.seen
    url = seen.run_config["gateway_url"]
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    assert port not in (on_cluster.exchange_port, on_cluster.settings.kubernetes_gateway_port)
    # The agent's policy opens the exchange and this run's gateway port, nothing else.
    assert sorted(seen.policy_ports) == sorted([on_cluster.exchange_port, port])
    assert seen.reply == "Hello, pod."
    assert seen.wrong_token_status == 401
    # No gateway socket anywhere in the Pod: no mount at /taskbox-gateway, no hostPath.
    main = next(c for c in seen.pod["spec"]["containers"] if c["name"] == MAIN_CONTAINER)
    assert not [m for m in main["volumeMounts"] if m["mountPath"].startswith(GATEWAY_DIR)]
    assert all("hostPath" not in v for v in seen.pod["spec"]["volumes"])
    record = on_cluster.settings.runs_dir / run_id / "record"
    usage = json.loads((record / "usage.json").read_text())
    assert usage["requests"] == 1
    recorded = json.loads((record / "run-config.json").read_text())
    assert recorded["gateway_url"] == url
    assert recorded["gateway_token"] != seen.run_config["gateway_token"]  # redacted in the record
    # The runner's own claim ("failed", no bundle) decides nothing but the status here.
    assert result.status in ("failed", "error")
    # The gateway is gone with the run: its port no longer answers.
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{url}/v1/models", timeout=2)
    # Nothing of the run is left on the cluster, and no staging folder on the host.
    assert not on_cluster.cluster.objects["pods"]
    assert not on_cluster.cluster.objects[POLICIES]
    assert not (on_cluster.settings.runs_dir / run_id / "stage").exists()


def test_the_kubernetes_wiring_stages_without_a_socket_or_chown() -> None:
    """The wiring the task runner takes for Kubernetes: TCP at the exchange URL's host, no hand-over; Docker's is the socket and chown."""
    kube = sandbox_wiring(
        Settings(
            sandbox_backend="kubernetes",
            kubernetes_exchange_host="0.0.0.0",  # noqa: S104 - a setting under test, nothing binds
            kubernetes_exchange_url="http://10.96.0.50:8765",
        )
    )
    assert kube.gateway is not None
    assert kube.gateway.bind_host == "0.0.0.0"  # noqa: S104
    assert kube.gateway.url(40123) == "http://10.96.0.50:40123"
    assert not kube.hand_over
    six = sandbox_wiring(
        Settings(sandbox_backend="kubernetes", kubernetes_exchange_url="http://[fd00::5]:8765")
    )
    assert six.gateway is not None
    assert six.gateway.url(9) == "http://[fd00::5]:9"
    docker = sandbox_wiring(Settings())
    assert docker.gateway is None
    assert docker.hand_over


def test_staging_for_kubernetes_needs_no_socket_folder_and_no_chown(
    on_cluster: Cluster, tmp_path: Path
) -> None:
    """Without hand-over nothing is chowned to the sandbox uid (a non-root controller can stage), and no gateway folder is made."""
    repo = copy_example_repo(tmp_path / "repo")
    task = Task.model_validate(json.loads(EXAMPLE_TASK.read_text()))
    admission = on_cluster.runner.admit(task, repo, "HEAD")
    paths = stage_run(
        repo=admission.repo,
        plan=admission.plan,
        policy=admission.policy,
        root=tmp_path / "stage",
        run_config_json="{}",
        gateway=False,
        hand_over=False,
    )
    assert paths.gateway is None
    assert sorted(p.name for p in paths.root.iterdir()) == ["out", "taskbox", "work"]
    run_json = paths.taskbox / "run.json"
    assert stat.S_IMODE(run_json.stat().st_mode) == 0o400
    owners = {p.stat().st_uid for p in [paths.out, run_json, *paths.work.rglob("*")]}
    assert owners == {os.getuid()}
    assert admission.policy.uid not in owners
