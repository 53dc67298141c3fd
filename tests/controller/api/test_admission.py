"""Admission at submit through real HTTP: refused tasks are 422 before they take a slot; taken keys are 409.

The fake executor's ``admit`` is the real admission (policy, resources, mount
plan over a real git repository), so these answers are the ones a Docker-backed
controller gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import git
from tests.controller.api.conftest import (
    TOKEN_ALL,
    TOKEN_ALPHA,
    TOKENS,
    ServedApi,
    SettingsFactory,
    task_body,
)
from tests.controller.api.fake_executor import FakeExecutor, wait_for


def post(api: ServedApi, body: dict[str, Any], key: str, token: str = TOKEN_ALL) -> httpx2.Response:
    """POST /v1/tasks with ``key`` as the Idempotency-Key."""
    return api.client(token).post("/v1/tasks", json=body, headers={"Idempotency-Key": key})


def fingerprint(token: str) -> str:
    """How the API names a token: a sha256 prefix."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@pytest.fixture
def linked_api(
    serve_api: Callable[..., ServedApi],
    make_settings: SettingsFactory,
    make_repo: Callable[..., tuple[Path, str]],
    repos: dict[str, Path],
) -> ServedApi:
    """A server whose ``gamma`` repository has a symlink ``web -> app`` and a ``.env.local``."""
    gamma, _ = make_repo(
        {"README.md": "gamma\n", "app/main.py": "x = 1\n", ".env.local": "KEY=1\n"},
        symlinks={"web": "app"},
        name="gamma",
    )
    return serve_api(make_settings(repositories={**repos, "gamma": gamma}))


# Each owned path is refused by the mount plan; the fragment is what the reason must say.
REFUSED_OWNED = [
    ("../sibling/", "'..'"),
    ("app/../../up.py", "'..'"),
    ("app/..", "'..'"),
    ("/srv/app/", "absolute"),
    ("~/notes/", "absolute"),
    ("app/\x07bell.py", "control character"),
    ("app/\x1b]8;;http://x\x1b\\\\link.py", "control character"),
    ("app/\u202egnp.py", "app/"),
    (".env.local", "denied"),
    (".git/info/", "denied"),
    ("secrets/prod/", "denied"),
    ("config/server.pem", "denied"),
    ("web/", "symbolic link"),
    ("web/new.py", "symbolic link"),
    ("app\\..\\x.py", "backslash"),
]


@pytest.mark.parametrize(("owned", "why"), REFUSED_OWNED)
def test_refused_owned_paths_are_422_invalid_task_at_submit(
    linked_api: ServedApi, fake: FakeExecutor, owned: str, why: str
) -> None:
    """An owned path the plan refuses answers 422 invalid_task with the plan's reason; nothing is queued or run."""
    response = post(linked_api, task_body("ADM-1", repository="gamma", ownsPaths=[owned]), "k")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_task"
    assert "refused by the plan" in error["message"]
    assert why in error["message"]
    # Control and bidi characters of the caller's path come back escaped, never raw.
    assert not any(ch in error["message"] for ch in ("\x07", "\x1b", "\u202e"))
    assert linked_api.client().get("/v1/tasks").json()["items"] == []
    assert fake.calls() == []


@pytest.mark.parametrize(
    "resources",
    [{"memoryMb": 1_000_000}, {"cpus": 512}, {"pids": 1_000_000}, {"wallClockSeconds": 10**7}],
)
def test_resources_over_the_policy_maximum_are_422_at_submit(
    api: ServedApi, fake: FakeExecutor, resources: dict[str, int]
) -> None:
    """Asking for more than the policy's maximum answers 422 invalid_task naming the limit; nothing runs."""
    response = post(api, task_body("ADM-2", resources=resources), "k")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_task"
    assert "asks for more than" in response.json()["error"]["message"]
    assert api.client().get("/v1/tasks").json()["items"] == []
    assert fake.calls() == []


def test_refused_tasks_take_no_worker_slot(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory, fake: FakeExecutor
) -> None:
    """With one worker, a burst of refused tasks leaves the slot to the valid task behind them."""
    api = serve_api(make_settings(max_concurrent_tasks=1, max_queued_tasks=2))
    for n in range(5):
        bad = post(api, task_body(f"ADM-B{n}", ownsPaths=["../x/"]), f"bad-{n}")
        assert bad.status_code == 422
    good = post(api, task_body("ADM-OK"), "good")
    assert good.status_code == 202
    wait_for(lambda: api.service.get(good.json()["id"]).status == "succeeded", what="the task")
    assert [c["task_key"] for c in fake.calls()] == ["ADM-OK"]


def test_a_task_key_whose_branch_exists_is_409(
    api: ServedApi, fake: FakeExecutor, repos: dict[str, Path]
) -> None:
    """A key whose branch taskbox/<key> exists answers 409 branch_exists at submit; other keys still pass."""
    git(repos["alpha"], "branch", "taskbox/ADM-3")
    git(repos["alpha"], "branch", "taskbox/ADM-4/nested")  # a longer name is another branch
    response = post(api, task_body("ADM-3"), "k")
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "branch_exists"
    assert "taskbox/ADM-3" in response.json()["error"]["message"]
    # The same key in another repository is fine: branches are per repository.
    assert post(api, task_body("ADM-3", repository="beta"), "k2").status_code == 202
    assert post(api, task_body("ADM-4"), "k3").status_code == 202
    wait_for(lambda: len(fake.calls()) == 2, what="the two accepted runs")
    assert sorted(c["task_key"] for c in fake.calls()) == ["ADM-3", "ADM-4"]


