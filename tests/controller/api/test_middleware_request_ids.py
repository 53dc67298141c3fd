"""The request-id middleware's ids and header reading, after the cut of its per-request work (issue 15)."""

from __future__ import annotations

import asyncio
import os
import uuid

from controller.api.middleware import RequestContextMiddleware, RequestIds


def test_ids_are_uuid4_hex_and_distinct_across_blocks() -> None:
    """Every id is what uuid4().hex looks like, and none repeats over several blocks of random bytes."""
    ids = RequestIds()
    made = [ids.new() for _ in range(3 * RequestIds.BLOCK_BYTES // 16 + 5)]
    assert len(set(made)) == len(made)
    for value in made:
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    """After fork the child reads fresh random bytes, so it cannot hand out the ids the parent will."""
    ids = RequestIds()
    ids.new()  # the parent now holds a block
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next id and leave at once
        os.close(read)
        os.write(write, ids.new().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child_id) == 32
    assert child_id != ids.new()


def test_the_last_of_repeated_headers_wins_and_a_tame_id_is_kept() -> None:
    """Two X-Request-ID headers: the last one is used, as the dict of headers did before."""
    sent: list[dict[str, object]] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        del receive
        assert scope["state"] == {"request_id": "second-id"}
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    middleware = RequestContextMiddleware(app, max_body_bytes=10)  # type: ignore[arg-type]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [(b"x-request-id", b"first-id"), (b"x-request-id", b"second-id")],
    }
    asyncio.run(middleware(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 204
    assert sent[0]["headers"] == [(b"x-request-id", b"second-id")]
