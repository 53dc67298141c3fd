"""Metering and budget of one run: what the model was asked and what it cost, against the policy.

Tokens are charged from the ``usage`` the upstream reports (for a stream, from
``message_start`` and the cumulative ``message_delta``). The budget counts all
input the model read, cached or not, plus output: cache reads are cheaper in
money but not in the volume of work the policy bounds. A request is admitted
while the budget is not spent, so a run can overshoot its token budget by at
most the answers already in flight. Every call that reaches the upstream is
admitted here, ``count_tokens`` as much as ``/v1/messages``; and the budget can
be closed early (the transcript reached its cap), after which nothing is admitted.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from controller.gateway.wire import ApiError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from controller.policy.schema import ModelBudget


class GatewayUsage(BaseModel):
    """What a run used of the model, as the controller reads it after the run."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    requests: int = 0
    """Requests admitted and sent to the upstream, ``/v1/messages`` and ``count_tokens`` alike; what ``max_requests`` bounds."""
    count_tokens_requests: int = 0
    """Of ``requests``, those to ``/v1/messages/count_tokens``."""
    upstream_http_requests: int = 0
    """HTTP requests the ``anthropic`` upstream sent with the key, its own retries included (0 for scripted and replay)."""
    refused_requests: int = 0
    """Authenticated requests refused by validation, policy or budget."""
    exhausted_by: str | None = None
    """What closed the budget before its counts ran out, if anything did (``transcript``: it reached its cap)."""
    input_tokens: int = 0
    """Uncached input tokens."""
    output_tokens: int = 0
    """Output tokens."""
    cache_creation_input_tokens: int = 0
    """Input tokens written to the prompt cache."""
    cache_read_input_tokens: int = 0
    """Input tokens read from the prompt cache."""

    @property
    def total_tokens(self) -> int:
        """All input (cached or not) plus output: what ``max_total_tokens`` bounds."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    @property
    def message_requests(self) -> int:
        """``/v1/messages`` requests admitted: the run's model turns."""
        return self.requests - self.count_tokens_requests


class UsageMeter:
    """Counts a run's usage and admits requests while its budget lasts; safe across threads."""

    def __init__(self, budget: ModelBudget) -> None:
        self._budget = budget
        self._usage = GatewayUsage()
        self._lock = threading.Lock()

    def snapshot(self) -> GatewayUsage:
        """The usage so far."""
        with self._lock:
            return self._usage

    def admit(self, kind: Literal["messages", "count_tokens"] = "messages") -> int | None:
        """Count one more upstream call; return its turn (from 1) for a message, ``None`` for a count.

        Raises 429 (not retryable) when the budget is spent or closed.
        """
        with self._lock:
            usage = self._usage
            if usage.exhausted_by == "transcript":
                raise ApiError.final(
                    429,
                    "run budget exhausted: the run's model transcript reached its size cap "
                    f"({self._budget.max_transcript_bytes} bytes, policy "
                    "model.max_transcript_bytes); this run cannot ask again",
                )
            if usage.requests >= self._budget.max_requests:
                raise ApiError.final(
                    429,
                    f"run budget exhausted: {usage.requests} of {self._budget.max_requests} "
                    "model requests used (policy model.max_requests); this run cannot ask again",
                )
            if usage.total_tokens >= self._budget.max_total_tokens:
                raise ApiError.final(
                    429,
                    f"run budget exhausted: {usage.total_tokens} of "
                    f"{self._budget.max_total_tokens} tokens used (policy model.max_total_tokens); "
                    "this run cannot ask again",
                )
            counts = usage.count_tokens_requests + (kind == "count_tokens")
            self._usage = usage.model_copy(
                update={"requests": usage.requests + 1, "count_tokens_requests": counts}
            )
            return self._usage.message_requests if kind == "messages" else None

    def exhaust(self, cause: Literal["transcript"]) -> None:
        """Close the budget: every later ``admit`` is refused, naming ``cause``."""
        with self._lock:
            self._usage = self._usage.model_copy(update={"exhausted_by": cause})

    def refuse(self) -> None:
        """Count an authenticated request that was refused before reaching the upstream."""
        with self._lock:
            self._usage = self._usage.model_copy(
                update={"refused_requests": self._usage.refused_requests + 1}
            )

    def charge(self, usage: Mapping[str, Any] | None) -> None:
        """Add one answer's ``usage``; missing or malformed counts add nothing."""
        if not usage:
            return
        update: dict[str, int] = {}
        with self._lock:
            for key in (
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ):
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    update[key] = getattr(self._usage, key) + value
            self._usage = self._usage.model_copy(update=update)
