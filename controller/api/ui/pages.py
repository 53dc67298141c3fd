"""The templates and how a page is answered: autoescaped Jinja, control characters escaped, strict headers.

Every ``{{ value }}`` passes through :func:`_finalize` and then HTML autoescaping:
text from a task, a repository or a sandbox can neither become markup nor carry a
raw control, bidi or zero-width character onto the page (invariant 13). Templates
never use ``|safe``; an unknown name in a template is an error, not an empty string.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.responses import HTMLResponse

from controller.api.ui.session import (
    PREFIX,
    SECURITY_HEADERS,
    SIGN_IN_PATH,
    SIGN_OUT_PATH,
    STYLESHEET_PATH,
)
from controller.display import escape_text


def _finalize(value: object) -> object:
    """What a ``{{ }}`` prints: ``None`` as nothing, strings with control characters escaped."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        # Newlines and tabs stay (a diff, a log); in HTML they cannot start anything.
        return escape_text(value, multiline=True)
    return value


ENVIRONMENT = Environment(
    loader=PackageLoader("controller.api.ui", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    finalize=_finalize,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.globals.update(
    prefix=PREFIX,
    sign_in_path=SIGN_IN_PATH,
    sign_out_path=SIGN_OUT_PATH,
    stylesheet=STYLESHEET_PATH,
)


def render(template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The page ``template`` filled with ``context``, with the web view's security headers."""
    html = ENVIRONMENT.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
