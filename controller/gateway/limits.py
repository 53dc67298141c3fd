"""Bounds of one gateway that are not about the model: requests in flight, and log lines per second.

A sandbox can open connections and send requests as fast as it likes; what
it costs the controller must stay bounded, and so must the controller's log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

#: Lines a gateway may log in a burst before the rate applies.
LOG_BURST = 20
#: Lines per second a gateway may log after its burst.
LOG_RATE = 1.0


class LogBucket:
    """A token bucket of log lines: ``burst`` at once, then ``rate`` per second; shared by a gateway's loggers."""

    def __init__(
        self,
        *,
        burst: int = LOG_BURST,
        rate: float = LOG_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()
        self.dropped = 0
        """Lines dropped so far."""
        self._dropped_since = 0

    def take(self) -> int | None:
        """A line may pass: the number of lines dropped just before it; ``None``: drop this one."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens < 1:
                self.dropped += 1
                self._dropped_since += 1
                return None
            self._tokens -= 1
            dropped, self._dropped_since = self._dropped_since, 0
            return dropped

    def drain(self) -> int:
        """Lines dropped since the last line that passed; resets the count."""
        with self._lock:
            dropped, self._dropped_since = self._dropped_since, 0
            return dropped


class RateLimitedLogger(logging.Logger):
    """A logger whose records pass only while its ``LogBucket`` allows; the rest are counted.

    It is not registered with ``logging`` (one per gateway, freed with it); its
    records go to ``parent``'s handlers under the parent's name, so the
    controller's logging configuration applies as usual. The next record that
    passes after a drop says how many were dropped.
    """

    def __init__(self, parent: logging.Logger, bucket: LogBucket) -> None:
        super().__init__(parent.name)
        self.parent = parent
        self.propagate = True
        self._bucket = bucket

    def handle(self, record: logging.LogRecord) -> None:
        """Pass the record on if the bucket allows."""
        dropped = self._bucket.take()
        if dropped is None:
            return
        if dropped:
            record.msg = f"{record.msg} [{dropped} earlier log lines of this gateway were dropped]"
        super().handle(record)


class Slots:
    """A count of requests in flight with a hard maximum: take one or be refused, never wait.

    Used from the gateway's event loop only; the lock makes it safe anyway.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Slots taken now."""
        return self._used

    def try_take(self) -> bool:
        """Take a slot if one is free."""
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def give_back(self) -> None:
        """Return a slot taken with ``try_take``."""
        with self._lock:
            self._used = max(0, self._used - 1)
