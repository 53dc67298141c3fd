"""Run events: one step of a run, as the record, the API's event stream and the CLI show it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator

from controller.display import escape_json, escape_text


def _now() -> datetime:
    return datetime.now(UTC)


class RunEvent(BaseModel):
    """One step of a run, as the API's event stream and the run record show it.

    Its text is escaped when the event is made (control, bidi and zero-width characters
    as ``\\x1b``, ``\\u202e``...): whatever a sandbox or a task put in a message, neither
    ``events.jsonl``, the API nor a terminal carries it raw (invariant 13).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    message: str
    data: dict[str, JsonValue] = Field(default_factory=dict)
    at: AwareDatetime = Field(default_factory=_now)
    """When the controller made the event (UTC). Events a sandbox reports get the time the
    controller read them: a sandbox cannot set it."""

    @field_validator("stage", "message")
    @classmethod
    def _escape_text(cls, value: str) -> str:
        return escape_text(value)

    @field_validator("data")
    @classmethod
    def _escape_data(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return {escape_text(key): escape_json(item) for key, item in value.items()}


EventSink = Callable[[RunEvent], None]
