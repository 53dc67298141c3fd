"""Bearer-token auth through real HTTP: 401 without or with a wrong token; outside a token's repositories,
403 for what it names itself (a repository) and 404 for another repository's tasks."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from controller.api.auth import TokenRegistry
from controller.cli import cli
from controller.settings import Settings
from tests.controller.api.conftest import (
    TOKEN_ALL,
    TOKEN_ALPHA,
    TOKEN_BETA,
    TOKEN_UNKNOWN,
    ServedApi,
    task_body,
)
from tests.controller.api.fake_executor import FakeExecutor, wait_for

MISSING = "0" * 32
PROTECTED = [
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", f"/v1/tasks/{MISSING}"),
    ("GET", f"/v1/tasks/{MISSING}/result"),
    ("GET", f"/v1/tasks/{MISSING}/events"),
    ("POST", f"/v1/tasks/{MISSING}/cancel"),
    ("GET", f"/v1/tasks/{MISSING}/audit"),
    ("GET", "/v1/policies"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_but_health_needs_a_token(api: ServedApi, method: str, path: str) -> None:
    """Without a token, with an unknown one, or with another scheme, every API route answers 401."""
    kwargs = {"json": task_body(), "headers": {"Idempotency-Key": "k"}} if method == "POST" else {}
    for client in (api.client(None), api.client(TOKEN_UNKNOWN), api.client(TOKEN_ALL[:-1])):
        response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    basic = api.client(None).request(method, path, headers={"Authorization": f"Basic {TOKEN_ALL}"})
    assert basic.status_code == 401


def test_health_needs_no_token(api: ServedApi) -> None:
    """/healthz and /readyz answer without a token (probes carry none)."""
    client = api.client(None)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"store": "ok"}}


def test_token_may_not_submit_to_another_repository(api: ServedApi, fake: FakeExecutor) -> None:
    """A token limited to alpha gets 403 repository_forbidden when it submits to beta."""
    response = api.client(TOKEN_ALPHA).post(
        "/v1/tasks", json=task_body(repository="beta"), headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "repository_forbidden"
    # Unknown names are 403 too for a limited token: it learns nothing about other repositories.
    unknown = api.client(TOKEN_ALPHA).post(
        "/v1/tasks", json=task_body(repository="gamma"), headers={"Idempotency-Key": "k"}
    )
    assert unknown.status_code == 403
    assert fake.calls() == []


def test_token_may_not_read_tasks_of_another_repository(api: ServedApi, fake: FakeExecutor) -> None:
    """A beta-only token gets 404 on every route of an alpha task, word for word what an unknown id gets."""
    created = api.client(TOKEN_ALPHA).post(
        "/v1/tasks", json=task_body("HOLD-1"), headers={"Idempotency-Key": "k"}
    )
    task_id = created.json()["id"]
    wait_for(lambda: len(fake.calls()) == 1, what="the run to start")
    other = api.client(TOKEN_BETA)
    for method, suffix in [
        ("GET", ""),
        ("GET", "/result"),
        ("GET", "/events"),
        ("GET", "/audit"),
        ("POST", "/cancel"),
    ]:
        response = other.request(method, f"/v1/tasks/{task_id}{suffix}")
        unknown = other.request(method, f"/v1/tasks/{MISSING}{suffix}")
        assert response.status_code == unknown.status_code == 404, suffix
        assert response.json()["error"]["code"] == "task_not_found"
        message = response.json()["error"]["message"]
        assert message == unknown.json()["error"]["message"].replace(MISSING, task_id)
        assert "alpha" not in response.text
        assert "repository" not in message
    assert api.client(TOKEN_ALPHA).get(f"/v1/tasks/{task_id}").json()["status"] == "running"
    assert other.get("/v1/tasks").json()["items"] == []
    assert other.get("/v1/tasks", params={"repository": "alpha"}).status_code == 403
    assert [t["id"] for t in api.client(TOKEN_ALL).get("/v1/tasks").json()["items"]] == [task_id]
    assert api.client(TOKEN_ALPHA).get(f"/v1/tasks/{task_id}").status_code == 200
    fake.release()


def test_policies_list_with_a_token(api: ServedApi) -> None:
    """/v1/policies lists the controller's policies with their digests."""
    policies = api.client(TOKEN_BETA).get("/v1/policies").json()["items"]
    names = {p["name"] for p in policies}
    assert "default" in names
    assert all(p["digest"].startswith("sha256:") for p in policies)


def test_registry_matches_only_exact_tokens() -> None:
    """The registry finds a principal for the exact token only, and names it without the token."""
    registry = TokenRegistry({TOKEN_ALL: ["*"], TOKEN_ALPHA: ["alpha"]})
    principal = registry.authenticate(TOKEN_ALPHA)
    assert principal is not None
    assert principal.may_use("alpha")
    assert not principal.may_use("beta")
    assert TOKEN_ALPHA not in principal.id
    assert registry.authenticate(TOKEN_ALPHA + "x") is None
    assert registry.authenticate("") is None
    everything = registry.authenticate(TOKEN_ALL)
    assert everything is not None
    assert everything.may_use("anything")


@pytest.mark.parametrize("token", ["changeme", "secret", "token", "short-token", ""])
def test_settings_refuse_placeholder_tokens(token: str) -> None:
    """Settings refuse a placeholder or short API token, so the server cannot start with one."""
    with pytest.raises(ValidationError, match="placeholder or shorter"):
        Settings(_env_file=None, api_tokens=f"{token}=*")  # type: ignore[call-arg,arg-type]


def test_serve_refuses_a_placeholder_token_without_printing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``taskbox serve`` exits with a readable error for a placeholder token and never prints the token."""
    monkeypatch.setenv("TASKBOX_API_TOKENS", "shorttok-9f3a=*")
    result = CliRunner().invoke(cli, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "placeholder or shorter than 16 characters" in result.output
    assert "shorttok-9f3a" not in result.output


def test_serve_refuses_to_start_without_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """``taskbox serve`` with no tokens configured exits instead of serving an API nobody can call."""
    monkeypatch.setenv("TASKBOX_API_TOKENS", "")
    result = CliRunner().invoke(cli, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "no API tokens configured" in result.output


def test_settings_parse_token_scopes() -> None:
    """``TOKEN=repo1,repo2;TOKEN2=*`` becomes each token's repository list."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        api_tokens=f"{TOKEN_ALPHA}=alpha,beta;{TOKEN_ALL}=*",  # type: ignore[arg-type]
    )
    assert settings.api_tokens == {TOKEN_ALPHA: ["alpha", "beta"], TOKEN_ALL: ["*"]}
