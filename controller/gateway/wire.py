"""Messages API wire details the gateway shares: errors in the API's shape, ids, hashing, estimates.

The error hierarchy of this package is one class, ``ApiError``; it is a
``controller.errors.GatewayError`` and carries what the API would answer:
status, error type, message, and the retry hints the SDK obeys.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import secrets
import string
import time
from typing import TYPE_CHECKING, Any

from controller.errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The ``anthropic-version`` the gateway sends upstream, whatever the client sent:
#: one version means one set of validation rules and one wire format to record.
PINNED_API_VERSION = "2026-10-21"

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24

#: Error type the API uses for each status, for upstream answers that carry none.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class ApiError(GatewayError):
    """A refusal or failure, answered to the client exactly as the Messages API answers one."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        should_retry: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.should_retry = should_retry
        self.retry_after = retry_after

    @classmethod
    def invalid_request(cls, message: str) -> ApiError:
        """400 ``invalid_request_error``: the request itself is wrong; retrying cannot help."""
        return cls(400, "invalid_request_error", message)

    @classmethod
    def final(cls, status: int, message: str, error_type: str | None = None) -> ApiError:
        """An error the client must not retry (``x-should-retry: false``), whatever its status."""
        return cls(status, error_type or error_type_for(status), message, should_retry=False)

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body: ``{"type":"error","error":{"type","message"},"request_id"}``."""
        return {
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
            "request_id": request_id,
        }

    def headers(self) -> dict[str, str]:
        """Retry hints for the SDK; it obeys ``x-should-retry`` before its own status rules."""
        headers: dict[str, str] = {}
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        if self.retry_after is not None:
            headers["retry-after"] = str(max(0, math.ceil(self.retry_after)))
        return headers


def error_type_for(status: int) -> str:
    """The API's error type for a status code (``api_error`` for any other 5xx)."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"  # noqa: PLR2004 - HTTP class boundary


def new_id(prefix: str) -> str:
    """A random id in the API's style, e.g. ``req_0b1C...``."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def derived_id(prefix: str, seed: str) -> str:
    """A deterministic id in the API's style: the same seed always gives the same id."""
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    chars = []
    for _ in range(_ID_LENGTH):
        digest, index = divmod(digest, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[index])
    return prefix + "".join(chars)


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: equal values always give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(value: Any) -> str:
    """sha256 of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def estimate_tokens(value: Any) -> int:
    """A deterministic token estimate: one token per four characters of canonical JSON, at least 1."""
    return max(1, math.ceil(len(canonical_json(value).decode()) / 4))


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Estimated input tokens of a Messages request: what the model reads (system, tools, messages)."""
    return estimate_tokens({key: body.get(key) for key in ("system", "tools", "messages")})


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for, from ``retry-after-ms``, then ``retry-after`` (seconds or a date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(parsed)) - time.time())
