"""Units of invariant 12's pieces: the allowlist's accepted shapes, escaped names, the log bucket, the transcript cap, metering."""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from controller.gateway import read_transcript
from controller.gateway.limits import LogBucket, RateLimitedLogger, Slots
from controller.gateway.metering import UsageMeter
from controller.gateway.transcript import (
    ExchangeMeta,
    RecordedRequest,
    TranscriptEntry,
    TranscriptWriter,
)
from controller.gateway.validation import check_headers, check_messages_request, shown
from controller.gateway.wire import ApiError

if TYPE_CHECKING:
    from tests.controller.gateway.conftest import BudgetFactory

MODEL = "claude-sonnet-4-6"
PNG = "iVBORw0KGgo="

ALLOWED: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 100,
    "metadata": {"user_id": "run-1"},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "tools": [
        {
            "type": "text_editor_20250728",
            "name": "str_replace_based_edit_tool",
            "max_characters": 9,
        },
        {
            "name": "look",
            "input_schema": {
                "type": "object",
                "properties": {"p": {"$ref": "#/$defs/P"}},
                "$defs": {"P": {"type": "string"}},
            },
            "strict": True,
        },
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "See."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                    "title": "spec",
                    "citations": {"enabled": True},
                },
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [
                        {"type": "text", "text": "seen"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/gif", "data": PNG},
                        },
                    ],
                }
            ],
        },
    ],
}


def test_inline_media_thinking_and_client_tools_are_allowed() -> None:
    """Base64 images and PDFs, text documents, thinking, metadata.user_id and client tools pass the allowlist."""
    facts = check_messages_request(copy.deepcopy(ALLOWED))

    assert facts.model == MODEL


def test_names_from_a_request_are_shown_escaped_and_short() -> None:
    """A megabyte key with control and bidi characters becomes a short, escaped name in the 400's message."""
    key = "\x1b]8;;http://x\x07\u202e" + "k" * 1_000_000
    body = {**copy.deepcopy(ALLOWED), key: 1}

    with pytest.raises(ApiError) as caught:
        check_messages_request(body)

    message = caught.value.message
    assert len(message) < 600
    assert "\x1b" not in message
    assert "\u202e" not in message
    assert "\\x1b" in message
    assert shown("max_tokens") == "max_tokens"


def test_headers_and_betas() -> None:
    """The SDK's headers pass; an unlisted header or a beta the policy does not name is a 400."""
    sdk_headers = [
        "host",
        "x-api-key",
        "anthropic-version",
        "x-stainless-retry-count",
        "content-length",
    ]
    check_headers(sdk_headers, ["context-1m-2025-08-07"], ["context-1m-2025-08-07"])

    with pytest.raises(ApiError, match="header x-forwarded-host is not allowed"):
        check_headers([*sdk_headers, "X-Forwarded-Host"], [], [])
    with pytest.raises(
        ApiError, match=r"files-api-2025-04-14 is not allowed .*allowed_betas: none"
    ):
        check_headers(sdk_headers, ["files-api-2025-04-14"], [])


def test_the_log_bucket_passes_a_burst_then_a_rate_and_counts_the_rest() -> None:
    """20 lines pass at once, then one a second; the next line that passes says how many were dropped."""
    now = [0.0]
    bucket = LogBucket(burst=20, rate=1.0, clock=lambda: now[0])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    parent = logging.getLogger("tests.gateway.bucket")
    parent.propagate = False
    handler = Keep()
    parent.addHandler(handler)
    try:
        log = RateLimitedLogger(parent, bucket)
        for _ in range(100):
            log.warning("bad connection")
        now[0] = 2.0
        log.warning("after a pause")
    finally:
        parent.removeHandler(handler)

    assert len(records) == 21
    assert bucket.dropped == 80
    assert (
        records[-1].getMessage()
        == "after a pause [80 earlier log lines of this gateway were dropped]"
    )
    assert bucket.drain() == 0


def _entry(seq: int, body_chars: int) -> TranscriptEntry:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    request = RecordedRequest(path="/v1/messages", body={"messages": "m" * body_chars})
    return TranscriptEntry(
        seq=seq,
        turn=seq + 1,
        request=request,
        request_sha256=request.sha256(),
        status=200,
        response={"content": "r" * body_chars},
        meta=ExchangeMeta(
            request_id=f"req_{seq}", upstream="test", started_at=moment, finished_at=moment
        ),
    )


def test_the_transcript_writer_never_passes_its_cap(tmp_path: Path) -> None:
    """Entries are whole until the cap's reserve, then cut to size and digest, then dropped; the file stays under the cap."""
    path = tmp_path / "transcript.jsonl"
    writer = TranscriptWriter(path, max_bytes=65_536)
    written = [writer.append(_entry(seq, 5_000)) for seq in range(200)]

    assert writer.full
    assert path.stat().st_size <= 65_536
    assert written.count(False) == writer.dropped > 0
    entries = read_transcript(path)
    whole = [e for e in entries if e.refusal is None]
    cut = [e for e in entries if e.refusal is not None]
    assert whole
    assert cut
    assert [e.seq for e in entries] == list(range(len(entries)))
    assert all(e.request.body is None and e.response is None for e in cut)
    assert all(e.refusal is not None and e.refusal.body_bytes > 5_000 for e in cut)
    assert not writer.room_for(1)


def test_count_tokens_is_admitted_and_counted_but_keeps_turns(make_budget: BudgetFactory) -> None:
    """A count takes a request of the budget without a turn number; message turns stay 1, 2, ...; exhaust closes it."""
    meter = UsageMeter(make_budget(max_requests=4))

    assert [meter.admit("messages"), meter.admit("count_tokens"), meter.admit("messages")] == [
        1,
        None,
        2,
    ]
    usage = meter.snapshot()
    assert (usage.requests, usage.count_tokens_requests, usage.message_requests) == (3, 1, 2)
    meter.exhaust("transcript")
    with pytest.raises(ApiError, match="transcript reached its size cap") as caught:
        meter.admit("count_tokens")
    assert caught.value.headers()["x-should-retry"] == "false"


def test_slots_refuse_past_the_limit() -> None:
    """Slots never wait: past the limit try_take says no until one is given back."""
    slots = Slots(2)

    assert [slots.try_take(), slots.try_take(), slots.try_take()] == [True, True, False]
    slots.give_back()
    assert slots.try_take()
    assert slots.used == 2
