"""Signing a browser in: the token goes in once through a form and comes back as a cookie.

A browser cannot send ``Authorization: Bearer`` when a person follows a link,
and a token must never be in a URL (history, logs, ``Referer``). So the sign-in
form posts the token; the controller checks it against the same tokens, in the
same constant time, and sets a cookie holding it (base64url) that is:

- ``HttpOnly`` (no script can read it; the pages have no script anyway),
- ``SameSite=Strict`` (no other site's page or link makes the browser send it),
- ``Path=/ui`` and accepted only for GET and HEAD of the web view's pages by
  :class:`~controller.api.middleware.BearerGate` (it can never call the API),
- ``Secure`` when the request came over HTTPS, and kept for 12 hours at most.

Signing in from another site's page is refused (the ``Origin`` must be this host).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response

from controller.api.auth import Principal, decode_cookie_token, encode_cookie_token
from controller.api.deps import ContextDep  # noqa: TC001 - FastAPI resolves it at runtime
from controller.api.errors import UnauthenticatedError
from controller.api.middleware import CookieAccess

PREFIX = "/ui"
SIGN_IN_PATH = f"{PREFIX}/sign-in"
SIGN_OUT_PATH = f"{PREFIX}/sign-out"
STYLESHEET_PATH = f"{PREFIX}/static/ui.css"
COOKIE_NAME = "taskbox_ui"
#: How long a sign-in lasts (the cookie's Max-Age).
COOKIE_MAX_AGE_SECONDS = 12 * 3600

#: What the gate needs to take the cookie on the web view's pages.
COOKIE_ACCESS = CookieAccess(prefix=PREFIX, cookie_name=COOKIE_NAME, sign_in_path=SIGN_IN_PATH)
#: The web view's paths that need no token: the sign-in form, signing out, the stylesheet.
PUBLIC_PATHS = frozenset({SIGN_IN_PATH, SIGN_OUT_PATH, STYLESHEET_PATH})

#: Headers on every web view answer. No script may run and nothing may be loaded from
#: elsewhere (the stylesheet is this server's); pages are never cached, framed or sniffed.
#: Referrer ``same-origin``, not ``no-referrer``: under the latter a browser sends
#: ``Origin: null`` with the sign-in form, and the cross-site check could not tell.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


async def ui_principal(request: Request, context: ContextDep) -> Principal:
    """The person's principal, from the sign-in cookie (or a bearer header, for scripts).

    The gate has already refused a request without either; this finds whose it is.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        principal = context.tokens.authenticate(token)
        if principal is not None:
            return principal
    cookie = decode_cookie_token(request.cookies.get(COOKIE_NAME, ""))
    if cookie is not None:
        principal = context.tokens.authenticate(cookie)
        if principal is not None:
            return principal
    raise UnauthenticatedError(f"sign in at {SIGN_IN_PATH}")


UiPrincipalDep = Annotated[Principal, Depends(ui_principal)]


def from_this_site(request: Request) -> bool:
    """False when the browser says the form was posted from another site's page.

    Browsers send ``Origin`` on a form POST (and ``Sec-Fetch-Site``); a sign-in
    posted from elsewhere could sign a person in as someone else (login CSRF).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def set_sign_in_cookie(response: Response, request: Request, token: str) -> None:
    """Put the token in the sign-in cookie of ``response``."""
    response.set_cookie(
        COOKIE_NAME,
        encode_cookie_token(token),
        max_age=COOKIE_MAX_AGE_SECONDS,
        path=PREFIX,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def clear_sign_in_cookie(response: Response) -> None:
    """Tell the browser to drop the sign-in cookie."""
    response.delete_cookie(COOKIE_NAME, path=PREFIX, httponly=True, samesite="strict")
