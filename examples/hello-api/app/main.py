"""The hello-api application."""

import logging

from fastapi import FastAPI

logger = logging.getLogger(__name__)

app = FastAPI(title="hello-api")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
