"""Notes."""

from django.db import models


class Note(models.Model):
    """A short note."""

    title = models.CharField(max_length=100)
    body = models.TextField(blank=True)

    def __str__(self) -> str:
        """The title."""
        return self.title
