"""The controller's file exchange for Pods, over real HTTP on loopback: single use, tokens, the upload cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from controller.errors import SandboxError
from controller.sandbox.kubernetes import exchange as exchange_module
from controller.sandbox.kubernetes.exchange import Exchange, ExchangeServer, Tokens, UploadState

RUN = "T-1-20260101000000-abcd1234"
IN_TAR = b"in.tar bytes " * 1000


@pytest.fixture
def exchange() -> Iterator[tuple[Exchange, str]]:
    """An exchange served on 127.0.0.1 (a free port); yields it and its base URL."""
    registry = Exchange()
    with ExchangeServer(registry, "127.0.0.1", 0) as server:
        yield registry, f"http://127.0.0.1:{server.port}/exchange"
    registry.close()


def _register(registry: Exchange, *, cap: int = 4096, release: bool = True) -> Tokens:
    tokens = registry.register(RUN, out_cap=cap)
    registry.put_in(RUN, IN_TAR)
    if release:
        registry.release(RUN)
    return tokens


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_in_tar_is_fetched_once(exchange: tuple[Exchange, str]) -> None:
    """in.tar comes back whole with its token, then 410 for the same token: one fetch per run."""
    registry, base = exchange
    tokens = _register(registry)
    first = httpx.get(f"{base}/{RUN}/in.tar", headers=_bearer(tokens.fetch_in))
    assert first.status_code == 200
    assert first.content == IN_TAR
    assert registry.fetched(RUN)
    second = httpx.get(f"{base}/{RUN}/in.tar", headers=_bearer(tokens.fetch_in))
    assert second.status_code == 410


def test_tokens_are_checked(exchange: tuple[Exchange, str]) -> None:
    """No token is 401, a wrong one (or the other direction's) 403, an unknown run 404; none uses the file up."""
    registry, base = exchange
    tokens = _register(registry)
    url = f"{base}/{RUN}/in.tar"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Basic {tokens.fetch_in}"}).status_code == 401
    assert httpx.get(url, headers=_bearer(tokens.fetch_in + "x")).status_code == 403
    assert httpx.get(url, headers=_bearer(tokens.upload_out)).status_code == 403
    assert (
        httpx.get(f"{base}/other-run/in.tar", headers=_bearer(tokens.fetch_in)).status_code == 404
    )
    assert (
        httpx.get(f"{base}/..%2f..%2fetc/in.tar", headers=_bearer(tokens.fetch_in)).status_code
        == 404
    )
    put = httpx.put(f"{base}/{RUN}/out.tar", content=b"x", headers=_bearer(tokens.fetch_in))
    assert put.status_code == 403
    assert not registry.fetched(RUN)
    assert registry.upload(RUN).state is UploadState.NONE
    assert httpx.get(url, headers=_bearer(tokens.fetch_in)).status_code == 200


def test_tokens_never_show(
    exchange: tuple[Exchange, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens are fresh per run, absent from their repr and from every log line, even on a wrong try."""
    registry, base = exchange
    tokens = _register(registry)
    spare = Exchange()
    other = spare.register(RUN, out_cap=1)
    spare.close()
    assert {tokens.fetch_in, tokens.upload_out}.isdisjoint({other.fetch_in, other.upload_out})
    assert tokens.fetch_in not in repr(tokens)
    with caplog.at_level("DEBUG"):
        httpx.get(f"{base}/{RUN}/in.tar", headers=_bearer(tokens.fetch_in + "x"))
        httpx.get(f"{base}/{RUN}/in.tar", headers=_bearer(tokens.fetch_in))
        httpx.put(f"{base}/{RUN}/out.tar", content=b"out", headers=_bearer(tokens.upload_out))
    text = caplog.text
    assert "wrong token" in text
    assert tokens.fetch_in not in text
    assert tokens.upload_out not in text


def test_fetch_waits_for_release(exchange: tuple[Exchange, str]) -> None:
    """A fetch before start is held until the run is released, then answered."""
    registry, base = exchange
    tokens = _register(registry, release=False)
    answers: list[int] = []
    fetcher = threading.Thread(
        target=lambda: answers.append(
            httpx.get(
                f"{base}/{RUN}/in.tar", headers=_bearer(tokens.fetch_in), timeout=30
            ).status_code
        )
    )
    fetcher.start()
    time.sleep(0.3)
    assert answers == []
    assert not registry.fetched(RUN)
    registry.release(RUN)
    fetcher.join(10)
    assert answers == [200]


def test_held_fetch_gives_up(
    exchange: tuple[Exchange, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run never released answers 503 once the hold time is up, and in.tar stays unfetched."""
    monkeypatch.setattr(exchange_module, "HOLD_SECONDS", 0.2)
    registry, base = exchange
    tokens = _register(registry, release=False)
    assert httpx.get(f"{base}/{RUN}/in.tar", headers=_bearer(tokens.fetch_in)).status_code == 503
    assert not registry.fetched(RUN)


def test_out_tar_is_uploaded_once(exchange: tuple[Exchange, str]) -> None:
    """out.tar is kept whole with its token; a second upload is 410 and changes nothing."""
    registry, base = exchange
    tokens = _register(registry)
    url = f"{base}/{RUN}/out.tar"
    assert httpx.put(url, content=b"first", headers=_bearer(tokens.upload_out)).status_code == 204
    assert httpx.put(url, content=b"second", headers=_bearer(tokens.upload_out)).status_code == 410
    upload = registry.upload(RUN)
    assert (upload.state, upload.data) == (UploadState.RECEIVED, b"first")


def test_upload_cap_by_length(exchange: tuple[Exchange, str]) -> None:
    """An upload that announces more than the cap is 413 at once, and the run remembers it oversized."""
    registry, base = exchange
    tokens = _register(registry, cap=1024)
    answer = httpx.put(
        f"{base}/{RUN}/out.tar", content=b"x" * 1025, headers=_bearer(tokens.upload_out)
    )
    assert answer.status_code == 413
    upload = registry.upload(RUN)
    assert (upload.state, upload.data) == (UploadState.OVERSIZED, None)
    again = httpx.put(f"{base}/{RUN}/out.tar", content=b"x", headers=_bearer(tokens.upload_out))
    assert again.status_code == 410


def test_upload_cap_streamed(exchange: tuple[Exchange, str]) -> None:
    """A chunked upload with no length is cut where it passes the cap (413), not read to its end."""
    registry, base = exchange
    tokens = _register(registry, cap=64 * 1024)
    sent: list[int] = []

    def body() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b"y" * 16 * 1024

    try:
        answer = httpx.put(
            f"{base}/{RUN}/out.tar", content=body(), headers=_bearer(tokens.upload_out)
        )
        status = answer.status_code
    except httpx.HTTPError:  # the server may close before the client finished sending
        status = 413
    assert status == 413
    upload = registry.upload(RUN)
    assert upload.state is UploadState.OVERSIZED
    assert (
        64 * 1024 < upload.size <= 64 * 1024 + 65536
    )  # one read of the server past the cap, at most


def test_exact_cap_is_accepted(exchange: tuple[Exchange, str]) -> None:
    """An upload of exactly the cap is accepted."""
    registry, base = exchange
    tokens = _register(registry, cap=1024)
    assert (
        httpx.put(
            f"{base}/{RUN}/out.tar", content=b"z" * 1024, headers=_bearer(tokens.upload_out)
        ).status_code
        == 204
    )
    assert registry.upload(RUN).data == b"z" * 1024


def test_removed_run_is_gone(exchange: tuple[Exchange, str]) -> None:
    """After remove, both files of the run are 404, and the run id may be registered again."""
    registry, base = exchange
    tokens = _register(registry)
    registry.remove(RUN)
    assert httpx.get(f"{base}/{RUN}/in.tar", headers=_bearer(tokens.fetch_in)).status_code == 404
    assert (
        httpx.put(
            f"{base}/{RUN}/out.tar", content=b"x", headers=_bearer(tokens.upload_out)
        ).status_code
        == 404
    )
    registry.remove(RUN)  # twice is fine
    fresh = registry.register(RUN, out_cap=1)
    assert fresh.fetch_in != tokens.fetch_in


def test_registry_refuses_misuse() -> None:
    """A run registered twice, a path-like run id, or in.tar changed after release is SandboxError."""
    registry = Exchange()
    registry.register(RUN, out_cap=1)
    with pytest.raises(SandboxError, match="already registered"):
        registry.register(RUN, out_cap=1)
    with pytest.raises(SandboxError, match="not a run id"):
        registry.register("../x", out_cap=1)
    registry.release(RUN)
    with pytest.raises(SandboxError, match="released"):
        registry.put_in(RUN, b"late")
    with pytest.raises(SandboxError, match="not registered"):
        registry.release("nobody")
    registry.close()
    assert registry.runs == []
