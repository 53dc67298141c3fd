"""Flask: the app factory is found, its URL rules meet the contract, bodies go through pydantic."""

from __future__ import annotations

from taskbox_runner.verify import verify
from taskbox_runner.verify.contract import check_contract, find_flask_app
from taskbox_runner.verify.endpoints import ProjectTypes
from taskbox_runner.verify.pydantic_bodies import check_request_validation

from tests.runner.verify.conftest import Stage

OWNS = ("shop/", "tests/")


def test_good_flask_project_passes_all_ten(stage: Stage) -> None:
    """A small Flask app with an app factory and pydantic bodies passes every constraint."""
    report = verify(stage("good_flask").context(owns=OWNS))
    assert report.framework == "flask"
    assert report.passed, report.feedback()
    assert report.constraints[5].evidence[0].endswith("(Flask: methods and paths only)")


def test_factory_is_found(stage: Stage) -> None:
    """``create_app`` in the package is the app, called as a factory."""
    app = find_flask_app(stage("good_flask").space(owns=OWNS))
    assert app is not None
    assert (app.rel, app.target) == ("shop/__init__.py", "shop:create_app()")


def test_route_missing_from_the_app_fails(stage: Stage) -> None:
    """A contract operation the Flask app does not serve is reported at the contract line."""
    staged = stage("good_flask")
    contract = (staged.workdir / "openapi.yaml").read_text()
    (staged.workdir / "openapi.yaml").write_text(
        contract + '    delete:\n      responses:\n        "204":\n          description: Gone\n'
    )
    outcome = check_contract(staged.space(owns=OWNS), "flask", "openapi.yaml", staged.scratch_dir)
    assert [f.render() for f in outcome.findings] == [
        "openapi.yaml:15: TB0601 DELETE /items/{id} is in the contract but the app does not serve it"
    ]


def test_body_read_without_a_model_fails(stage: Stage) -> None:
    """A view using request.get_json() without a pydantic model is reported."""
    staged = stage("good_flask")
    staged.write(
        "shop/raw.py",
        "from flask import request\n\n\n"
        "def rename() -> str:\n"
        "    data = request.get_json()\n"
        "    return str(data['name'])\n",
    )
    space = staged.space(owns=OWNS)
    outcome = check_request_validation(space, "flask", ProjectTypes.scan(space))
    assert [f.render() for f in outcome.findings] == [
        "shop/raw.py:5: TB0704 rename() reads the request body without a pydantic model"
    ]
