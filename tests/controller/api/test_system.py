"""/healthz and /readyz through real HTTP, with injected engine and image probes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.controller.api.conftest import ServedApi
from tests.controller.api.fake_executor import CONTROL_ENV, FakeExecutor, make_readiness_probes


@pytest.fixture
def probed(
    serve_api: Callable[..., ServedApi], fake: FakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> ServedApi:
    """A server whose engine and image probes are the fake's file-steered ones."""
    monkeypatch.setenv(CONTROL_ENV, str(fake.control))
    return serve_api(probes=make_readiness_probes(None))  # type: ignore[arg-type]


def test_ready_when_every_check_passes(probed: ServedApi) -> None:
    """With store, engine and image fine, /readyz answers 200 listing each check."""
    response = probed.client(None).get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"store": "ok", "engine": "ok", "image": "ok"},
    }


def test_not_ready_names_the_failed_checks_only(probed: ServedApi, fake: FakeExecutor) -> None:
    """A failing probe makes /readyz answer 503 not_ready naming the check, not its details."""
    (fake.control / "engine-down").touch()
    (fake.control / "image-missing").touch()
    response = probed.client(None).get("/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert "engine" in error["message"]
    assert "image" in error["message"]
    assert "details only in the server log" not in response.text
    (fake.control / "engine-down").unlink()
    (fake.control / "image-missing").unlink()
    assert probed.client(None).get("/readyz").status_code == 200


def test_healthz_is_always_ok(probed: ServedApi, fake: FakeExecutor) -> None:
    """/healthz only says the process serves HTTP, whatever the probes say."""
    (fake.control / "engine-down").touch()
    assert probed.client(None).get("/healthz").json() == {"status": "ok"}
