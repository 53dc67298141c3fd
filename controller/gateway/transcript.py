"""The model transcript: one JSON line per exchange, written by the gateway and read by ``replay:``.

An entry's ``request`` (method, path, ``anthropic-beta`` and the body) is the
hashed part; it never holds a header that authenticates. Everything that
changes from run to run (request ids, timestamps) lives in ``meta``, outside
the hash, so two runs of the same conversation hash alike. A request refused
before it reached the upstream is kept as its size, sha256 and reason
(``refusal``), never its body; and the file has a size cap per run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.gateway.jsonl import read_jsonl
from controller.gateway.wire import canonical_json

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

    def canonical(self) -> bytes:
        """The canonical JSON of this request, built from the body as it is (no copy of it first).

        Equal to the canonical JSON of ``model_dump(mode="json")``; raises
        ``UnicodeEncodeError`` when the body holds a lone surrogate.
        """
        return canonical_json(
            {
                "method": self.method,
                "path": self.path,
                "anthropic_beta": self.anthropic_beta,
                "body": self.body,
            }
        )

    def sha256(self) -> str:
        """sha256 over the canonical JSON of this request."""
        return hashlib.sha256(self.canonical()).hexdigest()


class RecordedFrame(_TranscriptModel):
    """One server-sent event of a streamed answer, as sent."""

    event: str
    """The ``event:`` line."""
    data: dict[str, Any]
    """The ``data:`` JSON."""


class Refusal(_TranscriptModel):
    """A request the gateway refused before the upstream saw it: what arrived, never the body itself."""

    reason: str
    """Why it was refused (the error message the client got)."""
    body_bytes: int = Field(ge=0)
    """Bytes of the body the gateway read before refusing."""
    body_sha256: str | None = None
    """sha256 of those bytes; ``None`` when none were read."""
    body_complete: bool
    """Whether those bytes are the whole body (false when reading stopped at the cap)."""
    declared_bytes: int | None = None
    """The ``Content-Length`` the client declared, if any."""


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
    refusal: Refusal | None = None
    """Set when the request was refused before the upstream (``request.body`` is then ``None``),
    or when the entry was cut down because the transcript reached its cap."""
    meta: ExchangeMeta
    """Run-specific details, not hashed."""

    def compacted(self, reason: str) -> TranscriptEntry:
        """This entry without its bodies: the request as size and sha256, no response or frames."""
        if self.refusal is not None or self.request.body is None:
            refusal = self.refusal
        else:
            canonical = canonical_json(self.request.body)
            refusal = Refusal(
                reason=reason,
                body_bytes=len(canonical),
                body_sha256=hashlib.sha256(canonical).hexdigest(),
                body_complete=True,
            )
        return self.model_copy(
            update={
                "request": self.request.model_copy(update={"body": None}),
                "response": None,
                "frames": None,
                "refusal": refusal,
            }
        )


#: Reason kept in an entry cut down because the transcript reached its cap.
CAP_REACHED = "not recorded in full: the run's transcript reached its size cap"


class TranscriptWriter:
    """Appends entries to a JSON Lines file, one whole line per ``os.write``, mode 0o600, up to a cap.

    With ``max_bytes`` the file never grows past it. Entries are written whole
    while they fit below ``max_bytes - reserve``; the first one that does not
    makes the writer ``full``. From then on entries are written cut down to
    size and digest (``TranscriptEntry.compacted``) while they fit in the
    reserve, and after that only counted (``dropped``).
    """

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._max = max_bytes
        self._reserve = 0 if max_bytes is None else max(4096, max_bytes // 16)
        self._written = path.stat().st_size if path.exists() else 0
        self._full = False
        self.dropped = 0
        """Entries not written at all because even their cut-down form did not fit."""

    @property
    def written(self) -> int:
        """Bytes in the file so far."""
        return self._written

    @property
    def full(self) -> bool:
        """Whether an entry has met the cap: the run may not ask the model again."""
        return self._full

    def room_for(self, size: int) -> bool:
        """Whether an entry of about ``size`` bytes still fits whole; when not, the writer is full."""
        with self._lock:
            if self._max is None:
                return True
            if not self._full and self._written + size > self._max - self._reserve:
                self._full = True
            return not self._full

    def append(self, entry: TranscriptEntry) -> bool:
        """Append one entry (cut down past the cap); False when it was dropped.

        A failure to write is logged and never fails the exchange itself.
        """
        line = entry.model_dump_json().encode() + b"\n"
        with self._lock:
            if self._max is not None and (
                self._full or self._written + len(line) > self._max - self._reserve
            ):
                self._full = True
                line = entry.compacted(CAP_REACHED).model_dump_json().encode() + b"\n"
                if self._written + len(line) > self._max:
                    self.dropped += 1
                    return False
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError:
                logger.exception("cannot append to transcript %s", self.path)
                return False
            self._written += len(line)
            return True


def transcript_path(run_dir_or_file: Path) -> Path:
    """The transcript of a run folder (``RUN_DIR/record/transcript.jsonl``), or the file itself."""
    if run_dir_or_file.is_file():
        return run_dir_or_file
    return run_dir_or_file / "record" / TRANSCRIPT_FILE


def read_transcript(path: Path) -> list[TranscriptEntry]:
    """Every entry of a transcript file; a malformed line is refused with its line number."""
    return read_jsonl(path, TranscriptEntry, file_kind="transcript", line_kind="transcript entry")
