"""The single ruff run: rule selection as ruff resolves it, and noqa parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from taskbox_runner.verify import verify_static
from taskbox_runner.verify.ruff_run import RuleSelection, noqa_codes, project_ruff_config

from tests.runner.verify.conftest import Stage


@pytest.mark.parametrize(
    ("table", "code", "enabled"),
    [
        ({}, "F401", True),
        ({}, "E501", False),
        ({"select": ["E"]}, "E501", True),
        ({"select": ["E"]}, "ERA001", False),
        ({"select": ["ALL"], "ignore": ["ANN"]}, "ANN201", False),
        ({"select": ["ALL"], "ignore": ["ANN"]}, "ANN401", False),
        ({"select": ["ANN201"], "ignore": ["ANN"]}, "ANN201", True),
        ({"select": ["ANN"], "ignore": ["ANN201"]}, "ANN201", False),
        ({"select": ["T"]}, "T201", True),
        ({"select": ["T"]}, "TRY003", False),
        ({"select": ["PL"]}, "PLR0913", True),
        ({"select": ["C"]}, "C901", True),
        ({"select": ["C"]}, "CPY001", False),
        ({"select": ["E"], "extend-select": ["S6"]}, "S608", True),
        ({"select": ["TCH"]}, "TC001", True),
        ({"select": ["S"], "extend-ignore": ["S105"]}, "S105", False),
    ],
)
def test_rule_selection(table: dict[str, list[str]], code: str, enabled: bool) -> None:
    """A code is on when the most specific matching selector selects it (ignore wins a tie)."""
    assert RuleSelection.from_lint_table(table).enables(code) is enabled


@pytest.mark.parametrize(
    ("line", "codes"),
    [
        ("x = 1", None),
        ("x = 1  # noqa", set()),
        ("x = 1  # noqa: F841", {"F841"}),
        ("x = 1  # NOQA:E501,F401", {"E501", "F401"}),
    ],
)
def test_noqa_codes(line: str, codes: set[str] | None) -> None:
    """Blanket and coded noqa comments are told apart."""
    assert noqa_codes(line) == codes


def test_project_config_prefers_ruff_toml(tmp_path: Path) -> None:
    """ruff.toml wins over pyproject.toml; a pyproject without [tool.ruff] is no ruff config."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert project_ruff_config(tmp_path) == (None, {})
    (tmp_path / "ruff.toml").write_text("[lint]\nselect = ['E']\n")
    path, table = project_ruff_config(tmp_path)
    assert path == tmp_path / "ruff.toml"
    assert table == {"lint": {"select": ["E"]}}


def test_the_static_phase_never_imports_a_module_the_model_wrote_at_the_root(
    stage: Stage, tmp_path: Path
) -> None:
    """A model-written ``ruff`` package or ``__future__.py`` in the work tree is never run by the harness."""
    marker = tmp_path / "MARKER"
    planted = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    staged = stage()
    staged.write("ruff/__init__.py", planted)
    staged.write("__future__.py", planted)

    verify_static(staged.context(owns=("app/", "tests/", "ruff/", "__future__.py")))

    assert not marker.exists()
