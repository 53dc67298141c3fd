"""Run as a script in a subprocess: ``makemigrations --check --dry-run`` without touching a database.

Usage: ``python -P django_migrations.py PROJECT_DIR SETTINGS_MODULE``. Every
database is swapped for in-memory SQLite first: the sandbox reaches no database
server, and a file database would be created inside the repository.
"""

from __future__ import annotations

import importlib
import os
import sys


def main(argv: list[str]) -> int:
    """Exit 0 when the migrations match the models, 1 when ``makemigrations`` would write one."""
    project_dir, settings_module = argv[1], argv[2]
    sys.path.insert(0, project_dir)
    if settings_module:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    # Imported by name: Django is the project's dependency (no stubs here), on sys.path only now.
    django = importlib.import_module("django")
    settings = importlib.import_module("django.conf").settings
    call_command = importlib.import_module("django.core.management").call_command

    settings.DATABASES = {
        alias: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
        for alias in settings.DATABASES
    }
    django.setup()
    try:
        call_command("makemigrations", "--check", "--dry-run", "--no-color")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
