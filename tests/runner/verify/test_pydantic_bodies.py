"""Constraint 7: request bodies go through pydantic v2 models (or DRF serializers)."""

from __future__ import annotations

from taskbox_runner.verify.endpoints import ProjectTypes
from taskbox_runner.verify.models import CheckOutcome, Framework
from taskbox_runner.verify.pydantic_bodies import check_request_validation

from tests.runner.verify.conftest import Stage, Staged


def _check(staged: Staged, framework: Framework = "fastapi") -> CheckOutcome:
    space = staged.space()
    return check_request_validation(space, framework, ProjectTypes.scan(space))


def test_good_project_passes(stage: Stage) -> None:
    """Every body of the known-good project is a BaseModel subclass (aliases like StoreDep are dependencies)."""
    outcome = _check(stage())
    assert outcome.passed, outcome.findings
    assert outcome.verdict == "every body of 3 FastAPI endpoint(s) is a pydantic model"


def test_unvalidated_bodies_are_reported(stage: Stage) -> None:
    """dict, Any and dataclass bodies, request.json() by hand and pydantic v1 validator are each reported."""
    outcome = _check(stage(overlay="bad_07_pydantic"))
    assert not outcome.passed
    assert [f.render() for f in sorted(outcome.findings)] == [
        "app/api/notes.py:7: TB0703 imports pydantic v1 validator; use field_validator/model_validator",
        "app/api/notes.py:20: TB0701 body parameter 'payload' of create_note() is dict[str, Any], not a pydantic model",
        "app/api/notes.py:28: TB0702 replace_note() reads request.json() by hand; declare a pydantic model parameter instead",
        "app/api/notes.py:33: TB0701 body parameter 'note' of patch_note() uses NoteIn, which is not a pydantic BaseModel",
        "app/api/notes.py:33: TB0701 body parameter 'tags' of patch_note() is Any, not a pydantic model",
    ]


def test_django_view_without_serializer_is_reported(stage: Stage) -> None:
    """A DRF view reading request.data without a serializer fails; one using a serializer passes."""
    staged = stage()
    staged.write(
        "app/views.py",
        "from rest_framework.response import Response\n"
        "from rest_framework.views import APIView\n\n\n"
        "class Raw(APIView):\n"
        "    def post(self, request):\n"
        "        return Response({'name': request.data['name']})\n\n\n"
        "class Checked(APIView):\n"
        "    def post(self, request):\n"
        "        serializer = NoteSerializer(data=request.data)\n"
        "        serializer.is_valid(raise_exception=True)\n"
        "        return Response(serializer.data)\n",
    )
    outcome = _check(staged, framework="django")
    assert [f.render() for f in outcome.findings] == [
        "app/views.py:7: TB0704 post() reads the request body without a DRF serializer"
    ]
