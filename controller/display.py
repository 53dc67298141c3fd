"""Untrusted text for human eyes: control, bidi and zero-width characters shown escaped, never markup.

Invariant 13: text from a task, a repository or a sandbox is data. Every human output
(the CLI, log lines, run events) goes through :func:`escape_text`, and the CLI prints
through :func:`make_console` and :func:`safe_text`, which never parse markup or colour data.
"""

from __future__ import annotations

import copy
import logging
import re
import unicodedata
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from pydantic import JsonValue

#: Unicode categories shown escaped: controls (C0, DEL, C1: ESC, CSI, OSC...), format
#: characters (bidi overrides and isolates, zero-width spaces and joiners, BOM, soft
#: hyphen), lone surrogates, and the line and paragraph separators.
ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

#: Only characters outside printable ASCII can need escaping: a fast path for the usual text.
_CANDIDATES = re.compile(r"[^\x20-\x7e]")

_ASCII_LIMIT = 0x100
_BMP_LIMIT = 0x10000
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    """Python's own notation: ``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0001``."""
    if char in _SHORT:
        return _SHORT[char]
    point = ord(char)
    if point < _ASCII_LIMIT:
        return f"\\x{point:02x}"
    if point < _BMP_LIMIT:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def escape_text(text: str, *, multiline: bool = False) -> str:
    r"""``text`` with every control, bidi and zero-width character replaced by its escape.

    ``multiline`` keeps newlines and tabs (a log or a traceback shown as it is laid out);
    otherwise they are escaped too, so one value is one line and cannot forge the next.
    Backslashes are kept as they are: the function is then idempotent (escaping twice
    changes nothing), so text escaped where it was recorded can be escaped again where it
    is shown. The cost is that a literal ``\x1b`` typed by someone looks like an escaped
    ESC; it is harmless either way.
    """

    def replace(match: re.Match[str]) -> str:
        char = match.group()
        if multiline and char in "\n\t":
            return char
        if unicodedata.category(char) in ESCAPED_CATEGORIES:
            return _escape_char(char)
        return char

    return _CANDIDATES.sub(replace, text)


def escape_json(value: JsonValue) -> JsonValue:
    """Every string (keys too) of a JSON value escaped with :func:`escape_text`."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, list):
        return [escape_json(item) for item in value]
    if isinstance(value, dict):
        return {escape_text(key): escape_json(item) for key, item in value.items()}
    return value


def safe_text(value: object, style: str = "", *, multiline: bool = False) -> Text:
    """A rich ``Text`` of untrusted ``value``: escaped, never parsed as markup, never highlighted.

    ``style`` is the caller's own (a constant such as ``"bold"``), never derived from data.
    """
    return Text(escape_text(str(value), multiline=multiline), style=style)


def duration(seconds: float | None) -> str:
    """``4.2s``, ``3m07.5s`` or ``-``: how the CLI and the web view show how long something took."""
    if seconds is None:
        return "-"
    minutes, rest = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}m{rest:04.1f}s" if minutes else f"{rest:.1f}s"


def make_console(*, stderr: bool = False) -> Console:
    """A rich console that parses no markup, highlights nothing and replaces no ``:emoji:`` codes.

    Strings given to it by mistake are then shown as they are; data still goes through
    :func:`safe_text` so that control characters are escaped.
    """
    return Console(stderr=stderr, markup=False, highlight=False, emoji=False)


class EscapingFormatter(logging.Formatter):
    """Wraps a formatter so that what it writes is escaped.

    The message is escaped as one line (a newline in it cannot forge a log line); the
    traceback keeps its newlines. The record itself is left alone for other handlers.
    """

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        """``inner`` lays the line out (the stdlib's default formatter when None)."""
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """Format a copy of ``record`` whose message is escaped, then escape what the layout added."""
        safe = copy.copy(record)
        safe.msg = escape_text(record.getMessage())
        safe.args = None
        # The traceback and any field the inner formatter adds are escaped on the way out,
        # keeping the traceback's own line breaks (escaping is idempotent).
        return escape_text(self._inner.format(safe), multiline=True)


def escape_log_handlers(logger: logging.Logger | None = None) -> None:
    """Make every handler of ``logger`` (the root logger by default) escape what it writes."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, EscapingFormatter):
            handler.setFormatter(EscapingFormatter(handler.formatter))
