"""The in-pod helper of a Kubernetes sandbox: ``stage-in`` fills the stage volume, ``run`` sends the out folder back.

``python -P -m taskbox_runner.podio stage-in`` (the init container) fetches the
run's ``in.tar`` once from the controller's exchange and extracts it under the
stage volume, refusing anything but regular files and folders under the known
sub-folders. ``python -P -m taskbox_runner.podio run -- CMD...`` (the main
container's PID 1) runs CMD under the limits of ``TASKBOX_RLIMITS``, reaps
orphans while it runs, then kills every other process of its uid and waits until
they are gone, packs the out folder's top-level regular files into one tar and
PUTs it once to the exchange. It exits with CMD's status (128+N for a signal),
or 125 when it could not stage, start or upload (one line on stderr says why).
Standard library only: it runs before any model code and after it, and must not
import what the command could shadow. The exchange tokens are never logged.

Only ever the command of a container: ``kill(-1)`` ends every process of its uid.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import logging
import os
import resource
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

from taskbox_wire.paths import OUTDIR
from taskbox_wire.pod import (
    ENV_EXCHANGE_TOKEN,
    ENV_EXCHANGE_URL,
    ENV_RLIMITS,
    EXCHANGE_CONFIG,
    EXCHANGE_IN,
    EXCHANGE_OUT,
    STAGE_DIR,
    STAGE_SUBDIRS,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

logger = logging.getLogger("taskbox_runner.podio")

#: Largest ``in.tar`` fetched (and largest sum of its members' sizes): past it, stage-in refuses.
DEFAULT_MAX_IN_BYTES = 4_000_000_000
#: Most members ``in.tar`` may hold.
MAX_IN_MEMBERS = 200_000
#: Largest out.tar sent back (the exchange note's ``max_bytes`` lowers it): the policy
#: schema's largest result plus bundle.
DEFAULT_MAX_OUT_BYTES = 2_064_000_000
#: What the tar adds per file at most (its header, an extended header for a long name,
#: padding) and at its end (two zero blocks, padded to a 10 KiB record).
TAR_MEMBER_OVERHEAD = 2048
TAR_END_OVERHEAD = 2 * tarfile.RECORDSIZE
#: Most files of the out folder sent back (the runner writes two, the judge one).
MAX_OUT_FILES = 64
#: Seconds one socket operation with the exchange may take.
HTTP_TIMEOUT_SECONDS = 120.0
#: Seconds the killed processes get to be gone before the helper gives up without uploading.
REAP_SECONDS = 20.0
CHUNK = 1 << 16
#: The limits ``TASKBOX_RLIMITS`` may name (Docker's ulimit names).
RLIMITS: dict[str, int] = {
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "memlock": resource.RLIMIT_MEMLOCK,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "stack": resource.RLIMIT_STACK,
}
#: prctl(2) options.
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
#: Exit status of the helper's own failures (stage-in refused, no upload).
EXIT_HELPER_FAILED = 125


class PodIOError(Exception):
    """A one-line reason the helper stops (never holding a token)."""


# --------------------------------------------------------------------------- HTTP


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    """A connection to ``url``'s host and the request path; no proxy, no redirect, no userinfo."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PodIOError("the exchange URL must be http(s)://host[:port]/path")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise PodIOError("the exchange URL must not carry userinfo, a query or a fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise PodIOError("the exchange URL has a bad port") from exc
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, port, timeout=HTTP_TIMEOUT_SECONDS), parts.path or "/"


def _check_token(token: str) -> str:
    """The token, when it can go in a header as it is (no whitespace or control characters)."""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise PodIOError("the exchange token is missing or malformed")
    return token


