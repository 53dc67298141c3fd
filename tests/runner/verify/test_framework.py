"""Framework detection from the base dependency files, then the current ones, then imports."""

from __future__ import annotations

from pathlib import Path

from taskbox_runner.verify.framework import detect_framework
from taskbox_runner.verify.models import Framework
from taskbox_runner.verify.workspace import Workspace


def _detect(tmp_path: Path, base_files: dict[str, str], work_files: dict[str, str]) -> Framework:
    base = tmp_path / "base"
    work = tmp_path / "work"
    for folder, files in ((base, base_files), (work, work_files)):
        folder.mkdir()
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    return detect_framework(base, Workspace.load(work, ["app/"], []))


def test_fastapi_preferred_when_several(tmp_path: Path) -> None:
    """FastAPI wins over Django and Flask in one requirements file."""
    assert (
        _detect(tmp_path, {"requirements.txt": "Django>=5\nflask\nfastapi[standard]==0.115\n"}, {})
        == "fastapi"
    )


def test_django_from_pyproject(tmp_path: Path) -> None:
    """Django (or DRF alone) in pyproject dependencies means Django."""
    pyproject = '[project]\nname = "x"\ndependencies = ["djangorestframework>=3.15"]\n'
    assert _detect(tmp_path, {"pyproject.toml": pyproject}, {}) == "django"


def test_flask_from_setup_cfg(tmp_path: Path) -> None:
    """install_requires in setup.cfg is read."""
    cfg = "[options]\ninstall_requires =\n    flask>=3\n    requests\n"
    assert _detect(tmp_path, {"setup.cfg": cfg}, {}) == "flask"


def test_base_wins_over_model_edits(tmp_path: Path) -> None:
    """A framework the model adds to the live requirements does not override the base one."""
    assert (
        _detect(tmp_path, {"requirements.txt": "flask\n"}, {"requirements.txt": "fastapi\n"})
        == "flask"
    )


def test_imports_decide_a_new_project(tmp_path: Path) -> None:
    """With no dependency files, the imports in the code decide."""
    assert (
        _detect(tmp_path, {}, {"app/main.py": "from fastapi import FastAPI\napp = FastAPI()\n"})
        == "fastapi"
    )


def test_nothing_known_is_unknown(tmp_path: Path) -> None:
    """No dependency file and no framework import: unknown."""
    assert _detect(tmp_path, {}, {"app/util.py": "import os\n"}) == "unknown"
