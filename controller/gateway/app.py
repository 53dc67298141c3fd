"""The model gateway's HTTP surface: the Messages API, gated by a run's token, policy and budget.

Order of checks on ``POST /v1/messages`` and ``/v1/messages/count_tokens``:
token (401, not recorded); a free slot of the run's requests in flight (429,
retryable); body size read against the policy's cap (413, before any parsing);
headers and betas (400); JSON (400) without lone surrogates (400); request
validation against the allowlist (400, 403 for provider-side tools); model
allowlist (403); room in the transcript and the budget (429, not retryable).
Only then is the call admitted: counted against the budget (``count_tokens``
too), ``max_tokens`` lowered to the cap, and sent to the upstream. Every
authenticated exchange goes to the transcript; one refused before admission
is recorded as size, sha256 and reason, never its body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from controller.errors import GatewayError
from controller.gateway.limits import LogBucket, RateLimitedLogger, Slots
from controller.gateway.metering import GatewayUsage, UsageMeter
from controller.gateway.sse import MessageAssembler, SseEvent, error_event, message_to_events
from controller.gateway.transcript import (
    ExchangeMeta,
    RecordedFrame,
    RecordedRequest,
    Refusal,
    TranscriptEntry,
    TranscriptWriter,
)
from controller.gateway.upstreams.base import MessageReply, StreamReply, UpstreamCall
from controller.gateway.validation import (
    RequestFacts,
    check_count_tokens_request,
    check_headers,
    check_messages_request,
)
from controller.gateway.wire import ApiError, error_type_for, new_id
from controller.settings import MIN_TOKEN_LENGTH

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterable
    from pathlib import Path

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from controller.gateway.serve import ConnectionGuard
    from controller.gateway.upstreams.base import Upstream, UpstreamReply
    from controller.policy.schema import ModelBudget

logger = logging.getLogger(__name__)

_REQUEST_ID_KEY = "taskbox.request_id"
_SLOT_KEY = "taskbox.slot"
_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"
_INTERNAL_ERROR = "internal gateway error"
#: Digits a Content-Length may have before it is simply "too large" (int() of a huge string is slow).
_MAX_LENGTH_DIGITS = 18


class _GatewayMiddleware:
    """Gives every request an id and a ``request-id`` header, and takes a slot of the run's requests in flight.

    The slot is held until the whole answer is sent (a stream included) or the
    client goes away; a request that finds none free is refused by its route.
    """

    def __init__(self, app: ASGIApp, slots: Slots) -> None:
        self._app = app
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = new_id("req_")
        scope[_REQUEST_ID_KEY] = request_id
        taken = self._slots.try_take()
        scope[_SLOT_KEY] = taken

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["request-id"] = request_id
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            if taken:
                self._slots.give_back()


def _request_id(request: Request) -> str:
    value = request.scope.get(_REQUEST_ID_KEY)
    return value if isinstance(value, str) else new_id("req_")


def _error_response(request: Request, error: ApiError, *, close: bool = False) -> JSONResponse:
    headers = error.headers()
    if close:  # the body was not read: the connection cannot carry another request
        headers["connection"] = "close"
    return JSONResponse(error.body(_request_id(request)), error.status, headers=headers)


def _betas(request: Request) -> list[str]:
    return [
        flag.strip()
        for header in request.headers.getlist("anthropic-beta")
        for flag in header.split(",")
        if flag.strip()
    ]


async def _iterate(events: Iterable[SseEvent]) -> AsyncGenerator[SseEvent, None]:
    for event in events:
        yield event


async def _assemble(events: AsyncGenerator[SseEvent, None]) -> dict[str, Any]:
    """A whole message from a stream, for a client that did not ask to stream."""
    assembler = MessageAssembler()
    try:
        async for event in events:
            assembler.feed(event)
    finally:
        await events.aclose()
    if assembler.error is not None:
        error = assembler.error.get("error") or {}
        raise ApiError.final(
            500, str(error.get("message", "upstream error")), str(error.get("type", "api_error"))
        )
    if assembler.message is None or not assembler.stopped:
        raise ApiError.final(500, "the model upstream's answer ended early", "api_error")
    return assembler.message


def _now() -> datetime:
    return datetime.now(UTC)


def _reject_constant(name: str) -> None:
    raise ValueError(name)  # NaN and Infinity are not JSON; json.dumps would send them on as is


def _parse(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise ApiError.invalid_request("There was an error parsing the body as JSON") from None
    if not isinstance(body, dict):
        raise ApiError.invalid_request("body: Input should be a valid dictionary or object")
    return body


@dataclass
class _Received:
    """What arrived of a request body: its size and sha256, and whether it all arrived."""

    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    complete: bool = False
    declared: int | None = None

    def refusal(self, reason: str) -> Refusal:
        return Refusal(
            reason=reason,
            body_bytes=self.size,
            body_sha256=self.digest.hexdigest() if self.size or self.complete else None,
            body_complete=self.complete,
            declared_bytes=self.declared,
        )


@dataclass
class _Exchange:
    """What the gateway knows of one exchange while it answers it."""

    request_id: str
    request: RecordedRequest
    started_at: datetime = field(default_factory=_now)
    turn: int | None = None
    sent_max_tokens: int | None = None
    upstream_request_id: str | None = None
    admitted: bool = False
    request_sha256: str | None = None
    received: _Received = field(default_factory=_Received)


class ModelGateway:
    """The Messages API for one run: one token, one budget, one upstream, one transcript.

    ``app`` is the ASGI application; serve it with ``serve_gateway`` or
    ``GatewayThread``. ``usage`` is readable at any time, also after the run.
    """

    def __init__(
        self,
        upstream: Upstream,
        budget: ModelBudget,
        token: str,
        transcript: Path | None = None,
        *,
        max_body_bytes: int | None = None,
    ) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise GatewayError(f"a run token must be at least {MIN_TOKEN_LENGTH} characters")
        self._upstream = upstream
        self._budget = budget
        self._token = token.encode()
        self._max_body_bytes = max_body_bytes or budget.max_body_bytes
        self._meter = UsageMeter(budget)
        self._transcript = (
            TranscriptWriter(transcript, budget.max_transcript_bytes)
            if transcript is not None
            else None
        )
        self._seq = 0
        self.log_bucket = LogBucket()
        """The gateway's budget of log lines; its server's connection logs draw on it too."""
        self._log = RateLimitedLogger(logger, self.log_bucket)
        self.slots = Slots(budget.max_requests_in_flight)
        """The run's requests in flight."""
        self.connections: ConnectionGuard | None = None
        """The connection bounds of the server that serves this gateway (set by ``serve_gateway``)."""
        self._app = _GatewayMiddleware(self._build_app(), self.slots)

    @property
    def app(self) -> ASGIApp:
        """The ASGI application."""
        return self._app

    @property
    def usage(self) -> GatewayUsage:
        """What the run has used so far."""
        return self._meter.snapshot().model_copy(
            update={"upstream_http_requests": self._upstream.http_requests}
        )

    @property
    def budget(self) -> ModelBudget:
        """The run's model budget and gateway limits."""
        return self._budget

    @property
    def upstream(self) -> Upstream:
        """The upstream that answers."""
        return self._upstream

    @property
    def transcript(self) -> Path | None:
        """The transcript file, if the gateway records."""
        return self._transcript.path if self._transcript else None

    async def aclose(self) -> None:
        """Release the upstream's connections."""
        await self._upstream.aclose()

    def _build_app(self) -> FastAPI:
        # No docs or OpenAPI routes: the sandbox gets exactly the API surface it needs.
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.add_api_route(_MESSAGES, self._messages, methods=["POST"])
        app.add_api_route(_COUNT_TOKENS, self._count_tokens, methods=["POST"])
        app.add_api_route("/v1/models", self._list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model_id:path}", self._get_model, methods=["GET"])
        app.add_exception_handler(StarletteHTTPException, self._http_exception)
        app.add_exception_handler(Exception, self._unexpected_exception)
        return app

    # --- checks -----------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        presented = request.headers.get("x-api-key")
        if presented is None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            presented = value.strip() if scheme.lower() == "bearer" else None
        if not presented:
            raise ApiError(
                401, "authentication_error", "x-api-key or Authorization: Bearer header is required"
            )
        if not hmac.compare_digest(presented.encode(), self._token):
            raise ApiError(401, "authentication_error", "invalid x-api-key")

    def _check_model(self, model: str) -> None:
        # 403 rather than the API's 404 for unknown models: the id may well exist, but
        # this run's policy does not allow it, and the runner must not try another id.
        if model not in self._budget.allowed_models:
            raise ApiError(
                403,
                "permission_error",
                f"model: {model} is not allowed by this run's policy "
                f"(allowed: {', '.join(self._budget.allowed_models)})",
            )

    async def _read_body(self, request: Request, received: _Received) -> bytearray:
        """The body, read chunk by chunk and refused (413) the moment it passes the policy's cap."""
        cap = self._max_body_bytes
        too_large = ApiError(
            413,
            "request_too_large",
            f"Request exceeds the maximum allowed number of bytes ({cap}, policy "
            "model.max_body_bytes).",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit():
            received.declared = int(declared) if len(declared) <= _MAX_LENGTH_DIGITS else cap + 1
            if received.declared > cap:
                raise too_large
        raw = bytearray()
        try:
            async for chunk in request.stream():
                received.size += len(chunk)
                received.digest.update(chunk)
                if received.size > cap:
                    raise too_large
                raw += chunk
        except ClientDisconnect:  # e.g. closed by the idle timeout halfway through the body
            raise ApiError.invalid_request("the connection closed before the body ended") from None
        received.complete = True
        return raw

    async def _admissible(
        self, request: Request, exchange: _Exchange, kind: Literal["messages", "count_tokens"]
    ) -> tuple[dict[str, Any], RequestFacts]:
        """Every check before admission, in order; raises the ``ApiError`` of the first that fails."""
        if not request.scope.get(_SLOT_KEY):
            raise ApiError(
                429,
                "rate_limit_error",
                f"too many requests in flight for this run (at most "
                f"{self._budget.max_requests_in_flight}, policy model.max_requests_in_flight); "
                "wait for an answer before asking again",
                should_retry=True,
                retry_after=1,
            )
        raw = await self._read_body(request, exchange.received)
        betas = _betas(request)
        check_headers(request.headers.keys(), betas, self._budget.allowed_betas)
        exchange.request.anthropic_beta = betas
        body = _parse(raw)
        del raw  # the parsed body is all that is kept
        recorded = RecordedRequest.model_construct(
            method="POST", path=exchange.request.path, anthropic_beta=betas, body=body
        )
        try:
            exchange.request_sha256 = hashlib.sha256(recorded.canonical()).hexdigest()
        except UnicodeEncodeError:
            raise ApiError.invalid_request(
                "The request body is not valid UTF-8: it holds a lone surrogate "
                "(a \\uD800-\\uDFFF escape without its pair)"
            ) from None
        facts = (check_messages_request if kind == "messages" else check_count_tokens_request)(body)
        self._check_model(facts.model)
        if self._transcript is not None and not self._transcript.room_for(exchange.received.size):
            self._exhaust_transcript()
        exchange.turn = self._meter.admit(kind)
        exchange.request = recorded
        exchange.admitted = True
        return body, facts

    def _exhaust_transcript(self) -> None:
        if self._meter.snapshot().exhausted_by is None:
            logger.warning(
                "the run's transcript %s reached its cap of %d bytes: the run's model budget is spent",
                self.transcript,
                self._budget.max_transcript_bytes,
            )
        self._meter.exhaust("transcript")

    # --- routes -----------------------------------------------------------

    def _start(self, request: Request, path: str) -> _Exchange | Response:
        """Authenticate; the exchange to answer, or the 401 (never recorded: it is not the run's)."""
        try:
            self._authenticate(request)
        except ApiError as error:
            self._log.warning("refused an unauthenticated %s request", path)
            return _error_response(request, error, close=True)
        return _Exchange(_request_id(request), RecordedRequest(path=path, body=None))

    async def _messages(self, request: Request) -> Response:
        exchange = self._start(request, _MESSAGES)
        if not isinstance(exchange, _Exchange):
            return exchange
        try:
            body, facts = await self._admissible(request, exchange, "messages")
        except ApiError as error:
            self._meter.refuse()
            return self._answer_error(exchange, error)
        assert facts.max_tokens is not None  # noqa: S101 - check_messages_request requires it
        assert exchange.turn is not None  # noqa: S101 - admit() numbers every message request
        assert exchange.request_sha256 is not None  # noqa: S101 - set before admission
        exchange.sent_max_tokens = min(facts.max_tokens, self._budget.max_tokens_per_request)
        # A shallow copy: only max_tokens changes, the content is shared, never copied.
        call = UpstreamCall(
            turn=exchange.turn,
            body={**body, "max_tokens": exchange.sent_max_tokens},
            request_sha256=exchange.request_sha256,
            stream=facts.stream,
            anthropic_beta=tuple(exchange.request.anthropic_beta),
        )
        try:
            reply = await self._upstream.create_message(call)
            exchange.upstream_request_id = reply.upstream_request_id
            if facts.stream:
                return self._stream(exchange, reply)
            message = (
                reply.message if isinstance(reply, MessageReply) else await _assemble(reply.events)
            )
        except ApiError as error:
            return self._answer_error(exchange, error)
        except Exception:  # noqa: BLE001 - logged with its trace (rate-limited), answered 500
            self._log.exception(
                "turn %s: the upstream %s failed", exchange.turn, self._upstream.name
            )
            return self._answer_error(exchange, ApiError.final(500, _INTERNAL_ERROR, "api_error"))
        self._meter.charge(message.get("usage"))
        self._record(exchange, 200, response=message)
        return JSONResponse(message)

    async def _count_tokens(self, request: Request) -> Response:
        exchange = self._start(request, _COUNT_TOKENS)
        if not isinstance(exchange, _Exchange):
            return exchange
        try:
            body, _ = await self._admissible(request, exchange, "count_tokens")
        except ApiError as error:
            self._meter.refuse()
            return self._answer_error(exchange, error)
        assert exchange.request_sha256 is not None  # noqa: S101 - set before admission
        try:
            count = await self._upstream.count_tokens(
                body,
                request_sha256=exchange.request_sha256,
                anthropic_beta=tuple(exchange.request.anthropic_beta),
            )
        except ApiError as error:
            return self._answer_error(exchange, error)
        except Exception:  # noqa: BLE001 - logged with its trace (rate-limited), answered 500
            self._log.exception("count_tokens: the upstream %s failed", self._upstream.name)
            return self._answer_error(exchange, ApiError.final(500, _INTERNAL_ERROR, "api_error"))
        answer = {"input_tokens": count}
        self._record(exchange, 200, response=answer)
        return JSONResponse(answer)

    def _model_info(self, model: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model,
            "display_name": model,
            "created_at": "1970-01-01T00:00:00Z",
            "lifecycle": "active",
            "max_tokens": self._budget.max_tokens_per_request,
        }

    async def _list_models(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except ApiError as error:
            return _error_response(request, error)
        models = list(self._budget.allowed_models)
        return JSONResponse(
            {
                "data": [self._model_info(m) for m in models],
                "has_more": False,
                "first_id": models[0],
                "last_id": models[-1],
            }
        )

    async def _get_model(self, request: Request, model_id: str) -> Response:
        try:
            self._authenticate(request)
        except ApiError as error:
            return _error_response(request, error)
        if model_id not in self._budget.allowed_models:
            return _error_response(request, ApiError(404, "not_found_error", f"model: {model_id}"))
        return JSONResponse(self._model_info(model_id))

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
        message = exc.detail if isinstance(exc, StarletteHTTPException) else _INTERNAL_ERROR
        error_type = "not_found_error" if status == 404 else error_type_for(status)  # noqa: PLR2004
        return _error_response(request, ApiError(status, error_type, str(message)))

    async def _unexpected_exception(self, request: Request, exc: Exception) -> Response:
        # Never a stack trace in a body: the details go to the controller's log only.
        self._log.error("unexpected gateway failure: %s", type(exc).__name__, exc_info=exc)
        return _error_response(request, ApiError.final(500, _INTERNAL_ERROR, "api_error"))

    # --- answers ----------------------------------------------------------

    def _answer_error(self, exchange: _Exchange, error: ApiError) -> JSONResponse:
        body = error.body(exchange.request_id)
        self._record(exchange, error.status, response=body, headers=error.headers(), error=error)
        self._log.info(
            "%s turn %s: %d %s: %s",
            exchange.request.path,
            exchange.turn,
            error.status,
            error.error_type,
            error.message,
        )
        headers = error.headers()
        if not exchange.admitted and not exchange.received.complete:
            headers["connection"] = "close"  # the body was not read to its end
        return JSONResponse(body, error.status, headers=headers)

    def _stream(self, exchange: _Exchange, reply: UpstreamReply) -> StreamingResponse:
        events = (
            reply.events
            if isinstance(reply, StreamReply)
            else _iterate(message_to_events(reply.message))
        )
        return StreamingResponse(
            self._relay(exchange, events),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def _relay(
        self, exchange: _Exchange, events: AsyncGenerator[SseEvent, None]
    ) -> AsyncIterator[bytes]:
        """Send each event on, metering and keeping it; a broken stream ends with an error event.

        The exchange is charged and recorded *before* its last event goes out, so
        the client's next request already meets the updated budget.
        """
        assembler = MessageAssembler()
        frames: list[SseEvent] = []
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                self._meter.charge(assembler.usage)
                self._record(exchange, 200, response=assembler.message, frames=frames)

        try:
            failure: SseEvent | None = None
            try:
                async for event in events:
                    assembler.feed(event)
                    frames.append(event)
                    if assembler.stopped or assembler.error is not None:
                        finish()
                    yield event.encode()
            except Exception as exc:  # noqa: BLE001 - any upstream failure ends the stream the same way
                self._log.warning(
                    "turn %s: upstream stream broke: %s", exchange.turn, type(exc).__name__
                )
                failure = error_event("api_error", "the model upstream's stream broke off")
            else:
                if not finished:
                    failure = error_event("api_error", "the model upstream's stream ended early")
            if failure is not None and not finished:
                assembler.feed(failure)
                frames.append(failure)
                finish()
                yield failure.encode()
        finally:
            finish()  # the client went away mid-stream: keep what was sent
            await events.aclose()

    def _record(
        self,
        exchange: _Exchange,
        status: int,
        *,
        response: dict[str, Any] | None,
        headers: dict[str, str] | None = None,
        frames: list[SseEvent] | None = None,
        error: ApiError | None = None,
    ) -> None:
        """Append the exchange to the transcript; one refused before admission without its body."""
        seq, self._seq = self._seq, self._seq + 1
        if self._transcript is None:
            return
        refusal = None
        if not exchange.admitted:
            reason = error.message if error is not None else "refused"
            refusal = exchange.received.refusal(reason)
            exchange.request = RecordedRequest(
                path=exchange.request.path,
                anthropic_beta=exchange.request.anthropic_beta,
                body=None,
            )
        entry = TranscriptEntry.model_construct(
            schema_version=1,
            seq=seq,
            turn=exchange.turn,
            request=exchange.request,
            request_sha256=exchange.request_sha256
            if exchange.admitted and exchange.request_sha256
            else exchange.request.sha256(),
            status=status,
            response_headers=headers or {},
            response=response,
            frames=None
            if frames is None
            else [RecordedFrame(event=f.event, data=f.data) for f in frames],
            refusal=refusal,
            meta=ExchangeMeta(
                request_id=exchange.request_id,
                upstream=self._upstream.name,
                upstream_request_id=exchange.upstream_request_id,
                started_at=exchange.started_at,
                finished_at=_now(),
                sent_max_tokens=exchange.sent_max_tokens,
            ),
        )
        self._transcript.append(entry)
        if self._transcript.full:
            self._exhaust_transcript()
