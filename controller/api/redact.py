"""Host paths out of what the API returns: the run record keeps them, callers never see them.

A caller may learn what a run got (mounts inside the container, limits,
policy), never where things live on the controller's host: the runs folder
(staging), the repositories' checkouts, Docker's data root (overlay layers,
log files, ``/etc/hosts`` copies). :class:`HostPathRedactor` walks any JSON
value and replaces, in every string, each absolute path that is or lies under
a known host folder with a placeholder. The known folders come from the
settings, from Docker's defaults, and from the value itself: fields that are
host paths by definition (``GraphDriver.Data``, ``Mounts[].Source``,
``LogPath``, ``HostsPath``, ``ResolvConfPath``, ``HostnamePath``) are
redacted whole, and their values (and the Docker root they reveal) join the
known set, so the same path is caught wherever else it appears.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import JsonValue

#: What a redacted path becomes.
PLACEHOLDER = "<host path>"
#: Docker's and containerd's default data and run folders, known without asking the engine.
DEFAULT_ENGINE_ROOTS = (
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/run/docker",
    "/run/docker",
    "/run/containerd",
)
#: Keys of an inspected container whose string values are host paths, whatever they hold.
HOST_PATH_KEYS = frozenset({"LogPath", "HostsPath", "ResolvConfPath", "HostnamePath"})
#: Keys whose absolute-path values are host paths (a mount's source; a named volume is kept).
HOST_SOURCE_KEYS = frozenset({"Source", "source"})
#: Keys whose whole subtree holds host paths (the storage driver's layer folders).
HOST_PATH_TREES = frozenset({"GraphDriver"})
#: Characters that end a path inside a longer string (Binds use ``src:dst:mode``; layer lists use ``:``).
_END = r"\s:;,\"'`=<>()\[\]{}|"


def _root_forms(root: str | Path) -> set[str]:
    """The path as given and resolved, normalised; empty for a relative path or ``/`` itself."""
    path = PurePosixPath(root)
    if not path.is_absolute() or len(path.parts) < 2:  # noqa: PLR2004 - "/" and one component
        return set()
    forms = {str(path)}
    resolved = Path(root).resolve()
    if len(resolved.parts) >= 2:  # noqa: PLR2004
        forms.add(str(resolved))
    return forms


def _is_host_field(key: str, item: JsonValue) -> bool:
    if not isinstance(item, str) or not item:
        return False
    return key in HOST_PATH_KEYS or (key in HOST_SOURCE_KEYS and item.startswith("/"))


class HostPathRedactor:
    """Replaces host paths under known roots with :data:`PLACEHOLDER` in any JSON value."""

    def __init__(self, roots: Iterable[str | Path]) -> None:
        """``roots``: host folders whose paths must never leave the controller."""
        self._roots: set[str] = set()
        for root in (*roots, *DEFAULT_ENGINE_ROOTS):
            self._roots |= _root_forms(root)
        self._pattern = _pattern(self._roots)

    def redact(self, value: JsonValue) -> JsonValue:
        """A copy of ``value`` with every host path replaced; the input is not changed."""
        roots = set(self._roots)
        _collect_named_paths(value, roots)
        pattern = _pattern(roots)
        return _walk(value, pattern, within_host_tree=False)

    def redact_text(self, text: str) -> str:
        """``text`` with every path under a known root replaced."""
        return self._pattern.sub(PLACEHOLDER, text)


def _pattern(roots: set[str]) -> re.Pattern[str]:
    # Longest first, so a root inside another is not matched half-way.
    alternatives = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))
    # A root matches only as a whole path component: /srv/repo must not match /srv/repo2.
    return re.compile(rf"(?:{alternatives})(?:/[^{_END}]*)?(?=[{_END}]|$)")


def _collect_named_paths(value: JsonValue, roots: set[str]) -> None:
    """Add the values of host-path fields (and the Docker root a log path reveals) to ``roots``."""
    if isinstance(value, list):
        for item in value:
            _collect_named_paths(item, roots)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if isinstance(item, str) and _is_host_field(key, item):
            _add_paths(item, roots)
            if key == "LogPath" and "/containers/" in item:
                roots |= _root_forms(item.split("/containers/", 1)[0])
        elif key in HOST_PATH_TREES:
            for text in _strings(item):
                _add_paths(text, roots)
        else:
            _collect_named_paths(item, roots)


def _add_paths(text: str, roots: set[str]) -> None:
    """Each absolute path of a ``:``-separated list (layer lists, binds) becomes a root."""
    for piece in text.split(":"):
        roots |= _root_forms(piece)


def _strings(value: JsonValue) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _walk(value: JsonValue, pattern: re.Pattern[str], *, within_host_tree: bool) -> JsonValue:
    if isinstance(value, str):
        if within_host_tree and value:
            return PLACEHOLDER
        return pattern.sub(PLACEHOLDER, value)
    if isinstance(value, list):
        return [_walk(item, pattern, within_host_tree=within_host_tree) for item in value]
    if isinstance(value, dict):
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            out[key] = (
                PLACEHOLDER
                if _is_host_field(key, item)
                else _walk(
                    item, pattern, within_host_tree=within_host_tree or key in HOST_PATH_TREES
                )
            )
        return out
    return value
