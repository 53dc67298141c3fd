"""The sandbox's git bundle: header and pack checked before git reads a byte, then fetched and fsck'd.

The bundle only ever lands in a bare repository made for it (``git.IngestRepo``); every
object's size is read from the pack first (``controller.packcheck``), so nothing over the
policy's limits is inflated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.gitrepo import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_SYMLINK,
    TreeEntry,
)
from controller.packcheck import BundleCaps, PackProblem, PackRefusedError, check_pack

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from controller.policy.planner import MountPlan
    from controller.policy.schema import Policy
from controller.ingest.git import IngestRepo
from controller.ingest.paths import Change, ChangeRules, check_link_target, parse_raw_diff
from controller.ingest.refusals import MIB, IngestRefusal, refuse, shown

#: The one ref a sandbox bundle may carry (the runner's scratch branch).
BUNDLE_REF = "refs/heads/taskbox"


MAX_BUNDLE_HEADER_BYTES = 64 * 1024


#: Where the fetched work commit lives inside the ingest repository.
WORK_REF = "refs/taskbox/work"


BUNDLE_SIGNATURES = (b"# v2 git bundle\n", b"# v3 git bundle\n")


REF_LINE = re.compile(rb"([0-9a-f]{40}) ([\x21-\x7e]{1,1024})")


def bundle_tip(data: bytes, policy: Policy) -> str:
    """Parse the bundle header strictly and walk its pack; return the commit id of BUNDLE_REF.

    Every object's size is read from the pack before git sees a byte of it: an object
    or a delta result over ``policy``'s file limit, an absurd object count or total, or a
    pack that is not exactly git's format is refused here.
    """
    signature = next((s for s in BUNDLE_SIGNATURES if data.startswith(s)), None)
    if signature is None:
        raise refuse(IngestRefusal.BUNDLE_INVALID, "not a git bundle (no v2 or v3 signature)")
    end = data.find(b"\n\n", 0, MAX_BUNDLE_HEADER_BYTES)
    if end < 0:
        raise refuse(
            IngestRefusal.BUNDLE_INVALID,
            f"the bundle header does not end within {MAX_BUNDLE_HEADER_BYTES} bytes",
        )
    if data[end + 2 : end + 6] != b"PACK":
        raise refuse(IngestRefusal.BUNDLE_INVALID, "no pack data follows the bundle header")
    body = data[len(signature) : end]
    refs: list[tuple[bytes, bytes]] = []
    for line in body.split(b"\n") if body else []:
        if line.startswith(b"@"):
            # v3 capabilities: only the default hash; "@filter" (a partial bundle) is refused.
            if signature.startswith(b"# v2") or line != b"@object-format=sha1":
                raise refuse(
                    IngestRefusal.BUNDLE_INVALID,
                    f"bundle capability {shown(line)} is not accepted",
                )
        elif line.startswith(b"-"):
            raise refuse(
                IngestRefusal.BUNDLE_PREREQUISITES,
                "the bundle needs commits it does not carry; it must hold the whole history",
            )
        else:
            match = REF_LINE.fullmatch(line)
            if match is None:
                raise refuse(
                    IngestRefusal.BUNDLE_INVALID, f"malformed bundle header line {shown(line)}"
                )
            refs.append((match.group(1), match.group(2)))
    names = [name for _, name in refs]
    if names != [BUNDLE_REF.encode()]:
        carried = ", ".join(shown(n) for n in names[:5]) or "none"
        raise refuse(
            IngestRefusal.BUNDLE_REFS,
            f"the bundle must carry exactly one ref, {BUNDLE_REF}; it carries {carried}",
        )
    check_pack_sizes(memoryview(data)[end + 2 :], policy)
    return refs[0][0].decode()


#: How a pack refusal reads as an ingestion refusal.
PACK_REFUSALS = {
    PackProblem.OBJECT_TOO_LARGE: IngestRefusal.FILE_TOO_LARGE,
    PackProblem.TOO_MANY_OBJECTS: IngestRefusal.BUNDLE_TOO_LARGE,
    PackProblem.TOO_MUCH_DATA: IngestRefusal.BUNDLE_TOO_LARGE,
    PackProblem.MALFORMED: IngestRefusal.BUNDLE_INVALID,
}


def check_pack_sizes(pack: memoryview, policy: Policy) -> None:
    """Walk the bundle's pack (controller.packcheck): nothing over the caps reaches git."""
    caps = BundleCaps.of(policy)
    try:
        check_pack(pack, caps.pack_limits())
    except PackRefusedError as exc:
        reason = PACK_REFUSALS[exc.problem]
        limit = f" (the policy's file limit, {caps.max_object_bytes // MIB} MiB)"
        detail = f"{exc}{limit}" if reason is IngestRefusal.FILE_TOO_LARGE else str(exc)
        raise refuse(reason, detail) from exc


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def fetch_bundle(ingest: IngestRepo, bundle: Path, tip: str) -> None:
    """Verify, fetch and fsck the bundle inside the ingest repository."""
    ingest.git("bundle", "verify", "--quiet", str(bundle), refusal=IngestRefusal.BUNDLE_INVALID)
    heads = ingest.git("bundle", "list-heads", str(bundle), refusal=IngestRefusal.BUNDLE_INVALID)
    if heads.splitlines() != [f"{tip} {BUNDLE_REF}".encode()]:
        raise refuse(
            IngestRefusal.BUNDLE_REFS, "git reads other refs from the bundle than its header"
        )
    ingest.git(
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        "--no-write-fetch-head",
        "--no-auto-maintenance",
        "--end-of-options",
        str(bundle),
        f"{BUNDLE_REF}:{WORK_REF}",
        refusal=IngestRefusal.BUNDLE_INVALID,
    )
    ingest.git(
        "fsck",
        "--strict",
        "--no-dangling",
        "--no-progress",
        "--no-reflogs",
        refusal=IngestRefusal.OBJECTS_INVALID,
    )
    fetched = ingest.git(
        "rev-parse", "--verify", "--quiet", f"{WORK_REF}^{{commit}}", refusal=IngestRefusal.HISTORY
    )
    if fetched.decode().strip() != tip:
        raise refuse(IngestRefusal.HISTORY, f"{BUNDLE_REF} does not name commit {tip}")


