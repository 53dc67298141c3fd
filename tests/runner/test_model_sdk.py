"""The model SDK imported lazily (taskbox_runner.lazy_sdk): fewer modules run, the real SDK still works.

Each test runs a fresh interpreter, because the test process has the SDK imported already;
the model calls go to the real gateway (scripted upstream) on a Unix socket.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from taskbox_runner import lazy_sdk

from tests.runner.conftest import MODEL, TOKEN, ScriptedGateway

ROOT = Path(__file__).resolve().parents[2]

#: Runs in the fresh interpreter: the runner's own path to the client, then a tool-using call.
CALL_THROUGH_THE_GATEWAY = """
import json, sys, types
from pydantic import SecretStr
from taskbox_runner import lazy_sdk, model_sdk
from taskbox_runner.loop import make_client

{prelude}
model_sdk.preload()
class Config:
    gateway_socket = sys.argv[1]
    gateway_token = SecretStr(sys.argv[2])
    gateway_url = None
client = make_client(Config())
import anthropic

def executed(name):
    return type(sys.modules.get(name)) is types.ModuleType

report = {{
    "beta_modules_run": sum(
        1 for n, m in list(sys.modules.items())
        if n.startswith("anthropic.types.beta") and type(m) is types.ModuleType
    ),
    "foundry_run_before_use": executed("anthropic.lib.foundry"),
}}
response = client.messages.create(
    model=sys.argv[3],
    max_tokens=256,
    system="Be brief.",
    tools=[{{
        "name": "run_checks",
        "description": "Run the checks.",
        "input_schema": {{"type": "object", "properties": {{}}}},
    }}],
    messages=[{{"role": "user", "content": "Run the checks."}}],
)
report["stop_reason"] = response.stop_reason
report["blocks"] = [type(b).__name__ for b in response.content]
report["tool_names"] = [b.name for b in response.content if b.type == "tool_use"]
report["input_tokens"] = response.usage.input_tokens
with client.messages.stream(
    model=sys.argv[3], max_tokens=64, messages=[{{"role": "user", "content": "hi"}}]
) as stream:
    report["streamed"] = stream.get_final_message().content[0].text
wrong = anthropic.Anthropic(
    api_key="wrong-token", base_url="http://gateway", max_retries=0,
    http_client=anthropic.DefaultHttpxClient(
        transport=__import__("httpx2").HTTPTransport(uds=sys.argv[1])
    ),
)
try:
    wrong.messages.create(model=sys.argv[3], max_tokens=8, messages=[{{"role": "user", "content": "x"}}])
except anthropic.AuthenticationError as exc:
    report["wrong_token"] = [type(exc).__name__, exc.status_code]
