"""The users API end to end through the ASGI app."""

import httpx
import pytest

from app.main import app


def test_create_then_read(client):
    created = client.post("/users", json={"name": "Alice", "email": "alice@example.com"})
    assert created.status_code == 201
    user_id = created.json()["id"]
    fetched = client.get(f"/users/{user_id}")
    assert fetched.status_code == 200
    assert fetched.json()["name"] == "Alice"


def test_unknown_user_is_404(client):
    assert client.get("/users/999").status_code == 404


def test_invalid_body_is_422(client):
    assert client.post("/users", json={"name": "", "email": "nope"}).status_code == 422


def test_list_is_limited(client):
    for n in range(3):
        client.post("/users", json={"name": f"u{n}", "email": f"u{n}@example.com"})
    assert len(client.get("/users", params={"limit": 2}).json()) == 2


@pytest.mark.asyncio
async def test_async_client_lists_users(client):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
        response = await ac.get("/users")
    assert response.status_code == 200
