"""Structured logs for the server: one JSON object per line, fields from ``extra=``.

Code logs with ``logger.info("run finished", extra={"task_id": ..., "status": ...})``;
this formatter puts the message and every extra field in one JSON line, so a
log pipeline can filter by ``task_id`` or ``request_id`` without parsing prose.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message", "taskName"}
)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonLineFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra, "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class KeyValueFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for a human at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        extras = " ".join(f"{key}={value!r}" for key, value in _extras(record).items())
        text = (
            f"{datetime.fromtimestamp(record.created, UTC).isoformat(timespec='milliseconds')} "
            f"{record.levelname} {record.name}: {record.getMessage()}"
        )
        if extras:
            text = f"{text} {extras}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def configure_logging(log_format: Literal["json", "text"], level: int = logging.INFO) -> None:
    """Send every logger (uvicorn's too) through one handler on stderr in ``log_format``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
