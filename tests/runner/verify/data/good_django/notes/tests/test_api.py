"""The notes API through DRF's test client."""

import pytest
from rest_framework.test import APIClient

from notes.models import Note


@pytest.mark.django_db
def test_create_and_list():
    client = APIClient()
    created = client.post("/api/notes/", {"title": "hello", "body": "world"}, format="json")
    assert created.status_code == 201
    listed = client.get("/api/notes/")
    assert [n["title"] for n in listed.json()] == ["hello"]


@pytest.mark.django_db
def test_read_one_and_str():
    note = Note.objects.create(title="one")
    response = APIClient().get(f"/api/notes/{note.id}/")
    assert response.json()["title"] == "one"
    assert str(note) == "one"


@pytest.mark.django_db
def test_invalid_body_is_400():
    assert APIClient().post("/api/notes/", {"body": "no title"}, format="json").status_code == 400
