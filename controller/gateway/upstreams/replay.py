"""The replay upstream: answers turn N with the recorded answer N of an earlier run's transcript.

Strict by default: the request of turn N must hash like the recorded one, or
the gateway answers a non-retryable error naming the turn. Recorded ids,
frames and errors are played back as they were, so the runner sees the same
bytes it saw the first time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from controller.errors import GatewayError
from controller.gateway.sse import SseEvent
from controller.gateway.transcript import TranscriptEntry, read_transcript, transcript_path
from controller.gateway.upstreams.base import MessageReply, StreamReply, UpstreamCall
from controller.gateway.wire import ApiError, error_type_for, estimate_input_tokens

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from pathlib import Path

logger = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


class ReplayUpstream:
    """Plays back a transcript, turn by turn."""

    def __init__(self, entries: list[TranscriptEntry], *, source: str, strict: bool = True) -> None:
        self._source = source
        self._strict = strict
        self._turns = {e.turn: e for e in entries if e.turn is not None}
        self._counts: dict[str, int] = {}
        for entry in entries:
            count = (entry.response or {}).get("input_tokens")
            if entry.request.path == COUNT_TOKENS_PATH and isinstance(count, int):
                self._counts[entry.request_sha256] = count

    @classmethod
    def from_run_dir(cls, run_dir: Path, *, strict: bool = True) -> ReplayUpstream:
        """Load ``RUN_DIR/record/transcript.jsonl`` (or the transcript file itself)."""
        path = transcript_path(run_dir)
        entries = read_transcript(path)
        turns = sorted(e.turn for e in entries if e.turn is not None)
        if turns != list(range(1, len(turns) + 1)):
            raise GatewayError(f"{path}: the recorded turns are not 1..N: {turns[:10]}")
        if not turns:
            raise GatewayError(f"{path}: the recording has no model turns to replay")
        return cls(entries, source=str(run_dir), strict=strict)

    @property
    def name(self) -> str:
        """``replay:RUN_DIR``."""
        return f"replay:{self._source}"

    @property
    def http_requests(self) -> int:
        """Always 0: this upstream answers locally."""
        return 0

    async def create_message(self, call: UpstreamCall) -> MessageReply | StreamReply:
        """The recorded answer of turn ``call.turn``."""
        entry = self._turns.get(call.turn)
        if entry is None:
            raise ApiError.final(
                400,
                f"replay: the recording {self._source} has only {len(self._turns)} turns; "
                f"this run asked for turn {call.turn}",
            )
        if entry.request_sha256 != call.request_sha256:
            if self._strict:
                raise ApiError.final(
                    400,
                    f"replay: the request of turn {call.turn} differs from the recording "
                    f"(recorded sha256 {entry.request_sha256[:16]}, got "
                    f"{call.request_sha256[:16]}); the run has diverged",
                )
            logger.warning(
                "replay: turn %d differs from the recording; replaying anyway", call.turn
            )
        if entry.status != 200:  # noqa: PLR2004 - HTTP OK
            raise _recorded_error(entry)
        upstream_id = entry.meta.upstream_request_id
        if entry.frames is not None:
            return StreamReply(_play(entry), upstream_id)
        if entry.response is None:
            raise ApiError.final(500, f"replay: turn {call.turn} was recorded without an answer")
        return MessageReply(entry.response, upstream_id)

    async def count_tokens(
        self,
        body: dict[str, Any],
        *,
        request_sha256: str,
        anthropic_beta: tuple[str, ...] = (),  # noqa: ARG002 - part of the Upstream interface
    ) -> int:
        """The recorded count of the same request, else the estimate."""
        recorded = self._counts.get(request_sha256)
        return recorded if recorded is not None else estimate_input_tokens(body)

    async def aclose(self) -> None:
        """Nothing to release."""


def _recorded_error(entry: TranscriptEntry) -> ApiError:
    error = (entry.response or {}).get("error") or {}
    should_retry = entry.response_headers.get("x-should-retry")
    retry_after = entry.response_headers.get("retry-after")
    return ApiError(
        entry.status,
        str(error.get("type") or error_type_for(entry.status)),
        str(error.get("message") or "recorded error"),
        should_retry=None if should_retry is None else should_retry == "true",
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


async def _play(entry: TranscriptEntry) -> AsyncGenerator[SseEvent, None]:
    for frame in entry.frames or []:
        yield SseEvent(frame.event, frame.data)
