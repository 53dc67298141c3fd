"""Pure logic of the gateway: SSE conversion both ways, SSE parsing, metering, hashing, retry hints."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.gateway.metering import UsageMeter
from controller.gateway.sse import MessageAssembler, SseEvent, message_to_events, parse_sse
from controller.gateway.transcript import (
    ExchangeMeta,
    RecordedRequest,
    TranscriptEntry,
    TranscriptWriter,
    read_transcript,
)
from controller.gateway.wire import ApiError, derived_id, retry_after_seconds
from controller.policy.schema import ModelBudget

MESSAGE: dict[str, Any] = {
    "id": "msg_01abc",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {"type": "thinking", "thinking": "Think " * 30, "signature": "sig=="},
        {"type": "text", "text": "Hello " * 30},
        {
            "type": "tool_use",
            "id": "toolu_01x",
            "name": "write",
            "input": {"path": "ä.py", "text": "x" * 200},
        },
        {"type": "redacted_thinking", "data": "opaque"},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 10},
}


def test_message_to_events_and_back_is_the_same_message() -> None:
    """A message streamed by message_to_events assembles back into the same message."""
    events = message_to_events(MESSAGE)
    assembler = MessageAssembler()
    for event in events:
        assembler.feed(event)

    assert assembler.stopped
    assert assembler.message == MESSAGE
    assert [e.event for e in events][:2] == ["message_start", "ping"]
    start = events[0].data["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["output_tokens"]) == (
        [],
        None,
        1,
    )
    partials = [
        e.data["delta"]["partial_json"]
        for e in events
        if e.data.get("delta", {}).get("type") == "input_json_delta"
    ]
    assert len(partials) > 1
    assert json.loads("".join(partials)) == MESSAGE["content"][2]["input"]


async def _lines(text: str) -> AsyncIterator[str]:
    for line in text.split("\n"):
        yield line


@pytest.mark.anyio
async def test_parse_sse_reads_frames_comments_and_bad_data() -> None:
    """Frames are split on blank lines, comments skipped, multi-line data joined, non-JSON data an error."""
    body = (
        ": keep-alive\n"
        'event: ping\ndata: {"type": "ping"}\n\n'
        'event: message_delta\ndata: {"type": "message_delta",\ndata: "usage": {}}\n\n'
        "event: content_block_delta\ndata: not json\n\n"
        'data: {"type": "message_stop"}'
    )

    events = [event async for event in parse_sse(_lines(body))]

    assert [e.event for e in events] == ["ping", "message_delta", "error", "message_stop"]
    assert events[1].data == {"type": "message_delta", "usage": {}}
    assert events[2].data["error"]["type"] == "api_error"
    assert SseEvent("ping", {"type": "ping"}).encode() == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_meter_charges_usage_and_refuses_past_the_budget() -> None:
    """Usage adds up from well-formed counts only, and admission stops at either limit."""
    budget = ModelBudget(
        allowed_models=["m"],
        default_model="m",
        max_tokens_per_request=10,
        max_total_tokens=100,
        max_requests=3,
        max_rounds=1,
    )
    meter = UsageMeter(budget)
    assert meter.admit() == 1
    meter.charge({"input_tokens": 40, "output_tokens": "many", "cache_read_input_tokens": True})
    meter.charge(None)
    assert meter.admit() == 2
    meter.charge({"output_tokens": 60, "cache_creation_input_tokens": -5})

    with pytest.raises(ApiError) as caught:
        meter.admit()

    assert (caught.value.status, caught.value.should_retry) == (429, False)
    assert "100 of 100 tokens used" in caught.value.message
    usage = meter.snapshot()
    assert (usage.requests, usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        2,
        40,
        60,
        100,
    )


def test_retry_after_hints_and_derived_ids() -> None:
    """retry-after-ms wins over retry-after; dates and junk are handled; derived ids are stable."""
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert (
        derived_id("msg_01", "seed")
        == derived_id("msg_01", "seed")
        != derived_id("msg_01", "other")
    )
    assert ApiError(529, "overloaded_error", "x", retry_after=1.2).headers() == {"retry-after": "2"}


def test_request_hash_ignores_meta_and_transcript_round_trips(tmp_path: Path) -> None:
    """Two exchanges of the same request hash alike whatever their ids and times; entries read back equal."""
    request = RecordedRequest(
        path="/v1/messages", body={"model": "m", "messages": [{"role": "user", "content": "é"}]}
    )
    writer = TranscriptWriter(tmp_path / "record" / "transcript.jsonl")
    entries = [
        TranscriptEntry(
            seq=n,
            turn=n + 1,
            request=request,
            request_sha256=request.sha256(),
            status=200,
            response={"n": n},
            meta=ExchangeMeta(
                request_id=f"req_{n}",
                upstream="u",
                started_at=datetime.now(UTC),
                finished_at=datetime.now(UTC),
            ),
        )
        for n in range(2)
    ]
    for entry in entries:
        writer.append(entry)

    back = read_transcript(writer.path)

    assert back == entries
    assert back[0].request_sha256 == back[1].request_sha256
    assert writer.path.stat().st_mode & 0o777 == 0o600
