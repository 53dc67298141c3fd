"""Constraint 6: the served OpenAPI (imported in a subprocess) against the contract file."""

from __future__ import annotations

from taskbox_runner.verify.contract import (
    check_contract,
    find_fastapi_app,
    schema_shape,
    shape_differences,
)

from tests.runner.verify.conftest import Stage


def test_good_project_matches_its_contract(stage: Stage) -> None:
    """The known-good app serves exactly its contract (path parameter names may differ)."""
    staged = stage()
    outcome = check_contract(staged.space(), "fastapi", "openapi.yaml", staged.scratch_dir)
    assert outcome.passed, outcome.findings
    assert outcome.verdict == "app.main:app serves the 3 operation(s) of openapi.yaml as specified"


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
