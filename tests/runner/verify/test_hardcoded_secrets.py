"""Constraint 2: ruff S105-S107 and detect-secrets find credentials in code, pragma or not."""

from __future__ import annotations

from taskbox_runner.verify.hardcoded_secrets import check_secrets

from tests.runner.verify.conftest import Stage


def test_good_project_passes(stage: Stage) -> None:
    """The known-good project holds no secrets, though its tests post made-up e-mails."""
    space, ruff = stage().ruff()
    outcome = check_secrets(space, ruff)
    assert outcome.passed, outcome.findings


def test_bad_project_is_caught_with_locations(stage: Stage) -> None:
    """A password constant, an AWS key, a default password and an allowlisted token are all reported."""
    space, ruff = stage(overlay="bad_02_secrets").ruff()
    outcome = check_secrets(space, ruff)
    assert not outcome.passed
    rendered = {f.render() for f in outcome.findings}
    assert (
        'app/settings.py:6: S105 Possible hardcoded password assigned to: "API_PASSWORD"'
        in rendered
    )
    assert (
        "app/settings.py:7: TB0201 AWS Access Key (detect-secrets AWSKeyDetector); read it from the environment or settings"
        in rendered
    )
    assert any(r.startswith("app/settings.py:8: TB0201 GitHub Token") for r in rendered), (
        "the allowlist pragma must not hide it"
    )
    assert any(r.startswith("app/settings.py:11: S107 ") for r in rendered)


def test_made_up_passwords_in_tests_pass_but_real_tokens_do_not(stage: Stage) -> None:
    """Tests may carry fixture passwords; a token with a known shape is still caught there."""
    staged = stage()
    staged.write(
        "tests/test_login.py",
        'def test_login() -> None:\n    password = "s3cret-for-tests"\n    assert password\n',
    )
    space, ruff = staged.ruff()
    assert check_secrets(space, ruff).passed
    staged.write("tests/test_login.py", 'TOKEN = "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"\n')
    space, ruff = staged.ruff()
    outcome = check_secrets(space, ruff)
    assert [f.path for f in outcome.findings] == ["tests/test_login.py"]
