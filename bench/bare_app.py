"""B5's floor: the smallest FastAPI app with one JSON GET route, served by the same uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    """A constant JSON body, like the controller's liveness probe."""
    return {"status": "ok"}