foundry = anthropic.AnthropicFoundry
report["foundry"] = [foundry.__module__, foundry.__name__, executed("anthropic.lib.foundry")]
report["vertex"] = anthropic.AnthropicVertex.__name__
report["beta_tool_module"] = anthropic.beta_tool.__module__
from anthropic.types.beta import BetaMessage
report["beta_message"] = BetaMessage.model_validate({{
    "id": "m", "type": "message", "role": "assistant", "model": "x",
    "content": [{{"type": "text", "text": "hi"}}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {{"input_tokens": 1, "output_tokens": 1}},
}}).content[0].text
report["beta_resource"] = anthropic.resources.beta.Beta.__name__
print(json.dumps(report))
"""

TOOL_TURN: dict[str, Any] = {
    "content": [{"type": "tool_use", "name": "run_checks", "input": {}}],
    "stop_reason": "tool_use",
}
TEXT_TURN: dict[str, Any] = {"content": [{"type": "text", "text": "streamed"}]}


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter with the runner on the path; its JSON report."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": f"{ROOT}:{ROOT / 'sandbox-image/runner'}",
            **(env or {}),
        },
        cwd=ROOT,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    report["stderr"] = done.stderr
    return report


def _call(gw: ScriptedGateway, prelude: str = "", **env: str) -> dict[str, Any]:
    code = CALL_THROUGH_THE_GATEWAY.format(prelude=prelude)
    return _run(code, str(gw.socket), TOKEN, MODEL, env=env)


def _assert_the_sdk_works(report: dict[str, Any], gw: ScriptedGateway) -> None:
    assert report["stop_reason"] == "tool_use"
    assert report["blocks"] == ["ToolUseBlock"]
    assert report["tool_names"] == ["run_checks"]
    assert report["input_tokens"] > 0
    assert report["streamed"] == "streamed"
    assert report["wrong_token"] == ["AuthenticationError", 401]
    assert report["foundry"][:2] == ["anthropic.lib.foundry", "AnthropicFoundry"]
    assert report["foundry"][2] is True
    assert report["vertex"] == "AnthropicVertex"
    assert report["beta_tool_module"] == "anthropic"
    assert report["beta_message"] == "hi"
    assert report["beta_resource"] == "Beta"
    sent = gw.requests()
    assert len(sent) == 2
    assert sent[1]["stream"] is True
    assert sent[0]["tools"][0]["name"] == "run_checks"


def test_lazy_sdk_makes_a_tool_call_through_the_real_gateway(
    start_gateway: Callable[..., ScriptedGateway],
) -> None:
    """With the lazy import, the real client makes a tool call and reads a 401, running far fewer modules."""
    gw = start_gateway([TOOL_TURN, TEXT_TURN])
    lazy = _call(gw)
    _assert_the_sdk_works(lazy, gw)
    assert lazy["foundry_run_before_use"] is False
    assert "lazy import of anthropic failed" not in lazy["stderr"]

    gw_whole = start_gateway([TOOL_TURN, TEXT_TURN])
    whole = _call(gw_whole, TASKBOX_RUNNER_SDK_LAZY="0")
    _assert_the_sdk_works(whole, gw_whole)
    assert whole["foundry_run_before_use"] is True
    # Most of the beta API's types never run for the runner's calls.
    assert lazy["beta_modules_run"] < whole["beta_modules_run"] / 2


def test_a_failing_lazy_import_falls_back_to_the_whole_sdk(
    start_gateway: Callable[..., ScriptedGateway],
) -> None:
    """A surprise inside the lazy import drops its modules and imports the SDK whole: the run goes on."""
    gw = start_gateway([TOOL_TURN, TEXT_TURN])
    prelude = (
        "def broken(root):\n"
        "    raise RuntimeError('a surprise in the SDK')\n"
        "lazy_sdk._touch = broken\n"
    )
    report = _call(gw, prelude)
    _assert_the_sdk_works(report, gw)
    assert report["foundry_run_before_use"] is True
    assert "lazy import of anthropic failed; importing it whole" in report["stderr"]


def test_a_finder_that_cannot_be_made_falls_back_to_the_whole_sdk(
    start_gateway: Callable[..., ScriptedGateway],
) -> None:
    """When the lazy finder cannot even be set up, the normal import runs and the call works."""
    gw = start_gateway([TOOL_TURN, TEXT_TURN])
    prelude = (
        "def no_finder():\n"
        "    raise TypeError('no finder here')\n"
        "lazy_sdk.LazySDKFinder = no_finder\n"
    )
    report = _call(gw, prelude)
    _assert_the_sdk_works(report, gw)
    assert "lazy import of anthropic failed; importing it whole" in report["stderr"]


def test_the_finder_is_gone_after_the_import() -> None:
    """The lazy finder exists only during the SDK's import: later imports are the normal ones."""
    code = (
        "import json, sys\n"
        "from taskbox_runner import lazy_sdk\n"
        "root = lazy_sdk.import_sdk()\n"
        "again = lazy_sdk.import_sdk()\n"
        "print(json.dumps({'finders': [type(f).__name__ for f in sys.meta_path],\n"
        "                  'same': root is again is sys.modules['anthropic'],\n"
        "                  'missing': hasattr(root, 'NoSuchName')}))\n"
    )
    report = _run(code)
    assert "LazySDKFinder" not in report["finders"]
    assert report["same"] is True
    assert report["missing"] is False


def test_lazy_modules_keep_import_semantics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lazy modules run only what is read, a pure re-export resolves one submodule, a failure is not cached."""
    name = "tblazy_pkg"
    pkg = tmp_path / name
    (pkg / "mixed").mkdir(parents=True)
    record = "import tblazy_ran\ntblazy_ran.ran.append(__name__)\n"
    (tmp_path / "tblazy_ran.py").write_text("ran: list[str] = []\n")
    (pkg / "__init__.py").write_text(
        '"""Re-exports only."""\nfrom .a import A as A\nfrom .b import B\n__all__ = ["A", "B"]\n'
    )
    (pkg / "a.py").write_text(record + "class A:\n    pass\n")
    (pkg / "b.py").write_text(record + "from .a import A\nclass B(A):\n    pass\n")
    (pkg / "mixed" / "__init__.py").write_text(record + "X = 1\n")
    (pkg / "broken.py").write_text(record + "raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(lazy_sdk, "LAZY_PREFIXES", (name,))
    finder = lazy_sdk.LazySDKFinder()
    sys.meta_path.insert(0, finder)
    try:
        ran = importlib.import_module("tblazy_ran").ran
        root = importlib.import_module(name)
        assert ran == []
        assert type(root) is not types.ModuleType

        a_class = root.A
        assert ran == [f"{name}.a"]
        assert a_class.__module__ == f"{name}.a"
        assert type(root) is not types.ModuleType  # the __init__ itself has not run
        assert not hasattr(root, "nothing_of_that_name")
        assert ran == [f"{name}.a"]

        assert issubclass(root.B, a_class)
        assert ran == [f"{name}.a", f"{name}.b"]

        mixed = importlib.import_module(f"{name}.mixed")
        assert f"{name}.mixed" not in ran
        assert mixed.X == 1
        assert ran[-1] == f"{name}.mixed"

        assert root.__all__ == ["A", "B"]
        assert type(root) is types.ModuleType

        broken = importlib.import_module(f"{name}.broken")
        with pytest.raises(RuntimeError, match="broken on purpose"):
            _ = broken.anything
        assert f"{name}.broken" not in sys.modules
    finally:
        sys.meta_path.remove(finder)
        for module in [m for m in sys.modules if m.startswith(("tblazy_pkg", "tblazy_ran"))]:
            del sys.modules[module]
