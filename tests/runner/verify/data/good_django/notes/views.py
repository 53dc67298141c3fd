"""Note endpoints."""

from rest_framework import generics

from notes.models import Note
from notes.serializers import NoteSerializer


class NoteList(generics.ListCreateAPIView):
    """List and create notes."""

    queryset = Note.objects.order_by("id")
    serializer_class = NoteSerializer


class NoteDetail(generics.RetrieveAPIView):
    """One note."""

    queryset = Note.objects.all()
    serializer_class = NoteSerializer
