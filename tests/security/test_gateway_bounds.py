"""Attacks on invariant 12's bounds: body size, requests in flight, connections, idle sockets, logs, transcript.

Each attack runs against the real gateway served by uvicorn on a Unix socket
with raw sockets or the real SDK, as a hostile sandbox would; the upstream is
the scripted model (nothing here needs the provider) unless the attack needs
an answer that takes time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from controller.gateway import ScriptedUpstream, read_transcript
from controller.gateway.upstreams.base import MessageReply, UpstreamCall
from tests.security.gateway_kit import (
    HELLO,
    MODEL,
    TOKEN,
    budget,
    client,
    closed_by_peer,
    connect,
    gateway,
    read_answer,
    request_head,
)

pytestmark = pytest.mark.invariant(12)

MiB = 1024 * 1024


@pytest.fixture
def scripted(tmp_path: Path) -> ScriptedUpstream:
    """A scripted model with plenty of short turns."""
    script = tmp_path / "script.jsonl"
    script.write_text(
        "".join(
            json.dumps({"content": [{"type": "text", "text": "ok"}]}) + "\n" for _ in range(400)
        )
    )
    return ScriptedUpstream.from_file(script)


def _padded(size: int) -> bytes:
    """A valid request of about ``size`` bytes."""
    body = json.loads(json.dumps(HELLO))
    body["messages"][0]["content"] = "x" * max(1, size - 120)
    return json.dumps(body).encode()


# --------------------------------------------------------------------------- body size


def test_the_default_policy_caps_bodies_at_a_few_mib(scripted: ScriptedUpstream) -> None:
    """Invariant 12: with the policy's default cap (4 MiB) a 5 MiB body is refused with 413; a 3 MiB one passes."""
    assert budget().max_body_bytes == 4 * MiB
    with gateway(scripted, budget()) as (served, sock), client(sock) as http:
        big = http.post("/v1/messages", content=_padded(5 * MiB))
        fits = http.post("/v1/messages", content=_padded(3 * MiB))

    assert big.status_code == 413
    assert "policy model.max_body_bytes" in big.json()["error"]["message"]
    assert fits.status_code == 200
    assert served.usage.requests == 1


