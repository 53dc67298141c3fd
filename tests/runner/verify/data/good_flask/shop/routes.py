"""Item routes; bodies are validated with pydantic."""

from flask import Blueprint, abort, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from shop.schemas import ItemIn

items = Blueprint("items", __name__)
_ITEMS: dict[int, dict[str, object]] = {}


@items.get("/items")
def list_items() -> ResponseReturnValue:
    """Every item."""
    return jsonify(list(_ITEMS.values()))


@items.post("/items")
def create_item() -> ResponseReturnValue:
    """Add an item."""
    try:
        new = ItemIn.model_validate(request.get_json(silent=True) or {})
    except ValidationError as exc:
        return jsonify({"detail": exc.errors(include_url=False)}), 422
    item = {"id": len(_ITEMS) + 1, **new.model_dump()}
    _ITEMS[int(item["id"])] = item
    return jsonify(item), 201


@items.get("/items/<int:item_id>")
def read_item(item_id: int) -> ResponseReturnValue:
    """One item."""
    if item_id not in _ITEMS:
        abort(404)
    return jsonify(_ITEMS[item_id])
