"""Names other systems cannot check out, and how Windows and macOS see a name: one pure rule set.

The planner (owned paths) and ingestion (names a commit adds) both ask this module, so a
name refused in one place is refused in the other. It also gives the *checkout key*
of a path, the form under which Windows and macOS compare names (case folded, Unicode
normalised, trailing dots and spaces dropped, characters HFS+ ignores dropped): deny
rules, ``.git`` checks and case collisions compare keys, so ``SECRETS./``, ``secrets /``
and ``se\u200ccrets/`` are all ``secrets/`` there. No I/O, no imports from the controller.

Sources for the rules: Microsoft's "Naming Files, Paths, and Namespaces" (reserved device
names, forbidden characters, no trailing dot or space) and git's own ``is_valid_win32_path``
and ``is_hfs_dotgit`` (core.protectNTFS, core.protectHFS).
"""

from __future__ import annotations

import re
import unicodedata

#: Device names Windows reserves in every folder, with or without an extension or trailing
#: spaces (``aux.py``, ``NUL .txt``): opening one opens the device, not a file. COM0/LPT0
#: and the superscript forms are reserved on current Windows too; CLOCK$ on older ones.
RESERVED_DEVICE_NAMES: frozenset[str] = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$", "clock$"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in "0123456789\u00b9\u00b2\u00b3"}
)

#: Characters Windows refuses in a name (``:`` also opens an NTFS alternate data stream,
#: ``a:b.py`` is stream ``b.py`` of file ``a``), the backslash (a separator there) and the
#: ASCII controls.
FORBIDDEN_CHARACTERS = frozenset('<>:"|?*\\') | frozenset(chr(c) for c in range(0x20))

#: Code points HFS+ ignores when it compares names (git's ``is_hfs_dotgit`` list): on a
#: Mac, ``.g\u200cit`` is ``.git``.
HFS_IGNORED = frozenset(
    "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
)

#: The shape of a Windows 8.3 short name (``PROGRA~1``, ``SECRET~1.TXT``): on a volume with
#: short names such a name can stand for another file or folder (git refuses ``git~1``).
_SHORT_NAME = re.compile(r"[^.~]{1,6}~[0-9]{1,6}(?:\.[^.]{0,3})?", re.IGNORECASE)

_HFS_IGNORED_TABLE = dict.fromkeys(map(ord, HFS_IGNORED))


def fold(text: str) -> str:
    """``text`` case folded and NFC-normalised, as a case-insensitive, normalising file system compares it."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


def component_key(name: str) -> str:
    """The name Windows or macOS would give ``name`` (one path component) when comparing it.

    Trailing dots and spaces go (Windows drops them), HFS+-ignored code points go, then
    case and Unicode form are folded. A name that folds to nothing keeps its folded form,
    so ``..`` and ``...`` never become the empty name.
    """
    key = fold(name.translate(_HFS_IGNORED_TABLE)).rstrip(". ")
    return key or fold(name)


def path_key(path: str) -> str:
    """``path`` ('/'-separated) with every component replaced by its :func:`component_key`."""
    return "/".join(component_key(part) if part else part for part in path.split("/"))


def unportable_reason(name: str) -> str | None:  # noqa: PLR0911 - one return per rule reads best
    """Why ``name`` (one path component) cannot be checked out as itself on Windows or macOS, or None."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a file name"
    bad = sorted({c for c in name if c in FORBIDDEN_CHARACTERS})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"{name!r} contains {shown}, which Windows does not allow in a name"
    if name.endswith((".", " ")):
        return f"{name!r} ends in a dot or a space, which Windows drops (it would be another name there)"
    if any(c in HFS_IGNORED for c in name):
        return (
            f"{name!r} contains a character macOS ignores in names (it would be another name there)"
        )
    # Windows takes the device name up to the first dot, trailing spaces dropped.
    stem = fold(name.split(".", 1)[0].rstrip(" "))
    if stem in RESERVED_DEVICE_NAMES:
        return f"{name!r} is the reserved Windows device name {stem.upper()!r}"
    if _SHORT_NAME.fullmatch(name):
        return f"{name!r} has the form of a Windows 8.3 short name, which can stand for another name there"
    return None


def unportable_path_reason(path: str) -> str | None:
    """Why ``path`` ('/'-separated, relative) cannot be checked out everywhere: its first bad component, or None."""
    for part in path.split("/"):
        reason = unportable_reason(part)
        if reason is not None:
            return reason
    return None
