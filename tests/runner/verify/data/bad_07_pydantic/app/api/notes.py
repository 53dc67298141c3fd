"""Note routes that take bodies without pydantic models (the known-bad way)."""

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Body, Request
from pydantic import validator

router = APIRouter(prefix="/notes")


@dataclass
class NoteIn:
    """Not a pydantic model."""

    text: str


@router.post("")
async def create_note(payload: dict[str, Any]) -> dict[str, Any]:
    """Takes any JSON object."""
    return payload


@router.put("/{note_id}")
async def replace_note(note_id: int, request: Request) -> dict[str, Any]:
    """Reads the body by hand."""
    data = await request.json()
    return {"id": note_id, **data}


@router.patch("/{note_id}")
async def patch_note(note_id: int, note: NoteIn, tags: Any = Body(None)) -> dict[str, Any]:
    """A dataclass body and an untyped Body()."""
    return {"id": note_id, "text": note.text, "tags": tags}


__all__ = ["validator"]
