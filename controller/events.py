"""Run events: one step of a run, as the record, the API's event stream and the CLI show it."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class RunEvent(BaseModel):
    """One step of a run, as the API's event stream and the run record show it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    message: str
    data: dict[str, JsonValue] = Field(default_factory=dict)


EventSink = Callable[[RunEvent], None]
