"""The scripted upstream: canned assistant turns from a JSON Lines file, one turn a line.

A line is ``{"content": [blocks], "stop_reason": "tool_use"}`` with text blocks
``{"type": "text", "text": ...}`` and tool calls ``{"type": "tool_use", "name":
..., "input": {...}}``; ``stop_reason`` defaults to ``tool_use`` when the turn
calls a tool and ``end_turn`` otherwise. A line ``{"error": {"status": 529,
"type": "overloaded_error", "message": ...}}`` answers that API error instead.
Turn N of a run gets line N. Ids and usage are derived from the script and the
request, so the same script and conversation always give the same bytes.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.errors import GatewayError
from controller.gateway.jsonl import read_jsonl
from controller.gateway.upstreams.base import MessageReply, UpstreamCall
from controller.gateway.wire import (
    ApiError,
    derived_id,
    error_type_for,
    estimate_input_tokens,
    estimate_tokens,
)

if TYPE_CHECKING:
    from pathlib import Path

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]


class _ScriptModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptText(_ScriptModel):
    """A text block of a scripted turn."""

    type: Literal["text"]
    text: str = Field(min_length=1)


class ScriptToolUse(_ScriptModel):
    """A tool call of a scripted turn; the gateway gives it its ``toolu_`` id."""

    type: Literal["tool_use"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    input: dict[str, Any] = Field(default_factory=dict)


class ScriptError(_ScriptModel):
    """An API error a scripted turn answers instead of a message."""

    status: int = Field(ge=400, le=599)
    type: str | None = None
    message: str = Field(min_length=1)
    should_retry: bool | None = None
    retry_after: float | None = Field(default=None, ge=0, le=60)
    """Seconds for a ``retry-after`` header, as a rate-limited API sends it."""


class ScriptTurn(_ScriptModel):
    """One line of a script: an assistant turn, or an error."""

    content: list[Annotated[ScriptText | ScriptToolUse, Field(discriminator="type")]] = Field(
        default_factory=list
    )
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    error: ScriptError | None = None

    @model_validator(mode="after")
    def _coherent(self) -> ScriptTurn:
        calls_tool = any(isinstance(block, ScriptToolUse) for block in self.content)
        if self.error is not None:
            if self.content or self.stop_reason or self.stop_sequence:
                raise ValueError("an error turn has only 'error'")
            return self
        if not self.content and self.stop_reason not in ("max_tokens", "refusal", "pause_turn"):
            raise ValueError(
                "a turn needs content (or stop_reason max_tokens, refusal or pause_turn)"
            )
        if self.stop_reason == "tool_use" and not calls_tool:
            raise ValueError("stop_reason tool_use needs a tool_use block")
        if self.stop_reason in ("end_turn", "stop_sequence") and calls_tool:
            raise ValueError(f"a turn with tool_use blocks cannot stop with {self.stop_reason}")
        if (self.stop_sequence is not None) != (self.stop_reason == "stop_sequence"):
            raise ValueError("stop_sequence is set exactly when stop_reason is stop_sequence")
        return self

    @property
    def effective_stop_reason(self) -> str:
        """The stop reason, defaulted from the content."""
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if any(b.type == "tool_use" for b in self.content) else "end_turn"


def load_script(path: Path) -> list[ScriptTurn]:
    """Read and validate a script file; a malformed one is refused with the line number."""
    turns = read_jsonl(path, ScriptTurn, file_kind="script", line_kind="script turn")
    if not turns:
        raise GatewayError(f"{path}: the script has no turns")
    return turns


class ScriptedUpstream:
    """Answers turn N of a run with line N of a script file."""

    def __init__(self, turns: list[ScriptTurn], *, source: str) -> None:
        self._turns = turns
        self._source = source
        # Ids are seeded by the script's content, so the same script gives the same ids.
        self._seed = hashlib.sha256(
            "\n".join(turn.model_dump_json() for turn in turns).encode()
        ).hexdigest()

    @classmethod
    def from_file(cls, path: Path) -> ScriptedUpstream:
        """Load and validate ``path``."""
        return cls(load_script(path), source=str(path))

    @property
    def name(self) -> str:
        """``scripted:FILE``."""
        return f"scripted:{self._source}"

    @property
    def http_requests(self) -> int:
        """Always 0: this upstream answers locally."""
        return 0

    async def create_message(self, call: UpstreamCall) -> MessageReply:
        """Line ``call.turn`` of the script as a message, or its error."""
        if call.turn > len(self._turns):
            raise ApiError.final(
                400,
                f"scripted upstream: the script {self._source} has only {len(self._turns)} "
                f"turns; this run asked for turn {call.turn}",
            )
        turn = self._turns[call.turn - 1]
        if turn.error is not None:
            error = turn.error
            raise ApiError(
                error.status,
                error.type or error_type_for(error.status),
                error.message,
                should_retry=error.should_retry,
                retry_after=error.retry_after,
            )
        content: list[dict[str, Any]] = []
        for index, block in enumerate(turn.content):
            if isinstance(block, ScriptText):
                content.append({"type": "text", "text": block.text})
            else:
                tool_id = derived_id("toolu_01", f"{self._seed}:{call.turn}:{index}")
                content.append(
                    {"type": "tool_use", "id": tool_id, "name": block.name, "input": block.input}
                )
        message = {
            "id": derived_id("msg_01", f"{self._seed}:{call.turn}"),
            "type": "message",
            "role": "assistant",
            "model": call.body["model"],
            "content": content,
            "stop_reason": turn.effective_stop_reason,
            "stop_sequence": turn.stop_sequence,
            "usage": {
                "input_tokens": estimate_input_tokens(call.body),
                "output_tokens": estimate_tokens(content) if content else 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        return MessageReply(message)

    async def count_tokens(
        self,
        body: dict[str, Any],
        *,
        request_sha256: str,  # noqa: ARG002 - part of the Upstream interface
        anthropic_beta: tuple[str, ...] = (),  # noqa: ARG002 - part of the Upstream interface
    ) -> int:
        """The estimate: one token per four characters of system, tools and messages."""
        return estimate_input_tokens(body)

    async def aclose(self) -> None:
        """Nothing to release."""
