"""The notes app."""

from django.apps import AppConfig


class NotesConfig(AppConfig):
    """App configuration."""

    name = "notes"
