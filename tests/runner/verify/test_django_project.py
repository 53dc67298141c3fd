"""Django: tests run under pytest-django in the one pytest run; migrations must be current."""

from __future__ import annotations

import shutil
from pathlib import Path

from taskbox_runner.verify import check_fail_to_pass, verify
from taskbox_runner.verify.django_project import check_migrations, find_manage_py, settings_module

from tests.runner.verify.conftest import DATA, Stage


def test_good_django_project_passes_all_ten(stage: Stage) -> None:
    """A small DRF project is detected as Django, its tests run with coverage, and all ten pass."""
    staged = stage("good_django")
    report = verify(staged.context(owns=["notes/"], openapi_path=None))
    assert report.framework == "django"
    assert report.passed, report.feedback()
    assert (report.test_results.total, report.test_results.passed) == (3, 3)
    assert report.test_results.coverage_percent == 100.0
    assert not (staged.workdir / "db.sqlite3").exists(), (
        "the migrations check must not create a database"
    )


def test_model_change_without_migration_fails(stage: Stage) -> None:
    """A field added to a model without its migration is reported under constraint 5."""
    staged = stage("good_django", overlay="bad_django_migrations")
    space = staged.space(owns=("notes/",))
    manage = find_manage_py(space)
    assert manage == "manage.py"
    settings = settings_module(space, manage)
    assert settings == "mysite.settings"
    rendered = [f.render() for f in check_migrations(space, manage, settings, staged.scratch_dir)]
    pending = "notes/migrations/0002_note_pinned.py"
    assert rendered == [
        f"manage.py:1: TB0508 models changed without migrations: {pending}; run makemigrations"
    ]


def test_current_migrations_pass(stage: Stage) -> None:
    """The untouched project has no pending migration."""
    staged = stage("good_django")
    space = staged.space(owns=("notes/",))
    assert check_migrations(space, "manage.py", "mysite.settings", staged.scratch_dir) == []


def test_fail_to_pass_runs_django_tests_under_the_base_settings(
    stage: Stage, tmp_path: Path
) -> None:
    """On a Django base, a new test that passes there too is named: pytest-django ran with manage.py's settings."""
    staged = stage("good_django")
    base = tmp_path / "base"
    shutil.copytree(DATA / "good_django", base)
    (base / "notes/tests/test_more.py").write_text(
        "import pytest\nfrom rest_framework.test import APIClient\n\n\n@pytest.mark.django_db\n"
        "def test_empty_list() -> None:\n    assert APIClient().get('/api/notes/').json() == []\n"
    )
    outcome = check_fail_to_pass(
        staged.context(owns=["notes/"], openapi_path=None),
        base_workdir=base,
        test_files=["notes/tests/test_more.py"],
    )
    assert [f.render() for f in outcome.findings] == [
        (
            "notes/tests/test_more.py:1: TB0513 the tests pass on the base as well: they do not test "
            "the change (notes/tests/test_more.py::test_empty_list)"
        )
    ]
    assert not (base / "db.sqlite3").exists()
