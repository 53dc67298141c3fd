"""A task's events as server-sent events, read from the store so that a resumed stream misses nothing.

Each SSE event's ``id`` is the event's sequence number; a client that comes
back with ``Last-Event-ID: N`` gets every event after N. The stream ends after
the task's final event. Stores are read in a worker thread; between reads the
stream sleeps until the service says the task changed (or a few seconds pass).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent

from controller.api.models import EventView

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from controller.api.redact import HostPathRedactor
    from controller.service import TaskService
    from controller.store import EventRecord

#: How long a stream sleeps without news before it looks at the store again anyway.
RECHECK_SECONDS = 5.0
#: What a client's EventSource should wait before reconnecting, in milliseconds.
RETRY_MILLISECONDS = 2000


class EventStreamResponse(EventSourceResponse):
    """sse-starlette's response with its media type on the class, where OpenAPI looks for it."""

    media_type = "text/event-stream"


def event_view(event: EventRecord, redactor: HostPathRedactor) -> EventView:
    """The API form of a stored event, host paths redacted."""
    data = redactor.redact(event.data)
    return EventView(
        seq=event.seq,
        stage=event.stage,
        message=redactor.redact_text(event.message),
        data=data if isinstance(data, dict) else {},
        created_at=event.created_at,
    )


async def task_event_stream(
    service: TaskService, task_id: str, after: int, redactor: HostPathRedactor
) -> AsyncIterator[ServerSentEvent]:
    """Every event of ``task_id`` after ``after``, live, until the final one has been sent."""
    with service.changes.watch(task_id) as changed:
        retry: int | None = RETRY_MILLISECONDS
        while True:
            # Clear before reading: a change that lands during the read sets it again.
            changed.clear()
            events, complete = await anyio.to_thread.run_sync(service.events_after, task_id, after)
            for event in events:
                yield ServerSentEvent(
                    data=event_view(event, redactor).model_dump_json(by_alias=True),
                    id=str(event.seq),
                    event=event.stage,
                    retry=retry,
                )
                retry = None
                after = event.seq
            if complete:
                return
            if events:
                continue  # a long backlog comes in batches
            with anyio.move_on_after(RECHECK_SECONDS):
                await changed.wait()
