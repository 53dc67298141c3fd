"""The one rule set for names other systems cannot check out, and the checkout key deny rules compare."""

from __future__ import annotations

import pytest

from controller.pathnames import (
    component_key,
    path_key,
    unportable_path_reason,
    unportable_reason,
)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("aux.py", "device name 'AUX'"),
        ("CON", "device name 'CON'"),
        ("nul.txt", "device name 'NUL'"),
        ("Com1.py", "device name 'COM1'"),
        ("lpt9", "device name 'LPT9'"),
        ("prn.tar.gz", "device name 'PRN'"),
        ("aux  .md", "device name 'AUX'"),
        ("conout$", "device name 'CONOUT$'"),
        ("COM\u00b2.log", "device name 'COM\u00b2'"),
        ("a:b.py", "':'"),
        ("x<y", "'<'"),
        ("x>y", "'>'"),
        ('say"hi"', "'\"'"),
        ("a|b", "'|'"),
        ("why?", "'?'"),
        ("glob*.py", "'*'"),
        ("back\\slash", "'\\\\'"),
        ("tab\there", "'\\t'"),
        ("trailing.", "ends in a dot or a space"),
        ("trailing ", "ends in a dot or a space"),
        ("...", "ends in a dot or a space"),
        ("jo\u200dined", "macOS ignores"),
        ("PROGRA~1", "8.3 short name"),
        ("secret~2.txt", "8.3 short name"),
        ("", "not a file name"),
        ("..", "not a file name"),
    ],
)
def test_names_other_systems_cannot_check_out(name: str, words: str) -> None:
    """Each rule refuses its kind of name and says which rule it is."""
    reason = unportable_reason(name)
    assert reason is not None
    assert words in reason


@pytest.mark.parametrize(
    "name",
    [
        "auxiliary.py",
        "console.py",
        "com10.py",
        "lpt.py",
        "nul_check.py",
        "con-fig",
        "v1.2.3.py",
        ".hidden",
        "~backup",
        "backup~",
        "a~b.py",
        "toolong~1",
        "caf\u00e9.py",
        "README",
    ],
)
def test_ordinary_names_pass(name: str) -> None:
    """Names that merely start like a device name, hold dots or tildes, or use non-ASCII letters pass."""
    assert unportable_reason(name) is None


def test_a_path_reports_its_first_bad_component() -> None:
    """A path is refused for the first component that breaks a rule; a clean path passes."""
    assert unportable_path_reason("app/api/users.py") is None
    reason = unportable_path_reason("app/Aux/Nul.py")
    assert reason is not None
    assert "'Aux'" in reason


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("SECRETS.", "secrets"),
        ("secrets ", "secrets"),
        ("Secrets. .", "secrets"),
        ("se\u200ccrets", "secrets"),
        (".GIT", ".git"),
        ("Cafe\u0301", "caf\u00e9"),
        ("...", "..."),
    ],
)
def test_the_checkout_key_is_the_name_windows_and_macos_compare(name: str, key: str) -> None:
    """Trailing dots and spaces, HFS+-ignored characters, case and Unicode form all fold away."""
    assert component_key(name) == key


def test_a_path_key_folds_each_component_and_keeps_a_trailing_slash() -> None:
    """'SECRETS./x' and 'secrets /' are 'secrets/x' and 'secrets/' where deny rules match."""
    assert path_key("SECRETS./x") == "secrets/x"
    assert path_key("secrets /") == "secrets/"