def history(ingest: IngestRepo, tip: str) -> tuple[str, str | None]:
    """(base, work) for a base commit plus one work commit, or (base, None) for a base alone."""
    out = ingest.git("rev-list", "--parents", "--max-count=3", tip, refusal=IngestRefusal.HISTORY)
    rows = [line.split(" ") for line in out.decode().splitlines() if line]
    if len(rows) == 1 and len(rows[0]) == 1:
        return tip, None
    if len(rows) == 2 and len(rows[0]) == 2 and len(rows[1]) == 1 and rows[0][1] == rows[1][0]:  # noqa: PLR2004 - work + base
        return rows[1][0], tip
    shape = ", ".join(f"{row[0][:12]} with {len(row) - 1} parent(s)" for row in rows)
    more = " (and more)" if len(rows) >= 3 else ""  # noqa: PLR2004 - the --max-count above
    raise refuse(
        IngestRefusal.HISTORY,
        f"the bundle must hold a root base commit and at most one work commit on it; found {shape}{more}",
    )


def planned_tree(ingest: IngestRepo, plan: MountPlan, index: Path) -> str:
    """The tree of exactly the staged files, built with a temporary index (blobs need not exist)."""
    lines = b"".join(
        f"{MODE_EXECUTABLE if s.executable else MODE_FILE} {s.oid}\t".encode()
        + s.path.encode("utf-8", "surrogateescape")
        + b"\0"
        for s in plan.staged
    )
    if lines:
        ingest.git("update-index", "--add", "-z", "--index-info", input_bytes=lines, index=index)
    return ingest.git("write-tree", "--missing-ok", index=index).decode().strip()


def check_base_tree(ingest: IngestRepo, plan: MountPlan, base: str, index: Path) -> None:
    planned = planned_tree(ingest, plan, index)
    actual = ingest.git("rev-parse", f"{base}^{{tree}}").decode().strip()
    if actual == planned:
        return
    diff = ingest.git("diff-tree", "-r", "-z", "--no-renames", "--no-abbrev", planned, actual)
    changes = parse_raw_diff(diff)
    words = {"A": "extra", "D": "missing", "M": "different", "T": "different"}
    listed = "; ".join(f"{words.get(c.status, c.status)} {shown(c.raw_path)}" for c in changes[:5])
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""  # noqa: PLR2004 - listed above
    raise refuse(
        IngestRefusal.BASE_TREE,
        f"the bundle's base commit is not exactly the staged files: {listed}{more}",
    )


def check_blobs(ingest: IngestRepo, changes: Sequence[Change], policy: Policy) -> None:
    """Sizes within the sandbox's own file-size limit; symlinks (when allowed) stay inside."""
    written = [c for c in changes if c.adds_content]
    if not written:
        return
    request = "".join(f"{c.new_oid}\n" for c in written).encode()
    out = ingest.git("cat-file", "--batch-check", input_bytes=request)
    cap = policy.limits.file_size_mb * MIB
    for change, line in zip(written, out.decode().splitlines(), strict=True):
        _oid, kind, size = line.split(" ")
        if kind != "blob":
            raise refuse(IngestRefusal.OBJECTS_INVALID, f"{shown(change.path)} is a {kind}")
        if int(size) > cap:
            raise refuse(
                IngestRefusal.FILE_TOO_LARGE,
                f"{shown(change.path)} is {size} bytes, over the {policy.limits.file_size_mb} MiB file limit",
            )
        if change.new_mode == MODE_SYMLINK:
            check_link_target(change.path, ingest.git("cat-file", "blob", change.new_oid))


@dataclass(frozen=True, slots=True)
class CheckedWork:
    """A bundle that passed every check, still only inside the ingest repository."""

    ingest: IngestRepo
    sandbox_commit: str | None
    changes: list[Change]
    final_tree: dict[str, TreeEntry]


def check_bundle(
    folder: Path,
    bundle_bytes: bytes,
    *,
    plan: MountPlan,
    policy: Policy,
    real_base: Mapping[str, TreeEntry],
) -> CheckedWork:
    cap = policy.ingestion.max_bundle_bytes
    if len(bundle_bytes) > cap:
        raise refuse(
            IngestRefusal.BUNDLE_TOO_LARGE,
            f"the bundle is {len(bundle_bytes)} bytes, over the {cap}-byte cap",
        )
    tip = bundle_tip(bundle_bytes, policy)
    bundle = folder / "result.bundle"
    write_private(bundle, bundle_bytes)
    ingest = IngestRepo.create(folder / "ingest.git", policy)
    fetch_bundle(ingest, bundle, tip)
    base, work = history(ingest, tip)
    check_base_tree(ingest, plan, base, folder / "planned.index")
    if work is None:
        return CheckedWork(ingest, None, [], dict(real_base))
    # The work commit's message is the sandbox's text: it is never read. The subject of
    # the commit that lands is built on the host from the task (contract.commit_subject).
    diff = ingest.git("diff-tree", "-r", "-z", "--no-renames", "--no-abbrev", base, work)
    changes, final = ChangeRules(plan, policy, real_base).check(parse_raw_diff(diff))
    check_blobs(ingest, changes, policy)
    return CheckedWork(ingest, work, changes, final)
