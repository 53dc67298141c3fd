"""Constraint 6: the served OpenAPI (imported in a subprocess) against the contract file."""

from __future__ import annotations

from taskbox_runner.verify.contract import (
    check_contract,
    find_fastapi_app,
    schema_shape,
    shape_differences,
    static_contract,
)
from taskbox_runner.verify.models import CheckOutcome

from tests.runner.verify.conftest import Stage, Staged


def test_good_project_matches_its_contract(stage: Stage) -> None:
    """The known-good app serves exactly its contract (path parameter names may differ)."""
    staged = stage()
    outcome = check_contract(staged.space(), "fastapi", "openapi.yaml", staged.scratch_dir)
    assert outcome.passed, outcome.findings
    assert outcome.verdict == (
        "app.main:app serves the 3 operation(s) of openapi.yaml as specified; "
        "4 of 4 request(s) built from the contract answered"
    )
    assert outcome.warnings == []


def test_no_contract_is_not_applicable() -> None:
    """Without an OpenAPI path the check passes with the evidence 'no contract'."""
    outcome = check_contract(None, "fastapi", None, None)  # type: ignore[arg-type]
    assert outcome.passed
    assert outcome.to_report().evidence == ["no contract"]


def test_mismatched_contract_lists_missing_extra_and_mismatched(stage: Stage) -> None:
    """Missing DELETE, extra GET /users, 201 vs 200, an extra required field and id types are each reported."""
    staged = stage(overlay="bad_06_contract")
    outcome = check_contract(staged.space(), "fastapi", "openapi.yaml", staged.scratch_dir)
    assert not outcome.passed
    assert [f.render() for f in sorted(outcome.findings)] == [
        "app/api/users.py:41: TB0602 GET /users is served by the app but not in the contract",
        "openapi.yaml:6: TB0603 POST /users: request body: property 'age' is missing in the app",
        "openapi.yaml:6: TB0603 POST /users: request body: required ['email', 'name'] in the app, ['age', 'email', 'name'] in the contract",
        "openapi.yaml:6: TB0603 POST /users: success status 201 in the app, 200 in the contract",
        "openapi.yaml:22: TB0601 DELETE /users/{id} is in the contract but the app does not serve it",
        "openapi.yaml:22: TB0603 GET /users/{id}: response 200.id: type integer in the app, string in the contract",
    ]


def test_app_that_fails_to_import_is_reported(stage: Stage) -> None:
    """An app module that raises on import fails the check with the error's last line."""
    staged = stage()
    main = staged.workdir / "app/main.py"
    staged.write(
        "app/main.py", main.read_text() + "\nraise RuntimeError('DATABASE_URL is not set')\n"
    )
    outcome = check_contract(staged.space(), "fastapi", "openapi.yaml", staged.scratch_dir)
    assert not outcome.passed
    assert [f.render() for f in outcome.findings] == [
        "app/main.py:7: TB0604 importing app.main:app failed: RuntimeError: DATABASE_URL is not set"
    ]


def test_app_is_found_in_app_main(stage: Stage) -> None:
    """The module-level FastAPI() in app/main.py is the app."""
    app = find_fastapi_app(stage().space())
    assert app is not None
    assert (app.rel, app.line, app.target) == ("app/main.py", 7, "app.main:app")


def test_schema_shapes_ignore_nullability_and_titles() -> None:
    """Optional fields (anyOf with null) and titles do not make a difference; types do."""
    served = {"anyOf": [{"type": "string", "title": "Name"}, {"type": "null"}]}
    contract = {"type": "string", "nullable": True}
    assert shape_differences(schema_shape(contract, {}), schema_shape(served, {}), "x") == []
    assert shape_differences(
        schema_shape({"type": "integer"}, {}), schema_shape(served, {}), "x"
    ) == ["x: type string in the app, integer in the contract"]


def test_extra_routes_outside_the_owned_paths_are_noted_not_failed(stage: Stage) -> None:
    """A served route from a file the task does not own is not the task's to remove."""
    staged = stage()
    (staged.workdir / "platform_routes.py").write_text(
        "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
        "@router.get('/health')\nasync def health() -> dict[str, str]:\n    return {'ok': 'yes'}\n"
    )
    main = staged.workdir / "app/main.py"
    staged.write(
        "app/main.py",
        main.read_text() + "\nfrom platform_routes import router\n\napp.include_router(router)\n",
    )
    outcome = check_contract(staged.space(), "fastapi", "openapi.yaml", staged.scratch_dir)
    assert outcome.passed, outcome.findings
    assert outcome.verdict.endswith(
        "; 1 other served operation(s) outside the owned paths not checked"
    )


HIDDEN_ROUTE = '''

@router.get("/export/all", include_in_schema=False)
async def export_users(store: StoreDep) -> list[User]:
    """Every user, for a back-office job."""
    return await store.list(100)
'''

