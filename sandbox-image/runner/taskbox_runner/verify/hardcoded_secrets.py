"""Constraint 2, no hard-coded secrets: ruff S105/S106/S107 plus detect-secrets.

detect-secrets runs through its Python API with its default plugins and default
filters, except the inline ``# pragma: allowlist secret`` filter: that comment is
the model's to write, so it must not silence the check. Test files are scanned
for unmistakable credentials only (keys and tokens with a known shape), since
fixtures legitimately carry made-up passwords; ruff's S10x rules apply to
non-test code only, for the same reason.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.secrets_collection import SecretsCollection
from detect_secrets.settings import get_settings, transient_settings

from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.ruff_run import HARNESS_RULES, RuffRun
from taskbox_runner.verify.workspace import MAX_FILE_BYTES, Workspace, is_test_path

if TYPE_CHECKING:
    from collections.abc import Iterable

logger = logging.getLogger(__name__)

ALLOWLIST_FILTER = "detect_secrets.filters.allowlist.is_line_allowlisted"
#: Plugins that guess from names or randomness; test fixtures trip them on purpose.
GUESSING_PLUGINS = frozenset(
    {
        "KeywordDetector",
        "Base64HighEntropyString",
        "HexHighEntropyString",
        "BasicAuthDetector",
        "IPPublicDetector",
    }
)
RULE = "TB0201"

# detect-secrets keeps its settings in a process-wide singleton.
_SETTINGS_LOCK = threading.Lock()


def scan_secrets(
    space: Workspace, files: Iterable[str], *, plugins: Iterable[str]
) -> list[Finding]:
    """detect-secrets over ``files`` (repository-relative) with the given plugins."""
    names = sorted(plugins)
    wanted = [f for f in files if _scannable(space, f)]
    if not wanted or not names:
        return []
    types = {cls.__name__: kind for kind, cls in _plugin_classes().items()}
    findings = []
    with _SETTINGS_LOCK, transient_settings({"plugins_used": [{"name": n} for n in names]}):
        get_settings().disable_filters(ALLOWLIST_FILTER)
        collection = SecretsCollection(root=str(space.workdir))
        for rel in wanted:
            collection.scan_file(rel)
        for filename, secret in collection:
            plugin = next((n for n, kind in types.items() if kind == secret.type), secret.type)
            findings.append(
                Finding(
                    str(filename),
                    int(secret.line_number or 1),
                    RULE,
                    f"{secret.type} (detect-secrets {plugin}); read it from the environment or settings",
                )
            )
    return findings


def _scannable(space: Workspace, rel: str) -> bool:
    path = space.workdir / rel
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_FILE_BYTES
    except OSError:
        return False


def check_secrets(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 2 over every owned or changed file."""
    every_plugin = set(default_plugin_names())
    files = sorted(set(space.owned_files) | set(space.changed_files))
    code_files = [f for f in files if not is_test_path(f)]
    test_files = [f for f in files if is_test_path(f)]
    findings = [
        Finding(d.path, d.line, d.code, d.message)
        for d in ruff.for_rules(HARNESS_RULES[2], set(space.owned_source))
    ]
    findings += scan_secrets(space, code_files, plugins=every_plugin)
    findings += scan_secrets(space, test_files, plugins=every_plugin - GUESSING_PLUGINS)
    if ruff.error:
        findings.append(Finding(".", 1, "TB0202", ruff.error))
    verdict = (
        f"no secrets in {len(files)} owned/changed files (ruff S105-S107 + detect-secrets)"
        if not findings
        else f"{len(findings)} hard-coded secret(s)"
    )
    return CheckOutcome(2, verdict, findings)


def default_plugin_names() -> list[str]:
    """Class names of detect-secrets' default plugins."""
    return [cls.__name__ for cls in _plugin_classes().values()]


def _plugin_classes() -> dict[str, type]:
    """detect-secrets' plugin classes by secret type (its own function is untyped)."""
    mapping: dict[str, type] = get_mapping_from_secret_type_to_class()
    return mapping
