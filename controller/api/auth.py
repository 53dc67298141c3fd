"""Bearer tokens: who is calling and which repositories they may use.

Tokens come from the settings only. A presented token is compared with every
configured one through sha256 digests and ``hmac.compare_digest``, without
stopping at the first match, so timing tells nothing about which token (or
which prefix) is close. A principal is named by a digest prefix of its token,
never by the token itself, in the store and in logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ALL_REPOSITORIES = "*"
#: Longest cookie value decoded (a token's base64url form); longer is refused unread.
MAX_COOKIE_CHARS = 4096


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a stable id (not the token) and the repositories it may use."""

    id: str
    repositories: frozenset[str] | None
    """``None`` means every repository (``*`` in the settings)."""

    def may_use(self, repository: str) -> bool:
        """True when this caller may submit to and read tasks of ``repository``."""
        return self.repositories is None or repository in self.repositories

    def visible(self) -> Sequence[str] | None:
        """The repositories to filter lists by; ``None`` for all."""
        return None if self.repositories is None else sorted(self.repositories)


class TokenRegistry:
    """The configured tokens, held as digests, each with its repository allow-list."""

    def __init__(self, tokens: Mapping[str, Sequence[str]]) -> None:
        """``tokens`` maps each token to repository names (``*`` for all), as Settings parses them."""
        self._entries: list[tuple[bytes, Principal]] = []
        for token, repositories in tokens.items():
            digest = _digest(token)
            allowed = None if ALL_REPOSITORIES in repositories else frozenset(repositories)
            self._entries.append((digest, Principal(id=digest.hex()[:16], repositories=allowed)))

    def __len__(self) -> int:
        """How many tokens are configured."""
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or ``None``; takes the same time whichever token matches."""
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


def encode_cookie_token(token: str) -> str:
    """The web view's cookie value for ``token``: base64url, so any token is a valid cookie value."""
    return base64.urlsafe_b64encode(token.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def decode_cookie_token(value: str) -> str | None:
    """The token a web view cookie holds, or ``None`` when it is not one :func:`encode_cookie_token` made."""
    if not value or len(value) > MAX_COOKIE_CHARS:
        return None
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
        return raw.decode("utf-8", "surrogatepass") or None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
