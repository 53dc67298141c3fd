"""JSON Lines files of pydantic models (scripts, transcripts), refused with the line number."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from controller.errors import GatewayError

if TYPE_CHECKING:
    from pathlib import Path

M = TypeVar("M", bound=BaseModel)


def read_jsonl(path: Path, model: type[M], *, file_kind: str, line_kind: str) -> list[M]:
    """Every non-blank line of ``path`` as a ``model``; a bad line raises GatewayError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayError(f"{path}: cannot read {file_kind}: {exc.strerror}") from exc
    items: list[M] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(model.model_validate(json.loads(line)))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            reason = f"{where}: {first['msg']}" if where else first["msg"]
            raise GatewayError(f"{path}:{number}: not a {line_kind}: {reason}") from None
        except ValueError as exc:
            raise GatewayError(f"{path}:{number}: not valid JSON: {exc}") from None
    return items
