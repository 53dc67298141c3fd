"""Fixtures: a fresh store per test and clients bound to the app."""

import pytest
from fastapi.testclient import TestClient

from app.api.users import get_store
from app.main import app
from app.store import UserStore


@pytest.fixture
def client():
    """A TestClient whose store starts empty."""
    store = UserStore()
    app.dependency_overrides[get_store] = lambda: store
    yield TestClient(app)
    app.dependency_overrides.clear()
