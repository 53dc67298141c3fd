"""Constraint 2, no hard-coded secrets: ruff S105/S106/S107, detect-secrets, rebuilt literals.

detect-secrets runs through its Python API with its default plugins and default
filters, except the inline ``# pragma: allowlist secret`` filter: that comment is
the model's to write, so it must not silence the check. Test files are scanned
for unmistakable credentials only (keys and tokens with a known shape), since
fixtures legitimately carry made-up passwords; ruff's S10x rules apply to
non-test code only, for the same reason.

ruff's name-based rules, and detect-secrets' KeywordDetector, report only when
the string looks like a credential (:func:`secret_values.looks_like_credential`):
``TOKEN_HEADER = "X-Items-Token"`` or ``TOKEN_TYPE = "bearer"`` is not a secret.
Values rebuilt from literals in non-test code (concatenated or joined parts, an
f-string of literals, base64/base32/hex-decoded or reversed literals, and the
literal fallback of ``os.getenv``) are scanned as if written out: with detect-secrets' known-shape plugins (TB0204), and by name
(TB0203: a credential-named target whose rebuilt value looks like a credential).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.ruff_run import HARNESS_RULES, RuffRun
from taskbox_runner.verify.secret_values import (
    Rebuilder,
    candidates,
    is_credential_name,
    looks_like_credential,
)
from taskbox_runner.verify.statements import one_per_statement
from taskbox_runner.verify.workspace import MAX_FILE_BYTES, Workspace

if TYPE_CHECKING:
    import ast
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
#: detect-secrets' name-based plugin: its findings count only for credential-looking values.
KEYWORD_PLUGIN = "KeywordDetector"
RULE_NAMED = "TB0203"
RULE_REBUILT = "TB0204"

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
    # Imported here, not at the top: detect-secrets costs ~0.1 s to import and only this
    # check needs it, so the judge's and the runner's boot paths do not pay for it.
    from detect_secrets.core.secrets_collection import SecretsCollection  # noqa: PLC0415
    from detect_secrets.settings import get_settings, transient_settings  # noqa: PLC0415

    types = {cls.__name__: kind for kind, cls in _plugin_classes().items()}
    findings = []
    with _SETTINGS_LOCK, transient_settings({"plugins_used": [{"name": n} for n in names]}):
        get_settings().disable_filters(ALLOWLIST_FILTER)
        collection = SecretsCollection(root=str(space.workdir))
        for rel in wanted:
            collection.scan_file(rel)
        for filename, secret in collection:
            plugin = next((n for n, kind in types.items() if kind == secret.type), secret.type)
            line = int(secret.line_number or 1)
            if plugin == KEYWORD_PLUGIN and not _keyword_value_is_credential(
                space, str(filename), line, secret.secret_value
            ):
                continue  # a credential-like name holding a header name, scheme or field name
            findings.append(
                Finding(
                    str(filename),
                    int(secret.line_number or 1),
                    RULE,
                    f"{secret.type} (detect-secrets {plugin}); read it from the environment or settings",
                )
            )
    return findings


def _keyword_value_is_credential(space: Workspace, rel: str, line: int, value: str | None) -> bool:
    """Whether the value KeywordDetector saw (rebuilt when the line assembles it) looks like one."""
    tree = space.tree(rel) if rel.endswith(".py") else None
    if tree is not None:
        builder = Rebuilder(tree)
        rebuilt = [
            r.value
            for c in candidates(tree)
            if c.line == line and (r := builder.rebuild(c.value)) is not None
        ]
        if rebuilt:
            return any(looks_like_credential(v) for v in rebuilt)
    return value is None or looks_like_credential(value)


def _scannable(space: Workspace, rel: str) -> bool:
    path = space.workdir / rel
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_FILE_BYTES
    except OSError:
        return False


def _strings_on_line(tree: ast.Module, line: int) -> list[str]:
    """String literals that start on ``line`` (what a ruff S10x finding there is about)."""
    import ast as _ast  # noqa: PLC0415 - only needed here; keeps the module's imports typing-only

    return [
        node.value
        for node in _ast.walk(tree)
        if isinstance(node, _ast.Constant)
        and isinstance(node.value, str)
        and node.lineno <= line <= (node.end_lineno or node.lineno)
    ]


def credential_like_ruff(space: Workspace, ruff: RuffRun, files: list[str]) -> list[Finding]:
    """ruff's S105-S107 findings whose string looks like a credential (not a header or scheme)."""
    kept = []
    for d in ruff.for_rules(HARNESS_RULES[2], set(files)):
        tree = space.tree(d.path)
        strings = _strings_on_line(tree, d.line) if tree is not None else []
        if not strings or any(looks_like_credential(s) for s in strings):
            kept.append(Finding(d.path, d.line, d.code, d.message))
    return kept


