"""The ``anthropic`` upstream: the real Messages API, reached with the controller's own key.

The key and the pinned ``anthropic-version`` are added here and nowhere else.
Upstream 408/429/5xx/529 answers and connection failures are retried in one
place (``_send``), honouring ``retry-after-ms``/``retry-after`` up to a cap; what
is still an error after that reaches the client with ``x-should-retry: false``,
so the SDK does not multiply the attempts. Streams pass through event by event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import httpx2
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)

from controller.gateway.sse import SseEvent, parse_sse
from controller.gateway.upstreams.base import MessageReply, StreamReply, UpstreamCall
from controller.gateway.wire import (
    PINNED_API_VERSION,
    ApiError,
    error_type_for,
    retry_after_seconds,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from pydantic import SecretStr

logger = logging.getLogger(__name__)

#: Statuses worth another attempt: timeouts, rate limits, server errors, overload (529).
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504, 529})


def _retryable(response: httpx2.Response) -> bool:
    hint = response.headers.get("x-should-retry")
    if hint is not None:
        return hint == "true"
    return response.status_code in _RETRYABLE


def _last_outcome(state: RetryCallState) -> httpx2.Response:
    """After the last attempt: its response, or its exception re-raised."""
    assert state.outcome is not None  # noqa: S101 - tenacity sets it before calling back
    response: httpx2.Response = state.outcome.result()
    return response


class AnthropicUpstream:
    """The Messages API at ``base_url``, authenticated with the controller's key."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr,
        max_attempts: int = 4,
        retry_after_cap: float = 30.0,
        timeout: float = 600.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._api_key = api_key
        self._max_attempts = max_attempts
        self._retry_after_cap = retry_after_cap
        self._sleep = sleep
        self._http_requests = 0
        self._backoff = wait_exponential_jitter(multiplier=0.5, max=8, jitter=0.5)
        self._client = httpx2.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx2.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    @property
    def name(self) -> str:
        """``anthropic``."""
        return "anthropic"

    @property
    def http_requests(self) -> int:
        """HTTP requests sent to the API with the key so far, retries included."""
        return self._http_requests

    def _headers(self, anthropic_beta: tuple[str, ...], *, stream: bool) -> dict[str, str]:
        headers = {
            "x-api-key": self._api_key.get_secret_value(),
            "anthropic-version": PINNED_API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        if anthropic_beta:
            headers["anthropic-beta"] = ",".join(anthropic_beta)
        return headers

    async def create_message(self, call: UpstreamCall) -> MessageReply | StreamReply:
        """Forward one turn; a stream is returned open and passed through event by event."""
        response = await self._send(
            "/v1/messages",
            call.body,
            self._headers(call.anthropic_beta, stream=call.stream),
            stream=call.stream,
        )
        upstream_id = response.headers.get("request-id")
        if call.stream:
            return StreamReply(self._events(response), upstream_id)
        return MessageReply(_json_object(response), upstream_id)

    async def count_tokens(
        self,
        body: dict[str, Any],
        *,
        request_sha256: str,  # noqa: ARG002 - part of the Upstream interface
        anthropic_beta: tuple[str, ...] = (),
    ) -> int:
        """The upstream's own count."""
        response = await self._send(
            "/v1/messages/count_tokens",
            body,
            self._headers(anthropic_beta, stream=False),
            stream=False,
        )
        count = _json_object(response).get("input_tokens")
        if not isinstance(count, int):
            raise ApiError.final(
                502, "upstream count_tokens answer has no input_tokens", "api_error"
            )
        return count

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _wait(self, state: RetryCallState) -> float:
        """The upstream's hint when it gave one, else exponential backoff; never above the cap."""
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            hinted = retry_after_seconds(outcome.result().headers)
            if hinted is not None:
                return min(hinted, self._retry_after_cap)
        return min(self._backoff(state), self._retry_after_cap)

    async def _send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], *, stream: bool
    ) -> httpx2.Response:
        """POST with retries; the one place upstream calls are retried. Errors raise ``ApiError``."""
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(httpx2.TransportError) | retry_if_result(_retryable),
            retry_error_callback=_last_outcome,
            before_sleep=_log_retry,
            sleep=self._sleep,
        )
        try:
            response: httpx2.Response = await retrying(
                self._attempt, path, payload, headers, stream=stream
            )
        except httpx2.TransportError as exc:
            logger.warning("upstream %s unreachable: %s", path, type(exc).__name__)
            raise ApiError.final(
                502, f"the model upstream is unreachable ({type(exc).__name__})", "api_error"
            ) from None
        if response.status_code != 200:  # noqa: PLR2004 - HTTP OK
            raise _upstream_error(response)
        return response

    async def _attempt(
        self, path: str, payload: bytes, headers: dict[str, str], *, stream: bool
    ) -> httpx2.Response:
        request = self._client.build_request("POST", path, content=payload, headers=headers)
        self._http_requests += 1  # counted before it goes: a failed send may still have arrived
        response = await self._client.send(request, stream=True)
        # Only a successful stream stays open; everything else is read whole so it can be inspected.
        if response.status_code != 200 or not stream:  # noqa: PLR2004 - HTTP OK
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def _events(self, response: httpx2.Response) -> AsyncGenerator[SseEvent, None]:
        try:
            async for event in parse_sse(response.aiter_lines()):
                yield event
        finally:
            await response.aclose()


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    if outcome is None:
        return
    reason = (
        type(outcome.exception()).__name__
        if outcome.failed
        else f"HTTP {outcome.result().status_code}"
    )
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning(
        "upstream attempt %d failed (%s); retrying in %.2f s", state.attempt_number, reason, wait
    )


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ApiError.final(
            502, "the model upstream answered with a body that is not JSON", "api_error"
        )
    return data


def _upstream_error(response: httpx2.Response) -> ApiError:
    """The client's view of an upstream error; the gateway already retried what was worth it."""
    status = response.status_code
    upstream_id = response.headers.get("request-id")
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    error_type = str(error.get("type") or error_type_for(status))
    message = str(error.get("message") or f"upstream answered HTTP {status}")
    logger.warning("upstream error %d %s (upstream request-id %s)", status, error_type, upstream_id)
    if status == 401:  # noqa: PLR2004 - HTTP Unauthorized
        # The controller's key was refused: the sandbox's token is fine, so do not say
        # authentication_error to it; the operator has to fix the key.
        return ApiError.final(
            500,
            "the gateway's upstream credential was refused; the operator must fix it",
            "api_error",
        )
    return ApiError.final(status if 400 <= status <= 599 else 502, message, error_type)  # noqa: PLR2004
