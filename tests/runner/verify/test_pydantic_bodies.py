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
    assert outcome.verdict == (
        "1 body parameter(s) of 3 FastAPI endpoint(s) are pydantic models; "
        "none reads the request by hand, owned helpers followed"
    )


def test_unvalidated_bodies_are_reported(stage: Stage) -> None:
    """dict, Any and dataclass bodies, request.json() by hand and pydantic v1 validator are each reported."""
    outcome = _check(stage(overlay="bad_07_pydantic"))
    assert not outcome.passed
    assert [f.render() for f in sorted(outcome.findings)] == [
        "app/api/notes.py:7: TB0703 imports pydantic v1 validator; use field_validator/model_validator",
        "app/api/notes.py:20: TB0701 body parameter 'payload' of create_note() is dict[str, Any], not a pydantic model",
        "app/api/notes.py:28: TB0702 replace_note() reads request.json() by hand; declare a pydantic model parameter instead",
        (
            "app/api/notes.py:33: TB0701 body parameter 'note' of patch_note() uses NoteIn, which is "
            "not a pydantic BaseModel; also body parameter 'tags' of patch_note() is Any, not a "
            "pydantic model"
        ),
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


HIDDEN_BODIES = '''"""Item routes whose bodies escape validation one step away (the gaming way)."""

from typing import Any, TypeAlias

from fastapi import APIRouter, Request

from app.api.parsing import read_payload

router = APIRouter(prefix="/items")
Body = dict[str, Any]
Payload: TypeAlias = dict[str, object]


async def _json_of(request: Request) -> dict[str, Any]:
    """Reads the body by hand."""
    return await request.json()


@router.post("/a")
async def create_a(item: Body) -> dict[str, str]:
    """A dict body behind an alias."""
    return {"id": str(item.get("id"))}


@router.post("/b")
async def create_b(item: Payload) -> dict[str, str]:
    """A dict body behind a TypeAlias."""
    return {"id": str(item.get("id"))}


@router.post("/c")
async def create_c(request: Request) -> dict[str, str]:
    """request.json() in a same-module helper."""
    data = await _json_of(request)
    return {"id": str(data.get("id"))}


@router.post("/d")
async def create_d(request: Request) -> dict[str, str]:
    """request.form() in a helper of another owned module."""
    data = await read_payload(request)
    return {"id": str(data.get("id"))}
'''

PARSING = '''"""Body parsing by hand."""

from typing import Any


async def read_payload(req: Any) -> dict[str, Any]:
    """The form, unvalidated."""
    form = await req.form()
    return dict(form)
'''

VALIDATED = '''"""Item routes whose bodies are models, whatever the alias; helpers read responses, not requests."""

from typing import TypeAlias

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel

router = APIRouter(prefix="/items")


class ItemIn(BaseModel):
    """An item."""

    name: str


Items: TypeAlias = list[ItemIn]


async def _lookup(client: httpx.AsyncClient) -> dict[str, str]:
    """Reads a response's JSON, not the request's."""
    response = await client.get("http://127.0.0.1:9/")
    return dict(response.json())


def _client_host(request: Request) -> str:
    """Uses the request without reading its body."""
    return request.client.host if request.client else ""


@router.post("/many")
async def create_many(items: Items, request: Request) -> dict[str, str]:
    """A list of models behind an alias."""
    return {"count": str(len(items)), "from": _client_host(request)}
'''


def test_bodies_behind_aliases_and_reads_in_helpers_are_reported(stage: Stage) -> None:
    """dict bodies behind aliases fail; request.json()/form() in helpers are traced to the endpoint."""
    staged = stage()
    staged.write("app/api/hidden.py", HIDDEN_BODIES)
    staged.write("app/api/parsing.py", PARSING)
    outcome = _check(staged)
    rendered = [f.render() for f in sorted(outcome.findings)]
    assert rendered == [
        "app/api/hidden.py:20: TB0701 body parameter 'item' of create_a() is Body (resolves to dict[str, Any]), not a pydantic model",
        "app/api/hidden.py:26: TB0701 body parameter 'item' of create_b() is Payload (resolves to dict[str, object]), not a pydantic model",
        (
            "app/api/hidden.py:34: TB0702 create_c() reads request.json() by hand through "
            "create_c -> _json_of -> request.json (app/api/hidden.py:16); "
            "declare a pydantic model parameter instead"
        ),
        (
            "app/api/hidden.py:41: TB0702 create_d() reads request.form() by hand through "
            "create_d -> read_payload -> request.form (app/api/parsing.py:8); "
            "declare a pydantic model parameter instead"
        ),
    ]


def test_model_bodies_behind_aliases_and_response_json_pass(stage: Stage) -> None:
    """A list of models behind a TypeAlias passes; helpers reading a response or the client do too."""
    staged = stage()
    staged.write("app/api/validated.py", VALIDATED)
    outcome = _check(staged)
    assert outcome.passed, outcome.findings
    assert outcome.verdict.startswith(
        "2 body parameter(s) of 4 FastAPI endpoint(s) are pydantic models"
    )


def test_no_body_says_so(stage: Stage) -> None:
    """An app whose endpoints take no body says exactly that, not that every body is a model."""
    staged = stage()
    staged.write(
        "app/api/health.py",
        'from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n@router.get("/health")\n'
        'async def health() -> dict[str, str]:\n    """Alive."""\n    return {"status": "ok"}\n',
    )
    space = staged.space(owns=("app/api/health.py",))
    outcome = check_request_validation(space, "fastapi", ProjectTypes.scan(space))
    assert outcome.passed
    assert outcome.verdict == (
        "no endpoint takes a body (1 FastAPI endpoint(s) checked); none reads the request by hand, "
        "owned helpers followed"
    )


DEPENDENCY_READ = '''"""A body read by hand in a dependency, behind an Annotated alias."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

router = APIRouter(prefix="/dep")


async def payload_of(request: Request) -> dict[str, Any]:
    """The raw JSON."""
    return dict(await request.json())


async def client_of(request: Request) -> str:
    """No body read: only the client's address."""
    return request.client.host if request.client else ""


Payload = Annotated[dict[str, Any], Depends(payload_of)]
Client = Annotated[str, Depends(client_of)]


@router.post("/raw")
async def create_raw(data: Payload) -> dict[str, str]:
    """The dependency reads the body."""
    return {"n": str(len(data))}


@router.get("/who")
async def who(client: Client) -> dict[str, str]:
    """The dependency reads no body."""
    return {"client": client}
'''


def test_request_read_in_a_dependency_is_reported(stage: Stage) -> None:
    """Depends(payload_of) reading request.json() fails at the parameter; a dependency reading no body passes."""
    staged = stage()
    staged.write("app/api/dep.py", DEPENDENCY_READ)
    outcome = _check(staged)
    assert [f.render() for f in outcome.findings] == [
        (
            "app/api/dep.py:25: TB0702 create_raw() via Depends(payload_of) reads request.json() by "
            "hand (app/api/dep.py:12); declare a pydantic model parameter instead"
        )
    ]