def rebuilt_secrets(space: Workspace, files: list[str]) -> list[Finding]:
    """Secrets assembled from literals: by detect-secrets' plugins, and by a credential name."""
    findings = []
    rebuilt: list[tuple[str, int, str, str, str]] = []
    for rel, tree in space.trees(files):
        builder = Rebuilder(tree)
        for candidate in candidates(tree):
            value = builder.rebuild(candidate.value) or builder.fallback(candidate.value)
            if value is None or not value.how:
                continue  # a plain literal: detect-secrets and ruff read it where it is written
            rebuilt.append((rel, candidate.line, candidate.name, value.value, value.how))
            if is_credential_name(candidate.name) and looks_like_credential(value.value):
                findings.append(
                    Finding(
                        rel,
                        candidate.line,
                        RULE_NAMED,
                        f"'{candidate.name}' holds a credential built from {value.how}; "
                        "read it from the environment or settings",
                    )
                )
    if not rebuilt:
        return findings
    from detect_secrets.core.scan import scan_line  # noqa: PLC0415 - see scan_secrets
    from detect_secrets.settings import get_settings, transient_settings  # noqa: PLC0415

    # Known shapes only: guessing plugins on a rebuilt value add noise the name rule covers.
    names = sorted(set(default_plugin_names()) - GUESSING_PLUGINS)
    with _SETTINGS_LOCK, transient_settings({"plugins_used": [{"name": n} for n in names]}):
        get_settings().disable_filters(ALLOWLIST_FILTER)
        for rel, line, name, text, how in rebuilt:
            quoted = text.replace("\\", "\\\\").replace('"', '\\"')
            kinds = sorted({s.type for s in scan_line(f'{name or "value"} = "{quoted}"')})
            if kinds:
                findings.append(
                    Finding(
                        rel,
                        line,
                        RULE_REBUILT,
                        f"{', '.join(kinds)} built from {how} (detect-secrets on the rebuilt value); "
                        "read it from the environment or settings",
                    )
                )
    return findings


def check_secrets(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 2 over every owned or changed file."""
    every_plugin = set(default_plugin_names())
    files = sorted(set(space.owned_files) | set(space.changed_files))
    code_files = [f for f in files if not space.is_test(f)]
    test_files = [f for f in files if space.is_test(f)]
    source = space.owned_source
    findings = credential_like_ruff(space, ruff, source)
    findings += scan_secrets(space, code_files, plugins=every_plugin)
    findings += scan_secrets(space, test_files, plugins=every_plugin - GUESSING_PLUGINS)
    findings += rebuilt_secrets(space, [f for f in code_files if f.endswith(".py")])
    findings = one_per_statement(space, findings)
    if ruff.error:
        findings.append(Finding(".", 1, "TB0202", ruff.error))
    verdict = (
        f"no secrets in {len(files)} owned/changed files (ruff S105-S107 on credential-like "
        "values + detect-secrets, literals rebuilt)"
        if not findings
        else f"{len(findings)} hard-coded secret(s)"
    )
    return CheckOutcome(2, verdict, findings)


def default_plugin_names() -> list[str]:
    """Class names of detect-secrets' default plugins."""
    return [cls.__name__ for cls in _plugin_classes().values()]


def _plugin_classes() -> dict[str, type]:
    """detect-secrets' plugin classes by secret type (its own function is untyped)."""
    from detect_secrets.core.plugins.util import (  # noqa: PLC0415 - see scan_secrets
        get_mapping_from_secret_type_to_class,
    )

    mapping: dict[str, type] = get_mapping_from_secret_type_to_class()
    return mapping
