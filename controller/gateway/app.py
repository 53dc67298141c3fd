"""The model gateway's HTTP surface: the Messages API, gated by a run's token, policy and budget.

Order of checks on ``POST /v1/messages``: token (401), body size (413) and JSON
(400), request validation (400, 403 for provider-side tools), model allowlist
(403), budget (429, not retryable); then ``max_tokens`` is lowered to the cap
and the upstream answers. Every authenticated exchange goes to the transcript.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.errors import GatewayError
from controller.gateway.metering import GatewayUsage, UsageMeter
from controller.gateway.sse import MessageAssembler, SseEvent, error_event, message_to_events
from controller.gateway.transcript import (
    ExchangeMeta,
    RecordedFrame,
    RecordedRequest,
    TranscriptEntry,
    TranscriptWriter,
)
from controller.gateway.upstreams.base import MessageReply, StreamReply, UpstreamCall
from controller.gateway.validation import check_count_tokens_request, check_messages_request
from controller.gateway.wire import MAX_BODY_BYTES, ApiError, error_type_for, new_id
from controller.settings import MIN_TOKEN_LENGTH

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterable
    from pathlib import Path

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from controller.gateway.upstreams.base import Upstream, UpstreamReply
    from controller.policy.schema import ModelBudget

logger = logging.getLogger(__name__)

_REQUEST_ID_KEY = "taskbox.request_id"
_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"
_INTERNAL_ERROR = "internal gateway error"


class _RequestIdMiddleware:
    """Gives every request an id and every response (errors and 404s too) a ``request-id`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = new_id("req_")
        scope[_REQUEST_ID_KEY] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["request-id"] = request_id
            await send(message)

        await self._app(scope, receive, send_with_id)


def _request_id(request: Request) -> str:
    value = request.scope.get(_REQUEST_ID_KEY)
    return value if isinstance(value, str) else new_id("req_")


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(_request_id(request)), error.status, headers=error.headers())


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


@dataclass
class _Exchange:
    """What the gateway knows of one exchange while it answers it."""

    request_id: str
    request: RecordedRequest
    started_at: datetime = field(default_factory=_now)
    turn: int | None = None
    sent_max_tokens: int | None = None
    upstream_request_id: str | None = None


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
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise GatewayError(f"a run token must be at least {MIN_TOKEN_LENGTH} characters")
        self._upstream = upstream
        self._budget = budget
        self._token = token.encode()
        self._max_body_bytes = max_body_bytes
        self._meter = UsageMeter(budget)
        self._transcript = TranscriptWriter(transcript) if transcript is not None else None
        self._seq = 0
        self._app = _RequestIdMiddleware(self._build_app())

    @property
    def app(self) -> ASGIApp:
        """The ASGI application."""
        return self._app

    @property
    def usage(self) -> GatewayUsage:
        """What the run has used so far."""
        return self._meter.snapshot()

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

    async def _read_json(self, request: Request) -> dict[str, Any]:
        too_large = ApiError(
            413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body_bytes:
            raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self._max_body_bytes:
                raise too_large
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            raise ApiError.invalid_request("There was an error parsing the body as JSON") from None
        if not isinstance(body, dict):
            raise ApiError.invalid_request("body: Input should be a valid dictionary or object")
        return body

    # --- routes -----------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except ApiError as error:
            logger.warning("refused an unauthenticated %s request", _MESSAGES)
            return _error_response(request, error)
        betas = _betas(request)
        exchange = _Exchange(
            _request_id(request), RecordedRequest(path=_MESSAGES, anthropic_beta=betas, body=None)
        )
        try:
            body = await self._read_json(request)
            exchange.request = RecordedRequest(path=_MESSAGES, anthropic_beta=betas, body=body)
            facts = check_messages_request(body)
            self._check_model(facts.model)
            exchange.turn = self._meter.admit()
        except ApiError as error:
            self._meter.refuse()
            return self._answer_error(exchange, error)
        assert facts.max_tokens is not None  # noqa: S101 - check_messages_request requires it
        exchange.sent_max_tokens = min(facts.max_tokens, self._budget.max_tokens_per_request)
        call = UpstreamCall(
            turn=exchange.turn,
            body={**body, "max_tokens": exchange.sent_max_tokens},
            request_sha256=exchange.request.sha256(),
            stream=facts.stream,
            anthropic_beta=tuple(betas),
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
        except Exception:
            logger.exception("turn %s: the upstream %s failed", exchange.turn, self._upstream.name)
            return self._answer_error(exchange, ApiError.final(500, _INTERNAL_ERROR, "api_error"))
        self._meter.charge(message.get("usage"))
        self._record(exchange, 200, response=message)
        return JSONResponse(message)

    async def _count_tokens(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except ApiError as error:
            logger.warning("refused an unauthenticated %s request", _COUNT_TOKENS)
            return _error_response(request, error)
        betas = _betas(request)
        exchange = _Exchange(
            _request_id(request),
            RecordedRequest(path=_COUNT_TOKENS, anthropic_beta=betas, body=None),
        )
        try:
            body = await self._read_json(request)
            exchange.request = RecordedRequest(path=_COUNT_TOKENS, anthropic_beta=betas, body=body)
            facts = check_count_tokens_request(body)
            self._check_model(facts.model)
        except ApiError as error:
            self._meter.refuse()
            return self._answer_error(exchange, error)
        try:
            count = await self._upstream.count_tokens(
                body, request_sha256=exchange.request.sha256(), anthropic_beta=tuple(betas)
            )
        except ApiError as error:
            return self._answer_error(exchange, error)
        except Exception:
            logger.exception("count_tokens: the upstream %s failed", self._upstream.name)
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
        logger.error("unexpected gateway failure: %s", type(exc).__name__, exc_info=exc)
        return _error_response(request, ApiError.final(500, _INTERNAL_ERROR, "api_error"))

    # --- answers ----------------------------------------------------------

    def _answer_error(self, exchange: _Exchange, error: ApiError) -> JSONResponse:
        body = error.body(exchange.request_id)
        self._record(exchange, error.status, response=body, headers=error.headers())
        logger.info(
            "%s turn %s: %d %s: %s",
            exchange.request.path,
            exchange.turn,
            error.status,
            error.error_type,
            error.message,
        )
        return JSONResponse(body, error.status, headers=error.headers())

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
                logger.warning(
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
    ) -> None:
        seq, self._seq = self._seq, self._seq + 1
        if self._transcript is None:
            return
        entry = TranscriptEntry(
            seq=seq,
            turn=exchange.turn,
            request=exchange.request,
            request_sha256=exchange.request.sha256(),
            status=status,
            response_headers=headers or {},
            response=response,
            frames=None
            if frames is None
            else [RecordedFrame(event=f.event, data=f.data) for f in frames],
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
