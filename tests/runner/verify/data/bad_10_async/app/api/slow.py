"""Routes that block the event loop (the known-bad way)."""

import time

import requests
from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

router = APIRouter(prefix="/slow")


def get_db() -> Session:
    """A sync session."""
    raise NotImplementedError


@router.get("/sync")
def sync_endpoint() -> dict[str, str]:
    """A plain def endpoint."""
    return {"ok": "yes"}


@router.get("/sleepy")
async def sleepy() -> dict[str, str]:
    """Sleeps and calls out with requests inside async def."""
    time.sleep(1)
    body = requests.get("http://127.0.0.1:9/", timeout=1).text
    return {"body": body}


@router.get("/users")
async def users(db: Session = Depends(get_db)) -> list[str]:
    """A sync Session and query() in an async endpoint."""
    return [row.name for row in db.query(object).all()]
