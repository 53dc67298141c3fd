"""Host paths never leave through the API: audit, events, results and reasons show a placeholder instead.

The executor here returns what Docker's inspect of a real sandbox holds (the
staging binds under the runs folder, overlay layer folders under the engine's
data root, the log, hosts and resolv.conf files) with this test's own paths;
the record it keeps is unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import JsonValue

from controller.api.redact import PLACEHOLDER, HostPathRedactor
from controller.events import RunEvent
from taskbox_wire.contract import Task, TaskResult
from tests.controller.api.conftest import ServedApi, SettingsFactory, task_body
from tests.controller.api.fake_executor import FakeExecutor, wait_for

#: An engine data root that is not Docker's default: known only from the inspect itself.
ENGINE_ROOT = "/srv/engine-data-7f3a"
CONTAINER_ID = "c0ffee" * 10 + "abcd"


class InspectingExecutor(FakeExecutor):
    """The fake executor with a Docker-like audit and events and a result that quote host paths."""

    def __init__(self, control: Path, runs_dir: Path, repo: Path) -> None:
        super().__init__(control, runs_dir=runs_dir)
        self.repo = repo

    def stage(self, run_id: str) -> str:
        return str(self.runs_dir / run_id / "stage")

    def execute(
        self,
        *,
        run_id: str,
        task: Task,
        repo: Path,
        base_ref: str,
        emit: Callable[[RunEvent], None],
        cancel: threading.Event,
    ) -> TaskResult:
        """Record a Docker-like audit, emit an event naming the staging folder, fail quoting the repo."""
        super().execute(
            run_id=run_id, task=task, repo=repo, base_ref=base_ref, emit=emit, cancel=cancel
        )
        emit(
            RunEvent(
                stage="staged",
                message=f"staged into {self.stage(run_id)}/work",
                data={"folder": f"{self.stage(run_id)}/work", "files": ["app/x.py"]},
            )
        )
        return TaskResult(
            task_key=task.task_key,
            status="failed",
            reason=f"git fetch failed in {repo}/.git: object missing",
            # Docker's default data root is known without any audit to learn it from.
            summary=f"log in /var/lib/docker/containers/{CONTAINER_ID}/{CONTAINER_ID}-json.log",
        )

    def audit(self, run_id: str) -> dict[str, JsonValue] | None:
        """What ``docker inspect`` and the plan say about a run, host paths and all."""
        stage = self.stage(run_id)
        layer = f"{ENGINE_ROOT}/overlay2/5e1f9a"
        return {
            "run_id": run_id,
            "plan": {"read_write": [{"path": "app", "target": "/work/app"}]},
            "container": {
                "Id": CONTAINER_ID,
                "LogPath": f"{ENGINE_ROOT}/containers/{CONTAINER_ID}/{CONTAINER_ID}-json.log",
                "HostsPath": f"{ENGINE_ROOT}/containers/{CONTAINER_ID}/hosts",
                "ResolvConfPath": f"{ENGINE_ROOT}/containers/{CONTAINER_ID}/resolv.conf",
                "HostnamePath": f"{ENGINE_ROOT}/containers/{CONTAINER_ID}/hostname",
                "GraphDriver": {
                    "Name": "overlay2",
                    "Data": {
                        "LowerDir": f"{layer}-init/diff:{ENGINE_ROOT}/overlay2/0b1c/diff",
                        "MergedDir": f"{layer}/merged",
                        "UpperDir": f"{layer}/diff",
                        "WorkDir": f"{layer}/work",
                    },
                },
                "HostConfig": {
                    "Binds": [f"{stage}/work/app:/work/app:rw", f"{stage}/out:/out:rw"],
                    "Mounts": [{"Type": "bind", "Source": f"{stage}/gateway", "Target": "/run/gw"}],
                    "ReadonlyRootfs": True,
                },
                "Mounts": [
                    {"Type": "bind", "Source": f"{stage}/work/app", "Destination": "/work/app"},
                    {"Type": "volume", "Name": "cache", "Source": "cache", "Destination": "/c"},
                ],
                "Config": {"Env": [f"NOTE=built from {self.repo}"], "WorkingDir": "/work"},
                "Args": [f"--staged={self.repo}2/not-a-root-path"],
            },
        }


@pytest.fixture
def inspecting_api(
    serve_api: Callable[..., ServedApi],
    make_settings: SettingsFactory,
    tmp_path: Path,
    repos: dict[str, Path],
) -> tuple[ServedApi, InspectingExecutor]:
    """A server over the inspecting executor."""
    settings = make_settings()
    executor = InspectingExecutor(tmp_path / "control-redact", settings.runs_dir, repos["alpha"])
    return serve_api(settings=settings, executor=executor), executor


def test_audit_events_and_result_carry_no_host_paths(
    inspecting_api: tuple[ServedApi, InspectingExecutor], tmp_path: Path, repos: dict[str, Path]
) -> None:
    """Staging, repository, engine root, overlay layers and log files are placeholders in every answer;
    container-side paths stay, and the executor's own record still holds the host paths."""
    api, executor = inspecting_api
    task_id = (
        api.client()
        .post("/v1/tasks", json=task_body("RED-1"), headers={"Idempotency-Key": "k"})
        .json()["id"]
    )
    wait_for(lambda: api.service.get(task_id).finished, what="the run")
    client = api.client()
    answers = {
        "audit": client.get(f"/v1/tasks/{task_id}/audit"),
        "events": client.get(f"/v1/tasks/{task_id}/events"),
        "result": client.get(f"/v1/tasks/{task_id}/result"),
        "task": client.get(f"/v1/tasks/{task_id}"),
        "list": client.get("/v1/tasks"),
    }
    for name, answer in answers.items():
        assert answer.status_code == 200, name
        for host in (
            str(tmp_path),
            str(repos["alpha"]),
            ENGINE_ROOT,
            "overlay2/5e1f9a",
            "/var/lib",
        ):
            assert host not in answer.text, (name, host)
    audit = answers["audit"].json()["audit"]
    container = audit["container"]
    assert container["LogPath"] == container["HostsPath"] == PLACEHOLDER
    assert set(container["GraphDriver"]["Data"].values()) == {PLACEHOLDER}
    assert container["GraphDriver"]["Name"] == PLACEHOLDER  # the whole driver block is host detail
    assert container["HostConfig"]["Binds"] == [
        f"{PLACEHOLDER}:/work/app:rw",
        f"{PLACEHOLDER}:/out:rw",
    ]
    assert container["Mounts"][0] == {
        "Type": "bind",
        "Source": PLACEHOLDER,
        "Destination": "/work/app",
    }
    assert container["Mounts"][1]["Source"] == "cache"  # a named volume is not a host path
    assert container["HostConfig"]["Mounts"][0]["Source"] == PLACEHOLDER
    assert container["Config"]["Env"] == [f"NOTE=built from {PLACEHOLDER}"]
    assert container["Config"]["WorkingDir"] == "/work"
    assert audit["plan"] == {"read_write": [{"path": "app", "target": "/work/app"}]}
    assert container["HostConfig"]["ReadonlyRootfs"] is True
    assert (
        answers["result"].json()["reason"] == f"git fetch failed in {PLACEHOLDER}: object missing"
    )
    assert PLACEHOLDER in answers["task"].json()["reason"]
    assert f"staged into {PLACEHOLDER}" in answers["events"].text
    # The record the controller keeps is untouched.
    record = executor.audit(answers["audit"].json()["runId"])
    assert record is not None
    assert str(tmp_path) in json.dumps(record)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data/repos/alpha", PLACEHOLDER),
        ("/data/repos/alpha/", PLACEHOLDER),
        ("cd /data/repos/alpha/src && make", f"cd {PLACEHOLDER} && make"),
        ("/data/repos/alpha2/x", "/data/repos/alpha2/x"),  # another folder that shares a prefix
        ("/data/repos", "/data/repos"),  # the parent is not a root
        ("/data/runs/R1/stage:/work:ro", f"{PLACEHOLDER}:/work:ro"),
        ("a=/data/runs/x,b=/data/runs/y", f"a={PLACEHOLDER},b={PLACEHOLDER}"),
        ("'/var/lib/docker/overlay2/x/diff'", f"'{PLACEHOLDER}'"),
        ("/var/lib/dockerd/x", "/var/lib/dockerd/x"),
        ("/work/app/main.py", "/work/app/main.py"),
    ],
)
def test_redactor_replaces_whole_paths_under_known_roots(text: str, expected: str) -> None:
    """A path that is or lies under a root becomes the placeholder; neighbours and container paths stay."""
    redactor = HostPathRedactor(["/data/repos/alpha", "/data/runs/"])
    assert redactor.redact_text(text) == expected
    assert redactor.redact({"k": [text]}) == {"k": [expected]}


def test_redactor_ignores_relative_and_root_paths() -> None:
    """A relative root or ``/`` itself never becomes a root (it would redact everything)."""
    redactor = HostPathRedactor(["relative/dir", "/"])
    assert redactor.redact_text("/etc/hosts and relative/dir/x") == "/etc/hosts and relative/dir/x"


def test_redactor_learns_the_engine_root_from_the_log_path() -> None:
    """An engine root nobody configured is found through LogPath and redacted elsewhere too."""
    redactor = HostPathRedactor([])
    value: JsonValue = {
        "LogPath": "/mnt/d1/containers/abc/abc-json.log",
        "Note": "image layers in /mnt/d1/image/overlay2/layerdb",
    }
    assert redactor.redact(value) == {
        "LogPath": PLACEHOLDER,
        "Note": f"image layers in {PLACEHOLDER}",
    }
