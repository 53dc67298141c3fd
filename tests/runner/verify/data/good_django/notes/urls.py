"""Note routes."""

from django.urls import path

from notes.views import NoteDetail, NoteList

urlpatterns = [
    path("notes/", NoteList.as_view()),
    path("notes/<int:pk>/", NoteDetail.as_view()),
]
