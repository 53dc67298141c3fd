"""A tiny shop API."""

from flask import Flask

from shop.routes import items


def create_app() -> Flask:
    """The application factory."""
    app = Flask(__name__)
    app.register_blueprint(items)
    return app
