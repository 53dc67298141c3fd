"""DRF serializers: every request body goes through one."""

from rest_framework import serializers

from notes.models import Note


class NoteSerializer(serializers.ModelSerializer):
    """A note in and out."""

    class Meta:
        model = Note
        fields = ["id", "title", "body"]
