"""Per-request plumbing as plain ASGI: a request id, a body-size cap, one access log line, a token gate.

Plain ASGI rather than ``BaseHTTPMiddleware`` so streaming responses (SSE)
pass through untouched.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from controller.api.errors import RequestTooLargeError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from controller.api.auth import TokenRegistry

logger = logging.getLogger("controller.api.access")

#: An incoming X-Request-ID is kept only when it is this tame; otherwise a new one is made.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-ID``), caps its body, and logs it once."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        """Wrap ``app``; bodies over ``max_body_bytes`` get 413 ``request_too_large``."""
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # what the log says if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                raw.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": raw}
            await send(message)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > self.max_body_bytes:
                status = 413
                await _send_too_large(send, request_id, self.max_body_bytes)
                return
            await self.app(scope, self._capped(receive), send_with_id)
        finally:
            logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )

    def _capped(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTP exceptions from body reading; the handler answers 413.
                    raise RequestTooLargeError(limit)
            return message

        return receive_capped


class BearerGate:
    """Refuses a request without a valid bearer token before anything reads its body.

    FastAPI parses a body before it runs dependencies, so without this gate a
    caller with no token could still learn from 400/422 answers what the API
    accepts. The route dependency authenticates again to get the caller's
    principal; the gate only says no early.
    """

    def __init__(
        self, app: ASGIApp, *, tokens: TokenRegistry, public_paths: frozenset[str]
    ) -> None:
        """Wrap ``app``; ``public_paths`` (health probes) pass without a token."""
        self.app = app
        self.tokens = tokens
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token and self.tokens.authenticate(token) is not None:
            await self.app(scope, receive, send)
            return
        request_id = str(scope.get("state", {}).get("request_id", ""))
        message = (
            "send 'Authorization: Bearer <token>'" if not token else "the bearer token is not valid"
        )
        await _send_error(
            send,
            status=401,
            code="unauthenticated",
            message=message,
            request_id=request_id,
            extra_headers=[(b"www-authenticate", b"Bearer")],
        )


async def _send_too_large(send: Send, request_id: str, limit: int) -> None:
    await _send_error(
        send,
        status=413,
        code="request_too_large",
        message=f"the request body is over {limit} bytes",
        request_id=request_id,
        extra_headers=[(b"connection", b"close")],
    )


async def _send_error(
    send: Send,
    *,
    status: int,
    code: str,
    message: str,
    request_id: str,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Answer with the JSON error shape straight from ASGI (before FastAPI is involved)."""
    body = json.dumps(
        {"error": {"code": code, "message": message, "requestId": request_id or None}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *extra_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
