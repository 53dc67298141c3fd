"""Server-sent events of the Messages API: encode, parse, and convert to and from whole messages.

The SDK dispatches on the ``event:`` line, so every frame carries one. A
message becomes ``message_start`` (empty content, null stop_reason), ``ping``,
per block ``content_block_start`` / deltas / ``content_block_stop``, then
``message_delta`` (stop_reason, cumulative output_tokens) and ``message_stop``.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

logger = logging.getLogger(__name__)

#: Characters of text (or of tool input JSON) per delta event in generated streams.
DELTA_CHARS = 48

USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: its ``event:`` name and its JSON ``data:``."""

    event: str
    data: dict[str, Any]

    def encode(self) -> bytes:
        """The frame as sent on the wire."""
        payload = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"event: {self.event}\ndata: {payload}\n\n".encode()


def error_event(error_type: str, message: str) -> SseEvent:
    """A mid-stream ``error`` event; the SDK raises it as an ``APIStatusError`` and does not retry."""
    return SseEvent("error", {"type": "error", "error": {"type": error_type, "message": message}})


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    """Events of an SSE body given line by line; data that is not a JSON object becomes an error event."""
    name: str | None = None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield _decode(name, "\n".join(data))
            name, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        yield _decode(name, "\n".join(data))


def _decode(name: str | None, raw: str) -> SseEvent:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        logger.warning("upstream sent an SSE event whose data is not a JSON object")
        return error_event("api_error", "upstream sent a malformed stream event")
    return SseEvent(name or str(data.get("type", "message")), data)


def _chunks(text: str) -> list[str]:
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)]


def message_to_events(message: dict[str, Any]) -> list[SseEvent]:
    """The stream the API would send for ``message``, in the API's exact event order."""
    usage = dict(message.get("usage") or {})
    start_usage = {key: usage[key] for key in USAGE_KEYS if key in usage}
    start_usage["output_tokens"] = min(1, int(usage.get("output_tokens", 0)))
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events = [
        SseEvent("message_start", {"type": "message_start", "message": start}),
        SseEvent("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message.get("content") or []):
        events.extend(_block_events(index, block))
    delta: dict[str, Any] = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    if message.get("stop_details") is not None:
        delta["stop_details"] = message["stop_details"]
    events.append(
        SseEvent(
            "message_delta",
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {"output_tokens": int(usage.get("output_tokens", 0))},
            },
        )
    )
    events.append(SseEvent("message_stop", {"type": "message_stop"}))
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[SseEvent]:
    kind = block.get("type")
    deltas: list[dict[str, Any]]
    if kind == "text":
        start = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": part} for part in _chunks(block.get("text", ""))]
    elif kind == "tool_use":
        start = {**block, "input": {}}
        partial = json.dumps(block.get("input", {}), separators=(",", ":"), ensure_ascii=False)
        deltas = [{"type": "input_json_delta", "partial_json": part} for part in _chunks(partial)]
    elif kind == "thinking":
        start = {**block, "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": part}
            for part in _chunks(block.get("thinking", ""))
        ]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:
        # Blocks without a delta form (redacted thinking, server tool results) arrive whole.
        start, deltas = dict(block), []
    events = [
        SseEvent(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
    ]
    events.extend(
        SseEvent("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
        for d in deltas
    )
    events.append(SseEvent("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


class MessageAssembler:
    """Builds the final message from a stream's events, as the SDK's ``get_final_message`` does."""

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._json: dict[int, str] = {}
        self.stopped = False
        """Whether ``message_stop`` arrived."""
        self.error: dict[str, Any] | None = None
        """The body of an ``error`` event, if one arrived."""

    @property
    def message(self) -> dict[str, Any] | None:
        """The message so far (``None`` before ``message_start``)."""
        return self._message

    @property
    def usage(self) -> dict[str, Any]:
        """Usage so far: input from ``message_start``, cumulative output from ``message_delta``."""
        return dict(self._message.get("usage") or {}) if self._message else {}

    def feed(self, event: SseEvent) -> None:
        """Apply one event; events this class does not know are ignored, as the SDK ignores them."""
        data = event.data
        kind = data.get("type", event.event)
        if kind == "error":
            self.error = data
        elif kind == "message_start" and isinstance(data.get("message"), dict):
            self._message = copy.deepcopy(data["message"])
            self._message.setdefault("content", [])
        elif self._message is None:
            return
        elif kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            self._message["content"].append(copy.deepcopy(data["content_block"]))
        elif kind == "content_block_delta":
            self._apply_delta(int(data.get("index", -1)), data.get("delta") or {})
        elif kind == "content_block_stop":
            self._finish_block(int(data.get("index", -1)))
        elif kind == "message_delta":
            self._message.update(data.get("delta") or {})
            usage = self._message.setdefault("usage", {})
            usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.stopped = True

    def _block(self, index: int) -> dict[str, Any] | None:
        content = self._message["content"] if self._message else []
        return content[index] if 0 <= index < len(content) else None

    def _apply_delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._block(index)
        if block is None:
            return
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "input_json_delta":
            self._json[index] = self._json.get(index, "") + delta.get("partial_json", "")
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))

    def _finish_block(self, index: int) -> None:
        block = self._block(index)
        if block is None or index not in self._json:
            return
        raw = self._json.pop(index)
        try:
            block["input"] = json.loads(raw) if raw else {}
        except ValueError:
            logger.warning("tool input JSON of block %d did not parse; kept as text", index)
            block["input"] = {"_unparsed": raw}