def fetch(url: str, token: str, into: IO[bytes], max_bytes: int) -> int:
    """GET ``url`` with the bearer ``token`` into ``into``; refuse a body past ``max_bytes``."""
    conn, path = _connection(url)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {_check_token(token)}"})
        response = conn.getresponse()
        if response.status != http.HTTPStatus.OK:
            raise PodIOError(f"the exchange answered {response.status} to GET {EXCHANGE_IN}")
        declared = response.getheader("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise PodIOError(f"{EXCHANGE_IN} is larger than {max_bytes} bytes")
        total = 0
        while chunk := response.read(CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise PodIOError(f"{EXCHANGE_IN} is larger than {max_bytes} bytes")
            into.write(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise PodIOError(f"cannot fetch {EXCHANGE_IN}: {type(exc).__name__}") from exc
    finally:
        conn.close()
    return total


# --------------------------------------------------------------------------- stage-in


def _check_member(member: tarfile.TarInfo, subdirs: frozenset[str]) -> str:
    """The member's name when it is a plain file or folder under a known sub-folder; else refuse."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise PodIOError(f"{EXCHANGE_IN} has an unsafe member name {name!r}")
    if parts[0] not in subdirs:
        raise PodIOError(f"{EXCHANGE_IN} has a member outside the staged folders: {name!r}")
    if member.isdir():
        return name
    if not member.isfile() or member.issparse():
        raise PodIOError(f"{EXCHANGE_IN} has a member that is not a regular file: {name!r}")
    if len(parts) == 1:
        raise PodIOError(f"{EXCHANGE_IN} has a file where a staged folder belongs: {name!r}")
    return name


def check_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    """Every member of ``tar``, after checking all of them (names, types, count, sizes)."""
    subdirs = frozenset(STAGE_SUBDIRS.values())
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    files: set[str] = set()
    folders: set[str] = set()  # every folder some member's name implies
    total = 0
    while (member := tar.next()) is not None:
        if len(members) >= MAX_IN_MEMBERS:
            raise PodIOError(f"{EXCHANGE_IN} has more than {MAX_IN_MEMBERS} members")
        name = _check_member(member, subdirs)
        if name in seen:
            raise PodIOError(f"{EXCHANGE_IN} has the member {name!r} twice")
        seen.add(name)
        parents = {name.rsplit("/", n)[0] for n in range(1, name.count("/") + 1)}
        # Refused now, not half-way through extracting: a file where a folder must be.
        if (member.isfile() and name in folders) or parents & files:
            raise PodIOError(f"{EXCHANGE_IN} has {name!r} both as a file and as a folder")
        folders |= parents
        if member.isfile():
            files.add(name)
        total += member.size
        if total > max_bytes:
            raise PodIOError(f"{EXCHANGE_IN}'s files are larger than {max_bytes} bytes together")
        members.append(member)
    return members


def stage_in(url: str, token: str, stage_dir: Path, max_bytes: int = DEFAULT_MAX_IN_BYTES) -> int:
    """Fetch ``<url>/in.tar`` once and extract it under ``stage_dir``; return the member count."""
    if not stage_dir.is_dir() or stage_dir.is_symlink():
        raise PodIOError(f"the stage folder {stage_dir} is missing")
    # Unnamed (O_TMPFILE where offered) in the stage volume: the init container's root is read-only.
    with tempfile.TemporaryFile(dir=stage_dir) as spool:
        fetch(url.rstrip("/") + "/" + EXCHANGE_IN, token, spool, max_bytes)
        spool.seek(0)
        try:
            with tarfile.open(fileobj=spool, mode="r:") as tar:
                members = check_members(tar, max_bytes)
                # The stdlib's own checks as well: no member may land outside stage_dir.
                tar.extractall(stage_dir, members=members, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise PodIOError(f"cannot extract {EXCHANGE_IN}: {type(exc).__name__}") from exc
    out = stage_dir / STAGE_SUBDIRS[OUTDIR]
    out.mkdir(mode=0o755, exist_ok=True)
    if out.is_symlink() or not out.is_dir():
        raise PodIOError("the staged out folder is not a folder")
    return len(members)


# --------------------------------------------------------------------------- run


def _prctl(option: int, value: int) -> bool:
    """prctl(option, value); False where it failed or libc has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def read_exchange_config(path: Path) -> tuple[str, str, int | None]:
    """The out.tar URL, token and size cap (None: unset) from the read-only exchange note."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PodIOError(f"cannot read the exchange note {path}: {type(exc).__name__}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), str) for key in ("url", "token")
    ):
        raise PodIOError(f"the exchange note {path} needs a string url and token")
    url, token = str(data["url"]), _check_token(str(data["token"]))
    max_bytes = data.get("max_bytes")
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes <= 0):
        raise PodIOError(f"the exchange note {path} has a max_bytes that is not a positive integer")
    # The note may name the run's exchange folder (as the init container's URL does) or the file.
    if not url.rstrip("/").endswith("/" + EXCHANGE_OUT):
        url = url.rstrip("/") + "/" + EXCHANGE_OUT
    _connection(url)[0].close()  # checks the URL's form; connects to nothing
    return url, token, max_bytes


def parse_rlimits(text: str | None) -> dict[int, tuple[int, int]]:
    """The limits ``TASKBOX_RLIMITS`` names, by resource, as the command will get them.

    A limit above the present hard one cannot be raised without privilege: the lower,
    present one stays, which is as strict. An unknown name or a malformed value is refused.
    """
    if not text:
        return {}
    try:
        wanted = json.loads(text)
    except ValueError as exc:
        raise PodIOError(f"{ENV_RLIMITS} is not JSON") from exc
    if not isinstance(wanted, dict):
        raise PodIOError(f"{ENV_RLIMITS} must map limit names to [soft, hard]")
    limits: dict[int, tuple[int, int]] = {}
    for name, pair in sorted(wanted.items()):
        if name not in RLIMITS:
            raise PodIOError(f"{ENV_RLIMITS} names an unknown limit {name!r}")
        if (
            not isinstance(pair, list)
            or len(pair) != 2  # noqa: PLR2004 - soft and hard
            or not all(type(v) is int and v >= 0 for v in pair)
            or pair[0] > pair[1]
        ):
            raise PodIOError(f"{ENV_RLIMITS}[{name!r}] must be [soft, hard] with soft <= hard")
        _, present = resource.getrlimit(RLIMITS[name])
        hard = pair[1] if present == resource.RLIM_INFINITY else min(pair[1], present)
        limits[RLIMITS[name]] = (min(pair[0], hard), hard)
    return limits


def run_child(command: Sequence[str], limits: dict[int, tuple[int, int]] | None = None) -> int:
    """Run ``command`` (this process's environment) under ``limits`` to its end; its status, 128+N for signal N."""

    def limit() -> None:
        # In the child only: the helper itself must still open the out files and a socket.
        for which, pair in (limits or {}).items():
            resource.setrlimit(which, pair)

    # The command gets the spec's environment: the limits are set, not handed on.
    environment = {name: value for name, value in os.environ.items() if name != ENV_RLIMITS}
    try:
        # preexec_fn is safe here: the helper has no other thread.
        child = subprocess.Popen(command, env=environment, preexec_fn=limit)  # noqa: PLW1509
    except (OSError, subprocess.SubprocessError) as exc:
        raise PodIOError(f"cannot start {command[0]!r}: {type(exc).__name__}") from exc

    def forward(signum: int, _frame: FrameType | None) -> None:
        # As PID 1 the helper would ignore SIGTERM: the command gets it to end cleanly.
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    # As init the helper reaps every orphan while it waits (as Docker's init does): zombies
    # left to pile up would count against the Pod's pids limit.
    while True:
        pid, wait_status = os.waitpid(-1, 0)
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(wait_status)
            child.returncode = status  # Popen must not wait for it again
            return 128 - status if status < 0 else status


def kill_and_reap(timeout: float = REAP_SECONDS) -> None:
    """SIGKILL every process this one may signal, then wait until none of its descendants is left.

    As the container's PID 1 (or a child subreaper) every process the command left
    behind is this one's child by now; once ``waitpid`` finds none, nothing can write
    to the out folder any more. Refuses (no upload) when they outlive ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        # Again each time: closes the window of a fork racing the first kill(-1).
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child is left, dead or alive
        if pid == 0:
            if time.monotonic() > deadline:
                raise PodIOError(f"processes of the command outlived SIGKILL for {timeout} s")
            time.sleep(0.01)


def _open_out_files(outdir: Path) -> list[tuple[str, int, os.stat_result]]:
    """The out folder's top-level regular files, opened without following links, by name."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    dir_fd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    opened: list[tuple[str, int, os.stat_result]] = []
    try:
        for name in sorted(os.listdir(dir_fd)):  # noqa: PTH208 - by fd: the folder is opened once, no link followed
            if not (name.isascii() and name.isprintable()):
                logger.warning("left out %s: not a plain ASCII name", ascii(name))
                continue
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode):
                    continue  # links, folders and special files never leave the Pod
                fd = os.open(name, flags, dir_fd=dir_fd)
            except OSError:
                continue
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                continue
            if len(opened) >= MAX_OUT_FILES:
                os.close(fd)
                logger.warning("left out %s: more than %d files", ascii(name), MAX_OUT_FILES)
                continue
            opened.append((name, fd, info))
    except BaseException:
        for _, fd, _ in opened:
            os.close(fd)
        raise
    finally:
        os.close(dir_fd)
    return opened


class _FdReader:
    """A file-like reader of exactly ``size`` bytes of ``fd`` from its start (pread: no shared offset)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.pos = fd, size, 0

    def read(self, n: int = -1) -> bytes:
        want = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        data = os.pread(self.fd, want, self.pos) if want > 0 else b""
        if len(data) < want:
            raise PodIOError("an out file shrank while it was packed")
        self.pos += len(data)
        return data


class _Sink:
    """Where the tar is written: counted only, or counted and sent on a connection."""

    def __init__(self, conn: http.client.HTTPConnection | None = None) -> None:
        self.conn, self.count = conn, 0

    def write(self, data: bytes) -> int:
        if self.conn is not None:
            self.conn.send(data)
        self.count += len(data)
        return len(data)


def _write_tar(sink: _Sink, files: list[tuple[str, int, os.stat_result]]) -> None:
    """The same bytes on every call for the same files: fixed owner, mode and format."""
    # A write-only sink suffices for "w|" (tarfile's stream mode only writes).
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for name, fd, info in files:
            member = tarfile.TarInfo(name)
            member.size = info.st_size
            member.mode = 0o644
            member.mtime = int(info.st_mtime)
            tar.addfile(member, _FdReader(fd, info.st_size))


def send_out(outdir: Path, url: str, token: str, max_bytes: int = DEFAULT_MAX_OUT_BYTES) -> int:
    """PUT the out folder's regular files as one tar of at most ``max_bytes`` to ``url``; its size.

    Files are taken by name while they fit; one that does not is left out (and logged).
    """
    try:
        files = _open_out_files(outdir)
    except OSError as exc:
        raise PodIOError(f"cannot read the out folder: {type(exc).__name__}") from exc
    try:
        kept: list[tuple[str, int, os.stat_result]] = []
        total = TAR_END_OVERHEAD
        for name, fd, info in files:
            size = info.st_size + TAR_MEMBER_OVERHEAD
            if total + size > max_bytes:
                logger.warning(
                    "left out %s: %s may be %d bytes at most", name, EXCHANGE_OUT, max_bytes
                )
                continue
            total += size
            kept.append((name, fd, info))
        # Sized first, then streamed: a Content-Length without a copy of the tar anywhere.
        counter = _Sink()
        _write_tar(counter, kept)
        if counter.count > max_bytes:  # the overheads above are upper bounds: never happens
            raise PodIOError(f"{EXCHANGE_OUT} would be larger than {max_bytes} bytes")
        conn, path = _connection(url)
        try:
            conn.putrequest("PUT", path)
            conn.putheader("Authorization", f"Bearer {_check_token(token)}")
            conn.putheader("Content-Type", "application/x-tar")
            conn.putheader("Content-Length", str(counter.count))
            conn.endheaders()
            sender = _Sink(conn)
            _write_tar(sender, kept)
            if sender.count != counter.count:
                raise PodIOError("the out tar changed while it was sent")
            response = conn.getresponse()
            response.read(CHUNK)
            if not 200 <= response.status < 300:  # noqa: PLR2004 - any success
                raise PodIOError(f"the exchange answered {response.status} to PUT {EXCHANGE_OUT}")
        except (OSError, http.client.HTTPException) as exc:
            raise PodIOError(f"cannot send {EXCHANGE_OUT}: {type(exc).__name__}") from exc
        finally:
            conn.close()
    finally:
        for _, fd, _ in files:
            os.close(fd)
    return counter.count


def run(
    command: Sequence[str],
    *,
    outdir: Path,
    exchange_config: Path,
    max_bytes: int = DEFAULT_MAX_OUT_BYTES,
) -> int:
    """Run ``command``, end everything it left, send the out folder; the command's status."""
    # Before the command starts: it may not ptrace this process or read its memory, and
    # whatever it leaves behind becomes this process's child (as it does for PID 1).
    if not _prctl(PR_SET_DUMPABLE, 0):
        logger.warning("could not make the helper non-dumpable")
    if os.getpid() != 1 and not _prctl(PR_SET_CHILD_SUBREAPER, 1):
        raise PodIOError("cannot become the child subreaper")
    url, token, note_max = read_exchange_config(exchange_config)
    limits = parse_rlimits(os.environ.get(ENV_RLIMITS))
    status = run_child(command, limits)
    kill_and_reap()
    size = send_out(outdir, url, token, max_bytes if note_max is None else min(max_bytes, note_max))
    logger.info("command exited %d; sent %d bytes of %s", status, size, EXCHANGE_OUT)
    return status


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -P -m taskbox_runner.podio")
    sub = parser.add_subparsers(dest="action", required=True)
    stage = sub.add_parser("stage-in", help=f"fetch {EXCHANGE_IN} and extract it")
    stage.add_argument("--stage-dir", type=Path, default=Path(STAGE_DIR))
    stage.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_IN_BYTES)
    wrap = sub.add_parser("run", help=f"run a command, then send {EXCHANGE_OUT}")
    wrap.add_argument("--out-dir", type=Path, default=Path(OUTDIR))
    wrap.add_argument("--exchange-config", type=Path, default=Path(EXCHANGE_CONFIG))
    wrap.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_OUT_BYTES)
    wrap.add_argument("command", nargs="+", help="the command, after --")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Do what the arguments say; the exit status (see the module's docstring)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="podio: %(message)s")
    try:
        if args.action == "stage-in":
            url = os.environ.get(ENV_EXCHANGE_URL, "")
            token = os.environ.get(ENV_EXCHANGE_TOKEN, "")
            count = stage_in(url, token, args.stage_dir, args.max_bytes)
            logger.info("staged %d members of %s", count, EXCHANGE_IN)
            return 0
        return run(
            args.command,
            outdir=args.out_dir,
            exchange_config=args.exchange_config,
            max_bytes=args.max_bytes,
        )
    except PodIOError as exc:
        logger.error("%s", exc)  # noqa: TRY400 - one line, never a traceback
        return EXIT_HELPER_FAILED


def _exit(status: int) -> NoReturn:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _exit(main())
