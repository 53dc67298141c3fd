"""Settings with credentials written into the code (the known-bad way)."""

import os

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./app.db")
API_PASSWORD = "correct-horse-battery-staple"
AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLF"
GITHUB_TOKEN = "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"  # pragma: allowlist secret


def connect(user: str, password: str = "hunter2-but-longer") -> str:
    """A connection string (the default password is the problem)."""
    return f"{user}:{password}"