def test_a_second_token_cannot_take_a_key_another_token_used(
    api: ServedApi, fake: FakeExecutor
) -> None:
    """A key one token used in a repository is 409 task_key_taken for another token, while it runs and after."""
    first = post(api, task_body("HOLD-ADM5"), "k1", token=TOKEN_ALPHA)
    assert first.status_code == 202
    wait_for(lambda: len(fake.calls()) == 1, what="the run")
    running = post(api, task_body("HOLD-ADM5"), "k1", token=TOKEN_ALL)
    assert running.status_code == 409, running.text
    assert running.json()["error"]["code"] == "task_key_taken"
    assert first.json()["id"] not in running.text  # another caller's task id is not named
    fake.release()
    wait_for(lambda: api.service.get(first.json()["id"]).finished, what="the first task")
    finished = post(api, task_body("HOLD-ADM5"), "k2", token=TOKEN_ALL)
    assert finished.status_code == 409
    assert finished.json()["error"]["code"] == "task_key_taken"
    assert len(fake.calls()) == 1
    # The first token's replay still answers its own task.
    replay = post(api, task_body("HOLD-ADM5"), "k1", token=TOKEN_ALPHA)
    assert replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"]


def test_the_same_token_may_retry_a_failed_key_but_not_run_it_twice_at_once(
    api: ServedApi, fake: FakeExecutor
) -> None:
    """One token: a key queued or running is 409 under a new Idempotency-Key; after a failure it may run again."""
    held = post(api, task_body("HOLD-ADM6"), "k1")
    wait_for(lambda: len(fake.calls()) == 1, what="the run")
    twice = post(api, task_body("HOLD-ADM6"), "k2")
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "task_key_taken"
    assert held.json()["id"] in twice.json()["error"]["message"]  # the caller's own task
    fake.release()
    failed = post(api, task_body("FAIL-ADM7"), "k3")
    wait_for(lambda: api.service.get(failed.json()["id"]).status == "failed", what="the failure")
    retry = post(api, task_body("FAIL-ADM7"), "k4")
    assert retry.status_code == 202
    assert retry.json()["id"] != failed.json()["id"]


def test_tasks_and_audit_name_the_token_that_created_them(
    api: ServedApi, fake: FakeExecutor
) -> None:
    """The task view, its audit and its first event name the submitting token by fingerprint, never by value."""
    created = post(api, task_body("ADM-8"), "k", token=TOKEN_ALPHA).json()
    wait_for(lambda: api.service.get(created["id"]).finished, what="the run")
    client = api.client(TOKEN_ALL)
    view = client.get(f"/v1/tasks/{created['id']}")
    audit = client.get(f"/v1/tasks/{created['id']}/audit")
    events = client.get(f"/v1/tasks/{created['id']}/events")
    expected = fingerprint(TOKEN_ALPHA)
    assert created["createdBy"] == view.json()["createdBy"] == expected
    assert audit.json()["createdBy"] == expected
    assert f'"createdBy":"{expected}"' in events.text
    for text in (view.text, audit.text, events.text):
        for token in TOKENS:
            assert token not in text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/tasks", "GET, POST"),
        ("DELETE", "/v1/tasks", "GET, POST"),
        ("DELETE", "/v1/tasks/" + "0" * 32, "GET"),
        ("GET", "/v1/tasks/" + "0" * 32 + "/cancel", "POST"),
        ("PATCH", "/v1/tasks/" + "0" * 32 + "/audit", "GET"),
        ("POST", "/v1/policies", "GET"),
    ],
)
def test_405_lists_every_allowed_method(
    api: ServedApi, method: str, path: str, allowed: str
) -> None:
    """A method a route does not take answers 405 with an Allow header naming every method it takes."""
    response = api.client().request(method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_task_keys_that_differ_only_in_case_are_one_key(
    api: ServedApi, fake: FakeExecutor, repos: dict[str, Path]
) -> None:
    """`be-9` after another token's `BE-9`, or beside a `TaskBox/Be-10` branch, is 409: their branches
    would be one file where names ignore case."""
    assert post(api, task_body("BE-9"), "k1", token=TOKEN_ALPHA).status_code == 202
    lower = post(api, task_body("be-9"), "k2", token=TOKEN_ALL)
    assert lower.status_code == 409
    assert lower.json()["error"]["code"] == "task_key_taken"
    git(repos["alpha"], "branch", "TaskBox/Be-10")
    mixed = post(api, task_body("BE-10"), "k3")
    assert mixed.status_code == 409
    assert mixed.json()["error"]["code"] == "branch_exists"
    assert "TaskBox/Be-10" in mixed.json()["error"]["message"]
    wait_for(lambda: len(fake.calls()) == 1, what="the one accepted run")
