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
    assert any(
        r.startswith(
            'app/settings.py:6: S105 Possible hardcoded password assigned to: "API_PASSWORD"'
        )
        for r in rendered
    )
    assert (
        "app/settings.py:7: TB0201 AWS Access Key (detect-secrets AWSKeyDetector); read it from the environment or settings"
        in rendered
    )
    assert any(
        r.startswith("app/settings.py:8: ") and "TB0201 GitHub Token" in r for r in rendered
    ), "the allowlist pragma must not hide it"
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


REBUILT = '''"""Settings whose secrets are assembled at run time (the careless and the gaming way)."""

import base64
import codecs

AWS_ACCESS_KEY_ID = "".join(["AKIA", "IOSFODNN", "7EXAMPLF"])
_HALF = "wWPw5k4aXcaT4fNP0Uc"
GITHUB = "ghp_" + _HALF + "nZwJUVFk6LO0pINUx"
DB_PASSWORD = base64.b64decode("aHVudGVyMi1idXQtbG9uZ2Vy").decode()
SIGNING_KEY = bytes.fromhex("7333637233742d7369676e696e672d6b3379").decode()
ADMIN_PASS = codecs.decode("pbeerpg-ubefr", "rot13")
'''

LOOK_ALIKES = '''"""Credential-named constants whose values are names, schemes and paths, not credentials."""

from pydantic import BaseModel

TOKEN_HEADER = "X-Items-Token"
API_KEY_HEADER = "X-" + "API-Key"
TOKEN_TYPE = "bearer"
PASSWORD_FIELD = "password"
SECRET_ENV = "ITEMS_" + "SECRET_KEY"
TOKEN_URL = "/auth/token"
JWT_ALGORITHM = "HS256"
PASSWORD_HINT = "Use at least {min_length} characters"
TOKEN_SCOPES = " ".join(["items:read", "items:write"])


class Token(BaseModel):
    """The login answer."""

    access_token: str
    token_type: str = "bearer"


def token_header(token: str, header: str = TOKEN_HEADER) -> dict[str, str]:
    """The header that carries a token."""
    return {header: token, "token_type": "bearer"}
'''


def test_secrets_rebuilt_from_literals_are_caught(stage: Stage) -> None:
    """Joined, concatenated, base64-, hex- and rot13-decoded secrets are each reported at their line."""
    staged = stage()
    staged.write("app/rebuilt.py", REBUILT)
    space, ruff = staged.ruff()
    outcome = check_secrets(space, ruff)
    by_line = {f.line: f.render() for f in outcome.findings if f.path == "app/rebuilt.py"}
    assert sorted(by_line) == [6, 8, 9, 10, 11]
    assert "TB0203 'AWS_ACCESS_KEY_ID' holds a credential built from joined literals" in by_line[6]
    assert "TB0204 AWS Access Key built from joined literals" in by_line[6]
    assert "GitHub Token built from concatenated literals" in by_line[8]
    assert "'DB_PASSWORD' holds a credential built from a base64-decoded literal" in by_line[9]
    assert "'SIGNING_KEY' holds a credential built from a hex-decoded literal" in by_line[10]
    assert "'ADMIN_PASS' holds a credential built from a rot13-decoded literal" in by_line[11]
    # One statement, one finding: the name rule and detect-secrets agree on line 6.
    assert len([f for f in outcome.findings if f.line == 6 and f.path == "app/rebuilt.py"]) == 1


def test_credential_names_holding_names_and_schemes_pass(stage: Stage) -> None:
    """A header name, a scheme, a field name, an env var name, a path, a template: no secret."""
    staged = stage()
    staged.write("app/auth_names.py", LOOK_ALIKES)
    space, ruff = staged.ruff()
    outcome = check_secrets(space, ruff)
    assert outcome.passed, outcome.findings
    assert "literals rebuilt" in outcome.verdict


def test_a_real_password_next_to_look_alikes_still_fails(stage: Stage) -> None:
    """The value rule does not excuse a credential-looking value under a credential name."""
    staged = stage()
    staged.write("app/auth_names.py", LOOK_ALIKES + 'ADMIN_PASSWORD = "opensesame42"\n')
    space, ruff = staged.ruff()
    outcome = check_secrets(space, ruff)
    assert [(f.path, f.line, f.rule) for f in outcome.findings] == [
        ("app/auth_names.py", 26, "S105")
    ]


def test_a_secret_fallback_of_getenv_is_a_secret(stage: Stage) -> None:
    """os.getenv("SECRET_KEY", "<literal>") ships the literal; a header-name fallback does not."""
    staged = stage()
    staged.write(
        "app/config.py",
        '"""Settings."""\n\nimport os\n\n'
        'SECRET_KEY = os.getenv("SECRET_KEY", "dev-only-s3cret-k3y")\n'
        'TOKEN_HEADER = os.environ.get("TOKEN_HEADER", "X-Api-Token")\n',
    )
    space, ruff = staged.ruff()
    outcome = check_secrets(space, ruff)
    assert [f.render() for f in outcome.findings] == [
        (
            "app/config.py:5: TB0203 'SECRET_KEY' holds a credential built from a literal as the "
            "fallback of os.getenv(); read it from the environment or settings"
        )
    ]


def test_character_codes_and_reversed_literals_are_rebuilt(stage: Stage) -> None:
    """A password spelled as chr() codes or reversed is reported; reversed header names are not."""
    staged = stage()
    staged.write(
        "app/spelled.py",
        '"""Spelled out."""\n\n'
        'DB_PASSWORD = "".join(chr(c) for c in [104, 117, 110, 116, 101, 114, 50, 50])\n'
        'API_SECRET = "".join(reversed("9x-terces-ym"))\n'
        'TOKEN_HEADER = "nekoT-smetI-X"[::-1]\n',
    )
    space, ruff = staged.ruff()
    outcome = check_secrets(space, ruff)
    assert [(f.line, f.rule) for f in outcome.findings] == [(3, "TB0203"), (4, "TB0203")]