CREATE_BYPASS = '''@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(payload: UserCreate, store: StoreDep) -> User:
    """Create a user."""
    user = await store.add(payload)
    return JSONResponse(  # type: ignore[return-value]
        status_code=201, content={"id": user.id, "username": user.name, "email": user.email}
    )
'''

CREATE_EXACT = '''@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(payload: UserCreate, store: StoreDep) -> User:
    """Create a user."""
    user = await store.add(payload)
    return JSONResponse(  # type: ignore[return-value]
        status_code=201, content={"id": user.id, "name": user.name, "email": user.email}
    )
'''

READ_NULL = '''@router.get("/{user_id}")
async def read_user(user_id: int, store: StoreDep) -> User | None:
    """One user by id."""
    return await store.get(user_id)
'''

READ_OPTIONAL_404 = '''@router.get("/{user_id}")
async def read_user(user_id: int, store: StoreDep) -> User | None:
    """One user by id."""
    user = await store.get(user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="user not found")
    return user
'''

LIST_FREE_FORM = '''@router.get("")
async def list_users(
    store: StoreDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[dict[str, object]]:
    """Users, oldest first."""
    return [user.model_dump() for user in await store.list(limit)]
'''


def _replace_endpoint(staged: Staged, name: str, new: str) -> None:
    """Swap one endpoint of app/api/users.py (decorator to the next blank-line gap) for ``new``."""
    path = staged.workdir / "app/api/users.py"
    text = path.read_text()
    start = text.rindex("@router", 0, text.index(f"async def {name}("))
    end = text.find("\n\n\n", start)
    end = len(text) if end == -1 else end
    body = "from fastapi.responses import JSONResponse\n" + text[:start] + new + text[end:]
    staged.write("app/api/users.py", body)


def _contract(staged: Staged) -> CheckOutcome:
    return check_contract(staged.space(), "fastapi", "openapi.yaml", staged.scratch_dir)


def test_route_hidden_from_the_schema_is_found_statically_and_at_run_time(stage: Stage) -> None:
    """A route with include_in_schema=False is seen in the source and in app.routes: not in the contract."""
    staged = stage()
    staged.write(
        "app/api/users.py", (staged.workdir / "app/api/users.py").read_text() + HIDDEN_ROUTE
    )
    static = static_contract(staged.space(), "openapi.yaml")
    assert [f.render() for f in static.findings] == [
        (
            "app/api/users.py:49: TB0606 the route /export/all is hidden from the OpenAPI document "
            "(include_in_schema=False) and not in openapi.yaml"
        )
    ]
    dynamic = _contract(staged)
    assert [f.render() for f in dynamic.findings] == [
        (
            "app/api/users.py:49: TB0602 GET /users/export/all is served by the app, hidden from its "
            "OpenAPI document (include_in_schema=False), and not in the contract"
        )
    ]


def test_json_response_that_bypasses_the_model_is_caught(stage: Stage) -> None:
    """A JSONResponse with other fields than the contract's: the answer to a POST fails validation."""
    staged = stage()
    _replace_endpoint(staged, "create_user", CREATE_BYPASS)
    outcome = _contract(staged)
    assert [f.rule for f in outcome.findings] == ["TB0607"]
    message = outcome.findings[0].message
    assert message.startswith("POST /users: answered 201 with a body the contract's schema refuses")
    assert '"name" is a required property' in message


def test_json_response_with_the_contract_fields_passes(stage: Stage) -> None:
    """The clean look-alike: a JSONResponse carrying exactly the contract's fields passes."""
    staged = stage()
    _replace_endpoint(staged, "create_user", CREATE_EXACT)
    outcome = _contract(staged)
    assert outcome.passed, outcome.findings


def test_200_null_where_the_contract_says_404_is_caught(stage: Stage) -> None:
    """Returning None for an unknown id answers 200 null; the contract's User schema refuses it."""
    staged = stage()
    _replace_endpoint(staged, "read_user", READ_NULL)
    outcome = _contract(staged)
    assert [f.render() for f in outcome.findings] == [
        (
            "openapi.yaml:43: TB0607 GET /users/{id}: answered 200 with a body the contract's schema "
            'refuses at the body: null is not of type "object"; body: null'
        )
    ]


def test_optional_return_that_raises_404_passes(stage: Stage) -> None:
    """The clean look-alike: the same Optional annotation with a 404 for an unknown id passes."""
    staged = stage()
    _replace_endpoint(staged, "read_user", READ_OPTIONAL_404)
    outcome = _contract(staged)
    assert outcome.passed, outcome.findings


def test_free_form_object_response_does_not_match_any_object_schema(stage: Stage) -> None:
    """list[dict[str, object]] declares no properties: it is not the contract's User."""
    staged = stage()
    _replace_endpoint(staged, "list_users", LIST_FREE_FORM)
    outcome = _contract(staged)
    assert [f.render() for f in outcome.findings] == [
        (
            "openapi.yaml:6: TB0603 GET /users: response 200[]: a free-form object in the app (any "
            "keys), properties ['email', 'id', 'name'] in the contract"
        )
    ]
