"""The upstream interface: where the gateway gets its answers (the real API, a script, a recording).

An upstream answers a validated, policy-adjusted request with a whole message
or a stream of events, or raises ``ApiError`` with the error the client should
see. Metering, budget, recording and the HTTP surface stay in the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from controller.gateway.sse import SseEvent


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One ``/v1/messages`` request as the gateway forwards it."""

    turn: int
    """Model turn of the run, from 1."""
    body: dict[str, Any]
    """The body to send: validated, ``max_tokens`` lowered to the policy's cap."""
    request_sha256: str
    """sha256 of the request as the client sent it (the transcript's identity of it)."""
    stream: bool
    """Whether the client asked for server-sent events."""
    anthropic_beta: tuple[str, ...] = ()
    """Beta flags to forward."""


@dataclass(frozen=True, slots=True)
class MessageReply:
    """A whole message (HTTP 200 JSON)."""

    message: dict[str, Any]
    upstream_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A stream of events (HTTP 200 SSE); the gateway closes ``events`` when it is done with them."""

    events: AsyncGenerator[SseEvent, None]
    upstream_request_id: str | None = None


UpstreamReply = MessageReply | StreamReply


class Upstream(Protocol):
    """A source of model answers. Errors the client should see are raised as ``ApiError``."""

    @property
    def name(self) -> str:
        """How this upstream is named in transcripts and logs, e.g. ``scripted:/path/turns.jsonl``."""
        ...

    @property
    def http_requests(self) -> int:
        """HTTP requests sent to a remote API so far, retries included (0 for a local upstream)."""
        ...

    async def create_message(self, call: UpstreamCall) -> UpstreamReply:
        """Answer one model turn."""
        ...

    async def count_tokens(
        self, body: dict[str, Any], *, request_sha256: str, anthropic_beta: tuple[str, ...] = ()
    ) -> int:
        """Input tokens of a ``count_tokens`` request."""
        ...

    async def aclose(self) -> None:
        """Release connections; the upstream is not used afterwards."""
        ...
