"""The model transcript: one JSON line per exchange, written by the gateway and read by ``replay:``.

An entry's ``request`` (method, path, ``anthropic-beta`` and the body) is the
hashed part; it never holds a header that authenticates. Everything that
changes from run to run (request ids, timestamps) lives in ``meta``, outside
the hash, so two runs of the same conversation hash alike.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.gateway.jsonl import read_jsonl
from controller.gateway.wire import sha256_hex

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

TRANSCRIPT_FILE = "transcript.jsonl"
"""File name of the transcript inside a run's ``record/`` folder."""


class _TranscriptModel(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RecordedRequest(_TranscriptModel):
    """The part of a request that decides the answer; its sha256 is the request's identity."""

    method: Literal["GET", "POST"] = "POST"
    """HTTP method."""
    path: str
    """Endpoint path, e.g. ``/v1/messages``."""
    anthropic_beta: list[str] = Field(default_factory=list)
    """Beta flags the client asked for; they change what the model does."""
    body: dict[str, Any] | None
    """The JSON body as the client sent it (``None`` when it did not parse)."""

    def sha256(self) -> str:
        """sha256 over the canonical JSON of this request."""
        return sha256_hex(self.model_dump(mode="json"))


class RecordedFrame(_TranscriptModel):
    """One server-sent event of a streamed answer, as sent."""

    event: str
    """The ``event:`` line."""
    data: dict[str, Any]
    """The ``data:`` JSON."""


class ExchangeMeta(_TranscriptModel):
    """What differs between runs of the same conversation; outside the hashed part."""

    request_id: str
    """The gateway's ``request-id`` of this exchange."""
    upstream: str
    """Which upstream answered, e.g. ``anthropic`` or ``scripted:/path``."""
    upstream_request_id: str | None = None
    """The upstream's own request id, for support requests to the provider."""
    started_at: datetime
    """When the request arrived (UTC)."""
    finished_at: datetime
    """When the answer was complete (UTC)."""
    sent_max_tokens: int | None = None
    """``max_tokens`` as forwarded, after the policy's cap."""


class TranscriptEntry(_TranscriptModel):
    """One exchange between the sandbox and the model."""

    schema_version: Literal[1] = 1
    """Version of this record format."""
    seq: int = Field(ge=0)
    """Position of the exchange in the run, from 0, in arrival order."""
    turn: int | None = Field(default=None, ge=1)
    """Model turn, from 1, for each ``/v1/messages`` request that reached the upstream; ``None`` otherwise."""
    request: RecordedRequest
    """The request (hashed part)."""
    request_sha256: str
    """sha256 of ``request``."""
    status: int
    """HTTP status answered to the client."""
    response_headers: dict[str, str] = Field(default_factory=dict)
    """Answer headers that steer the client (``x-should-retry``, ``retry-after``)."""
    response: dict[str, Any] | None = None
    """JSON body answered; for a stream, the message assembled from its frames."""
    frames: list[RecordedFrame] | None = None
    """For a stream, every event as sent, in order."""
    meta: ExchangeMeta
    """Run-specific details, not hashed."""


class TranscriptWriter:
    """Appends entries to a JSON Lines file, one whole line per ``os.write``, mode 0o600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, entry: TranscriptEntry) -> None:
        """Append one entry; a failure to write is logged and never fails the exchange itself."""
        line = entry.model_dump_json().encode() + b"\n"
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError:
                logger.exception("cannot append to transcript %s", self.path)


def transcript_path(run_dir_or_file: Path) -> Path:
    """The transcript of a run folder (``RUN_DIR/record/transcript.jsonl``), or the file itself."""
    if run_dir_or_file.is_file():
        return run_dir_or_file
    return run_dir_or_file / "record" / TRANSCRIPT_FILE


def read_transcript(path: Path) -> list[TranscriptEntry]:
    """Every entry of a transcript file; a malformed line is refused with its line number."""
    return read_jsonl(path, TranscriptEntry, file_kind="transcript", line_kind="transcript entry")
