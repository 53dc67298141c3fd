"""Notes, with a field added and no migration for it (the known-bad way)."""

from django.db import models


class Note(models.Model):
    """A short note."""

    title = models.CharField(max_length=100)
    body = models.TextField(blank=True)
    pinned = models.BooleanField(default=False)

    def __str__(self) -> str:
        """The title."""
        return self.title
