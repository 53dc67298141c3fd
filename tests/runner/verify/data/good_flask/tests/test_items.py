"""The shop through Flask's test client."""

from shop import create_app


def test_create_list_and_read():
    client = create_app().test_client()
    created = client.post("/items", json={"name": "pen", "price_cents": 150})
    assert created.status_code == 201
    assert client.get("/items").status_code == 200
    assert client.get(f"/items/{created.get_json()['id']}").get_json()["name"] == "pen"


def test_invalid_body_is_422():
    client = create_app().test_client()
    assert client.post("/items", json={"name": ""}).status_code == 422


def test_unknown_item_is_404():
    assert create_app().test_client().get("/items/999").status_code == 404