def test_an_over_cap_content_length_is_refused_before_the_body_is_sent(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """Invariant 12: a Content-Length over the cap gets 413 at once, though not one byte of the body was sent."""
    transcript = tmp_path / "transcript.jsonl"
    with gateway(scripted, budget(max_body_bytes=64 * 1024), transcript) as (_, sock):
        conn = connect(sock)
        conn.sendall(request_head(length=30 * MiB))
        status, headers, _ = read_answer(conn)
        conn.close()

    assert status == 413
    assert headers["connection"] == "close"
    (entry,) = read_transcript(transcript)
    assert entry.refusal is not None
    assert (entry.refusal.body_bytes, entry.refusal.declared_bytes) == (0, 30 * MiB)
    assert entry.refusal.body_complete is False


def test_a_chunked_body_past_the_cap_is_refused_while_it_streams(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """Invariant 12: a chunked body that is not even JSON gets 413 (not 400) once it passes the cap, before it ends."""
    cap = 64 * 1024
    transcript = tmp_path / "transcript.jsonl"
    with gateway(scripted, budget(max_body_bytes=cap), transcript) as (served, sock):
        conn = connect(sock)
        conn.sendall(request_head(chunked=True))
        chunk = b"{" * 16 * 1024  # never valid JSON: a parser would answer 400
        sent = 0
        while sent <= cap:
            conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        status, _, body = read_answer(conn)  # the last chunk (0) was never sent
        conn.close()

    assert status == 413
    assert json.loads(body)["error"]["type"] == "request_too_large"
    assert served.usage.refused_requests == 1
    (entry,) = read_transcript(transcript)
    assert entry.refusal is not None
    assert cap < entry.refusal.body_bytes <= sent
    assert entry.refusal.body_complete is False
    assert entry.refusal.body_sha256 == hashlib.sha256(b"{" * entry.refusal.body_bytes).hexdigest()


def test_concurrent_huge_bodies_stay_small_in_memory(scripted: ScriptedUpstream) -> None:
    """Invariant 12: six clients sending 24 MiB at once cost the gateway a few MiB: over-cap bodies are never buffered whole."""
    payload = _padded(24 * MiB)
    results: list[int] = []

    def attack(sock: Path) -> None:
        try:
            conn = connect(sock, timeout=30)
            conn.sendall(request_head(length=len(payload) - 1)[:-4] + b"\r\n\r\n")
            with contextlib.suppress(OSError):  # the gateway answers and closes before the end
                conn.sendall(payload)
            results.append(read_answer(conn)[0])
            conn.close()
        except OSError:
            results.append(-1)

    with gateway(scripted, budget()) as (served, sock):
        tracemalloc.start()
        try:
            threads = [threading.Thread(target=attack, args=(sock,)) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    logging.getLogger(__name__).info("peak Python memory in the attack: %.1f MiB", peak / MiB)
    assert peak < 40 * MiB, f"peak Python memory {peak / MiB:.0f} MiB"
    assert len(results) == 6
    assert all(status in (413, 429) for status in results), results
    assert served.usage.requests == 0


# --------------------------------------------------------------------------- in flight


class _SlowUpstream:
    """A scripted-like upstream whose answers wait until the test opens the gate."""

    name = "slow"
    http_requests = 0

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = 0

    async def create_message(self, call: UpstreamCall) -> MessageReply:
        self.started += 1
        while not self.gate.is_set():  # noqa: ASYNC110 - the gate is opened from the test's thread
            await asyncio.sleep(0.01)
        return MessageReply(
            {
                "id": f"msg_slow{call.turn}",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [{"type": "text", "text": "late"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }
        )

    async def count_tokens(
        self,
        body: dict[str, Any],  # noqa: ARG002 - the Upstream interface's signature
        *,
        request_sha256: str,  # noqa: ARG002 - the Upstream interface's signature
        anthropic_beta: tuple[str, ...] = (),  # noqa: ARG002 - the Upstream interface's signature
    ) -> int:
        return 1

    async def aclose(self) -> None:
        self.gate.set()


def test_requests_past_the_in_flight_bound_are_refused_with_429() -> None:
    """Invariant 12: with two requests in flight a third is refused at once (429, retryable, not counted); after the answers it passes."""
    upstream = _SlowUpstream()
    answers: list[int] = []

    def ask(sock: Path) -> None:
        with client(sock) as http:
            answers.append(http.post("/v1/messages", json=HELLO).status_code)

    with gateway(upstream, budget(max_requests_in_flight=2)) as (served, sock):
        waiting = [threading.Thread(target=ask, args=(sock,)) for _ in range(2)]
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 10
        while upstream.started < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with client(sock) as http:
            third = http.post("/v1/messages", json=HELLO)
        upstream.gate.set()
        for thread in waiting:
            thread.join(10)
        with client(sock) as http:
            fourth = http.post("/v1/messages", json=HELLO)
        usage = served.usage

    assert third.status_code == 429
    assert "too many requests in flight" in third.json()["error"]["message"]
    assert third.headers["x-should-retry"] == "true"
    assert answers == [200, 200]
    assert fourth.status_code == 200
    assert (usage.requests, usage.refused_requests) == (3, 1)


# --------------------------------------------------------------------------- connections


def test_connections_past_the_cap_are_answered_and_closed(scripted: ScriptedUpstream) -> None:
    """Invariant 12: past max_connections a new connection gets 429 and is closed before it is read; the run's own client still works after."""
    with gateway(scripted, budget(max_connections=4, idle_timeout_seconds=60)) as (served, sock):
        idle = [connect(sock) for _ in range(4)]
        time.sleep(0.2)
        extra = [connect(sock) for _ in range(20)]
        answers = [read_answer(conn) for conn in extra]
        closed = [closed_by_peer(conn, 2) for conn in extra]
        assert served.connections is not None
        open_now = served.connections.open
        for conn in [*idle, *extra]:
            conn.close()
        time.sleep(0.2)
        with client(sock) as http:
            after = http.post("/v1/messages", json=HELLO)

    assert open_now == 4
    assert {status for status, _, _ in answers} == {429}
    assert "policy model.max_connections" in answers[0][2].decode()
    assert all(closed)
    assert after.status_code == 200


def test_idle_connections_are_closed_and_free_their_slot(scripted: ScriptedUpstream) -> None:
    """Invariant 12: a connection that sends nothing, half a head, or half a body is closed after the idle timeout; its slot is free again."""
    limits = budget(max_connections=3, max_requests_in_flight=1, idle_timeout_seconds=0.5)
    with gateway(scripted, limits) as (served, sock):
        silent = connect(sock)
        half_head = connect(sock)
        half_head.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\n")
        half_body = connect(sock)
        half_body.sendall(request_head(length=1000) + b'{"model": ')
        started = time.monotonic()
        closed = [closed_by_peer(conn, 5) for conn in (silent, half_head, half_body)]
        waited = time.monotonic() - started
        for conn in (silent, half_head, half_body):
            conn.close()
        with client(sock) as http:
            after = http.post("/v1/messages", json=HELLO)
        assert served.connections is not None
        timed_out = served.connections.timed_out
        refused = served.usage.refused_requests

    assert closed == [True, True, True]
    assert refused == 1  # the half body: recorded as a refusal, not a crash
    assert waited < 4
    assert timed_out == 3
    assert after.status_code == 200  # the half-read request gave its in-flight slot back


def test_a_busy_connection_is_not_idle() -> None:
    """Invariant 12: a request the model takes longer than the idle timeout to answer is answered, not cut."""
    upstream = _SlowUpstream()
    with gateway(upstream, budget(idle_timeout_seconds=0.3)) as (_, sock), client(sock) as http:
        threading.Timer(1.0, upstream.gate.set).start()
        answer = http.post("/v1/messages", json=HELLO)

    assert answer.status_code == 200


def test_a_flood_of_bad_connections_does_not_flood_the_log(
    scripted: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant 12: hundreds of garbage, unauthenticated and refused requests log a bounded number of lines."""
    caplog.set_level(logging.DEBUG)
    with gateway(scripted, budget(max_connections=200)) as (_, sock):
        caplog.clear()
        started = time.monotonic()
        for number in range(150):
            conn = connect(sock)
            conn.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            closed_by_peer(conn, 2)
            conn.close()
            conn = connect(sock)
            if number % 2:
                conn.sendall(request_head().replace(TOKEN.encode(), b"wrong-token-" * 3))
            else:
                conn.sendall(request_head(length=2) + b"[]")
            read_answer(conn)
            conn.close()
        elapsed = time.monotonic() - started
        flood = [r for r in caplog.records if r.name.startswith(("controller.gateway", "uvicorn"))]

    # the bucket: 20 lines at once, then one a second (a few lines of margin for timing)
    assert len(flood) <= 20 + elapsed + 3, [r.getMessage() for r in flood[:5]]
    (stopped,) = [r.getMessage() for r in caplog.records if "stopped:" in r.getMessage()]
    dropped = int(stopped.rsplit(" ", 1)[1])
    assert dropped >= 300 - len(flood)  # counted, and said once when the gateway stops


# --------------------------------------------------------------------------- transcript


def test_refused_requests_are_recorded_without_their_bodies(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """Invariant 12: twelve refused 2 MiB requests add a few KiB to the transcript: size, sha256 and reason each, never the body."""
    transcript = tmp_path / "transcript.jsonl"
    bodies = []
    with gateway(scripted, budget(), transcript) as (served, sock), client(sock) as http:
        for number in range(12):
            body = json.loads(_padded(2 * MiB))
            body["temperature"] = number / 12  # refused: not a field the gateway forwards
            raw = json.dumps(body).encode()
            bodies.append(raw)
            assert http.post("/v1/messages", content=raw).status_code == 400

    assert transcript.stat().st_size < 12 * 2048
    entries = read_transcript(transcript)
    assert [e.refusal.body_sha256 if e.refusal else None for e in entries] == [
        hashlib.sha256(raw).hexdigest() for raw in bodies
    ]
    assert all(e.request.body is None and e.refusal and e.refusal.body_complete for e in entries)
    assert all("temperature" in (e.refusal.reason if e.refusal else "") for e in entries)
    assert served.usage.refused_requests == 12


def test_the_transcript_cap_spends_the_budget(scripted: ScriptedUpstream, tmp_path: Path) -> None:
    """Invariant 12: when the transcript reaches its cap the run's budget is spent: 429, not retried, and the file stays under the cap."""
    cap = 256 * 1024
    transcript = tmp_path / "transcript.jsonl"
    limits = budget(max_transcript_bytes=cap, max_body_bytes=64 * 1024)
    with gateway(scripted, limits, transcript) as (served, sock):
        sdk = anthropic.Anthropic(
            api_key=TOKEN,
            base_url="http://gateway",
            max_retries=3,
            http_client=anthropic.DefaultHttpxClient(transport=httpx2.HTTPTransport(uds=str(sock))),
        )
        with sdk:
            text = "y" * 30_000
            answered = 0
            caught: anthropic.RateLimitError | None = None
            for _ in range(100):
                try:
                    sdk.messages.create(
                        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": text}]
                    )
                except anthropic.RateLimitError as error:
                    caught = error
                    break
                answered += 1
            with client(sock) as http:
                refused_flood = [
                    http.post("/v1/messages", json={"bad": "x" * 1000}).status_code
                    for _ in range(300)
                ]
        usage = served.usage

    assert caught is not None
    assert caught.response.headers["x-should-retry"] == "false"
    assert "transcript reached its size cap" in caught.message
    assert 0 < answered < 100
    assert usage.exhausted_by == "transcript"
    assert usage.requests == answered
    assert set(refused_flood) == {400}
    assert transcript.stat().st_size <= cap
    entries = read_transcript(transcript)
    assert [e.turn for e in entries if e.turn is not None] == list(range(1, answered + 1))


def test_a_flood_of_refusals_spends_the_budget_too(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """Invariant 12: refusals fill the capped transcript as well; once it is full the next valid request gets the budget error."""
    cap = 65_536
    transcript = tmp_path / "transcript.jsonl"
    with (
        gateway(scripted, budget(max_transcript_bytes=cap), transcript) as (served, sock),
        client(sock) as http,
    ):
        for _ in range(400):
            http.post("/v1/messages", content=b"not json")
        valid = http.post("/v1/messages", json=HELLO)

    assert valid.status_code == 429
    assert valid.headers["x-should-retry"] == "false"
    assert served.usage.exhausted_by == "transcript"
    assert served.usage.requests == 0
    assert transcript.stat().st_size <= cap
