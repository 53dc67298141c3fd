"""The real anthropic SDK, inside a real sandbox, through the gateway socket: plain, streamed, retries, budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from controller.runs import RunRecord, TaskRunner, new_run_id
from controller.sandbox.docker import DockerBackend, DockerImages
from controller.settings import PROJECT_ROOT, Settings
from taskbox_wire.contract import Task
from tests.conftest import RepoFactory

pytestmark = pytest.mark.docker

#: Runs inside the sandbox with the image's SDK; one JSON line per probe on stdout.
PROBE = r"""
import json, time, anthropic, httpx2
config = json.load(open("/taskbox/run.json"))
client = anthropic.Anthropic(
    api_key=config["gateway_token"], base_url="http://gateway", max_retries=3,
    http_client=anthropic.DefaultHttpxClient(transport=httpx2.HTTPTransport(uds=config["gateway_socket"])),
)
ask = dict(model=config["budget"]["model"], max_tokens=64, messages=[{"role": "user", "content": "hi"}])
def report(name, **fields):
    print("PROBE " + json.dumps({"probe": name, **fields}), flush=True)
report("plain", text=client.messages.create(**ask).content[0].text)
with client.messages.stream(**ask) as stream:
    report("streamed", text=stream.get_final_message().content[0].text)
report("after_529", text=client.messages.create(**ask).content[0].text)
started = time.monotonic()
text = client.messages.create(**ask).content[0].text
report("after_429", text=text, waited=round(time.monotonic() - started, 2))
try:
    client.messages.create(**ask)
    report("budget", error=None)
except anthropic.APIStatusError as exc:
    report("budget", error=type(exc).__name__, status=exc.status_code,
           should_retry=exc.response.headers.get("x-should-retry"), message=exc.message[:200])
"""

SCRIPT = [
    {"content": [{"type": "text", "text": "plain"}]},
    {"content": [{"type": "text", "text": "streamed"}]},
    {"error": {"status": 529, "message": "overloaded"}},
    {"content": [{"type": "text", "text": "after 529"}]},
    {"error": {"status": 429, "message": "slow down", "retry_after": 1}},
    {"content": [{"type": "text", "text": "after 429"}]},
]


def test_sdk_in_a_sandbox_reaches_the_gateway_and_its_budget_holds(
    tmp_path: Path, make_repo: RepoFactory
) -> None:
    """Plain and streamed calls work; a 529 and a 429 with retry-after are retried; the spent budget is final."""
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    worker = yaml.safe_load((policies / "be-python.yaml").read_text())
    worker["model"] = {"max_requests": 6}  # the six scripted answers, then the budget is spent
    (policies / "be-python.yaml").write_text(yaml.safe_dump(worker))
    settings = Settings(runs_dir=tmp_path / "runs", policies_dir=policies)
    runner = TaskRunner(
        settings, DockerBackend.from_settings(settings), DockerImages.from_settings(settings)
    )
    repo, _ = make_repo({"app/main.py": "x = 1\n"})
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps(turn) + "\n" for turn in SCRIPT))
    task = Task.model_validate(
        {
            "taskKey": "SDK-1",
            "description": "probe the gateway",
            "ownsPaths": ["app/"],
            "contextJson": {"SDK-1-ctx": {"relevant_files": []}},
        }
    )
    run_id = new_run_id(task.task_key)
    result = runner.execute(
        run_id=run_id,
        task=task,
        repo=repo,
        base_ref="HEAD",
        model=f"scripted:{script}",
        command=["python", "-c", PROBE],
    )
    assert result.status == "error"  # the probe writes no result.json: that is expected
    log = (RunRecord(settings.runs_dir, run_id).dir / "sandbox.log").read_text()
    probes = {
        entry["probe"]: entry
        for entry in (
            json.loads(line.split("PROBE ", 1)[1]) for line in log.splitlines() if "PROBE " in line
        )
    }
    assert probes["plain"]["text"] == "plain"
    assert probes["streamed"]["text"] == "streamed"
    assert probes["after_529"]["text"] == "after 529"
    assert probes["after_429"]["text"] == "after 429"
    assert probes["after_429"]["waited"] >= 1.0  # the SDK honoured retry-after
    budget = probes["budget"]
    assert budget["error"] == "RateLimitError"
    assert budget["status"] == 429
    assert budget["should_retry"] == "false"
    assert "budget" in budget["message"]
    usage = json.loads((RunRecord(settings.runs_dir, run_id).dir / "usage.json").read_text())
    assert usage["refused_requests"] == 1  # the refusal was not retried by the SDK
