"""Constraints 3, 8 and 9 from the single ruff run."""

from __future__ import annotations

from taskbox_runner.verify.ruff_checks import (
    check_no_print,
    check_ruff_clean,
    check_type_hints,
    noqa_warnings,
)

from tests.runner.verify.conftest import Stage


def test_good_project_passes_all_three(stage: Stage) -> None:
    """The known-good project is annotated, print-free and clean under its own ruff config."""
    space, ruff = stage().ruff()
    assert ruff.error is None
    for check in (check_type_hints, check_no_print, check_ruff_clean):
        outcome = check(space, ruff)
        assert outcome.passed, outcome.findings


def test_missing_annotations_are_reported(stage: Stage) -> None:
    """Unannotated parameters and returns are reported with their ANN rule."""
    space, ruff = stage(overlay="bad_03_hints").ruff()
    outcome = check_type_hints(space, ruff)
    assert not outcome.passed
    rendered = {f.render() for f in outcome.findings}
    assert (
        "app/pagination.py:4: ANN001 Missing type annotation for function argument `page`"
        in rendered
    )
    assert (
        "app/pagination.py:4: ANN201 Missing return type annotation for public function `page_bounds`"
        in rendered
    )
    assert any(r.startswith("app/pagination.py:13: ANN204 ") for r in rendered)
    assert any(r.startswith("app/pagination.py:16: ANN201 ") for r in rendered)


def test_tests_need_no_annotations(stage: Stage) -> None:
    """Test functions are outside constraint 3 (the project's own rules still cover them in 9)."""
    staged = stage()
    staged.write("tests/test_more.py", "def test_x(client):\n    assert client\n")
    space, ruff = staged.ruff()
    assert check_type_hints(space, ruff).passed


def test_print_is_reported(stage: Stage) -> None:
    """print and pprint in owned code are reported with T201/T203."""
    space, ruff = stage(overlay="bad_08_print").ruff()
    outcome = check_no_print(space, ruff)
    assert not outcome.passed
    assert [f.render() for f in sorted(outcome.findings)] == [
        "app/audit.py:8: T201 `print` found",
        "app/audit.py:13: T203 `pprint` found",
    ]


def test_noqa_does_not_hide_harness_rules(stage: Stage) -> None:
    """A '# noqa: T201' the model adds still fails constraint 8 and raises a warning."""
    staged = stage()
    staged.write(
        "app/debug.py", 'def show() -> None:\n    """Show."""\n    print("x")  # noqa: T201\n'
    )
    space, ruff = staged.ruff()
    assert not check_no_print(space, ruff).passed
    assert noqa_warnings(space, ruff) == [
        "app/debug.py:3: a '# noqa' does not silence T201 for the harness"
    ]


def test_ruff_findings_under_the_project_rules(stage: Stage) -> None:
    """Unused import, == None and unsorted imports fail 9; a '# noqa: F841' naming the rule is honoured."""
    space, ruff = stage(overlay="bad_09_ruff").ruff()
    outcome = check_ruff_clean(space, ruff)
    assert not outcome.passed
    codes = sorted((f.line, f.rule) for f in outcome.findings)
    assert codes == [(3, "F401"), (3, "I001"), (9, "E711")]
    assert outcome.verdict.endswith("under base pyproject.toml")


def test_harness_rules_count_for_9_only_when_the_project_selects_them(stage: Stage) -> None:
    """A print fails 9 when the project selects T20, and not when it does not."""
    staged = stage(overlay="bad_08_print")
    space, ruff = staged.ruff()
    assert {f.rule for f in check_ruff_clean(space, ruff).findings} == {"T201", "T203"}
    pyproject = staged.base_config_dir / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"ANN", "T20", "S"', '"ANN", "S"'))
    space, ruff = staged.ruff()
    assert check_ruff_clean(space, ruff).passed
    assert not check_no_print(space, ruff).passed


def test_default_rules_without_a_project_config(stage: Stage) -> None:
    """With no ruff config at the base, the harness default (E, F, W, I, UP, B) applies."""
    staged = stage(overlay="bad_09_ruff")
    (staged.base_config_dir / "pyproject.toml").unlink()
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    assert "harness default" in outcome.verdict
    assert {f.rule for f in outcome.findings} >= {"F401", "E711"}


def test_a_ruff_config_the_model_writes_is_ignored(stage: Stage) -> None:
    """A ruff.toml the model writes into app/ (ignore everything) changes nothing."""
    staged = stage(overlay="bad_09_ruff")
    staged.write("app/ruff.toml", '[lint]\nignore = ["ALL"]\n')
    staged.write("ruff.toml", '[lint]\nignore = ["ALL"]\n')
    space, ruff = staged.ruff()
    assert not check_ruff_clean(space, ruff).passed


def test_syntax_error_fails_9(stage: Stage) -> None:
    """A file that does not parse is a ruff finding of its own under constraint 9."""
    staged = stage()
    staged.write("app/broken.py", "def broken(:\n    pass\n")
    space, ruff = staged.ruff()
    outcome = check_ruff_clean(space, ruff)
    assert not outcome.passed
    # ruff names it "invalid-syntax" (older ruff gave no code; the harness calls that SYNTAX).
    assert {(f.path, f.rule) for f in outcome.findings} <= {
        ("app/broken.py", "invalid-syntax"),
        ("app/broken.py", "SYNTAX"),
    }
