"""The in-pod helper against a real HTTP exchange on loopback, with real (and hostile) tar files.

``stage-in`` runs in this process (it only fetches and extracts). ``run`` kills
every process of its uid with ``kill(-1)``, so it runs only inside a fresh user
and PID namespace (``unshare``), where that reaches nothing of the host.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from taskbox_runner import podio

from taskbox_wire.pod import (
    ENV_EXCHANGE_TOKEN,
    ENV_EXCHANGE_URL,
    ENV_RLIMITS,
    EXCHANGE_IN,
    EXCHANGE_OUT,
    STAGE_IN_COMMAND,
    wrapped_command,
)

IN_TOKEN = "in-token-0123456789abcdefghijklmnop"  # noqa: S105 - a test token, not a secret
OUT_TOKEN = "out-token-0123456789abcdefghijklmno"  # noqa: S105 - a test token, not a secret
RUN_PATH = "/exchange/run-1"


# --------------------------------------------------------------------------- the exchange


@dataclass
class Exchange:
    """A loopback exchange: serves ``in_tar`` once to IN_TOKEN, takes one out.tar from OUT_TOKEN."""

    url: str
    in_tar: bytes = b""
    send_length: bool = True
    put_status: int = HTTPStatus.CREATED
    received: list[bytes] = field(default_factory=list)
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def out_members(self) -> dict[str, tarfile.TarInfo]:
        """The single received out.tar's members by name."""
        assert len(self.received) == 1
        with tarfile.open(fileobj=io.BytesIO(self.received[0]), mode="r:") as tar:
            return {m.name: m for m in tar.getmembers()}

    def out_file(self, name: str) -> bytes:
        """One file of the received out.tar."""
        with tarfile.open(fileobj=io.BytesIO(self.received[0]), mode="r:") as tar:
            handle = tar.extractfile(name)
            assert handle is not None
            return handle.read()


def _handler(exchange: Exchange) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            """Quiet."""

        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            if exchange.send_length or status != HTTPStatus.OK:
                self.send_header("Content-Length", str(len(body)))
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            exchange.requests.append(("GET", self.path, auth))
            if self.path != f"{RUN_PATH}/{EXCHANGE_IN}" or auth != f"Bearer {IN_TOKEN}":
                self._answer(HTTPStatus.UNAUTHORIZED)
                return
            self._answer(HTTPStatus.OK, exchange.in_tar)

        def do_PUT(self) -> None:
            auth = self.headers.get("Authorization", "")
            exchange.requests.append(("PUT", self.path, auth))
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != f"{RUN_PATH}/{EXCHANGE_OUT}" or auth != f"Bearer {OUT_TOKEN}":
                self._answer(HTTPStatus.UNAUTHORIZED)
                return
            if exchange.received:
                self._answer(HTTPStatus.CONFLICT)  # single use
                return
            if exchange.put_status < HTTPStatus.MULTIPLE_CHOICES:
                exchange.received.append(body)
            self._answer(exchange.put_status)

    return Handler


@pytest.fixture
def exchange() -> Iterator[Exchange]:
    """A real HTTP exchange on 127.0.0.1 in a thread."""
    holder = Exchange(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(holder))
    holder.url = f"http://127.0.0.1:{server.server_address[1]}{RUN_PATH}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder
    server.shutdown()
    server.server_close()
    thread.join()


# --------------------------------------------------------------------------- tar files


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, None


GOOD = (
    _entry("work", tarfile.DIRTYPE),
    _file("work/app/main.py", b"print('hi')\n"),
    _file("work/tools/run.sh", b"#!/bin/sh\n", mode=0o4755),
    _file("taskbox/run.json", b"{}"),
    _file("base/app/main.py", b"print('base')\n"),
)


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    """An empty stage folder, with a sibling that must never be written."""
    (tmp_path / "outside").mkdir()
    path = tmp_path / "stage"
    path.mkdir()
    return path


def _stage_in(exchange: Exchange, stage: Path, *, max_bytes: int = 1 << 20) -> int:
    return podio.stage_in(exchange.url, IN_TOKEN, stage, max_bytes)


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------- stage-in


def test_stage_in_extracts_the_staged_tree_and_makes_out(exchange: Exchange, stage: Path) -> None:
    """A plain tree lands under the stage folder, high mode bits stripped, with an empty out/."""
    exchange.in_tar = _tar(*GOOD)

    count = _stage_in(exchange, stage)

    assert count == len(GOOD)
    assert (stage / "work/app/main.py").read_bytes() == b"print('hi')\n"
    assert stat.S_IMODE((stage / "work/tools/run.sh").stat().st_mode) == 0o755  # no setuid
    assert (stage / "out").is_dir()
    assert not any((stage / "out").iterdir())
    assert _everything(stage.parent / "outside") == set()
    assert exchange.requests == [("GET", f"{RUN_PATH}/{EXCHANGE_IN}", f"Bearer {IN_TOKEN}")]


HOSTILE = {
    "symlink": (_entry("work/link", tarfile.SYMTYPE, "/etc/passwd"),),
    "relative symlink": (_entry("work/link", tarfile.SYMTYPE, "app/main.py"),),
    "hard link": (_file("work/a"), _entry("work/b", tarfile.LNKTYPE, "work/a")),
    "dot-dot": (_file("work/../../outside/escaped"),),
    "dot-dot inside": (_file("work/app/../../outside/escaped"),),
    "absolute": (_file("/tmp/escaped-by-podio-test"),),
    "dot prefix": (_file("./work/a"),),
    "char device": (_entry("work/null", tarfile.CHRTYPE),),
    "block device": (_entry("work/disk", tarfile.BLKTYPE),),
    "fifo": (_entry("work/fifo", tarfile.FIFOTYPE),),
    "unknown folder": (_file("etc/cron.d/job"),),
    "file as a staged folder": (_file("work"),),
    "duplicate": (_file("work/a", b"1"), _file("work/a", b"2")),
    "file then folder": (_file("work/a"), _file("work/a/b")),
    "folder then file": (_file("work/a/b"), _file("work/a")),
    "file then folder entry": (_file("work/a"), _entry("work/a/c", tarfile.DIRTYPE)),
    "empty component": (_file("work//a"),),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_stage_in_refuses_hostile_tars_and_writes_nothing(
    case: str, exchange: Exchange, stage: Path
) -> None:
    """Links, devices, fifos, ../, absolute or unknown names and duplicates are refused before anything is written."""
    exchange.in_tar = _tar(_file("work/first.py", b"ok"), *HOSTILE[case])

    with pytest.raises(podio.PodIOError):
        _stage_in(exchange, stage)

    assert _everything(stage) == set()  # not even the good member before the bad one
    assert _everything(stage.parent / "outside") == set()
    assert not Path("/tmp/escaped-by-podio-test").exists()


def test_stage_in_never_follows_a_link_already_in_the_stage_folder(
    exchange: Exchange, stage: Path
) -> None:
    """A symlink standing at a staged folder's name is not written through (the data filter refuses)."""
    outside = stage.parent / "outside"
    (stage / "work").symlink_to(outside)
    exchange.in_tar = _tar(_file("work/escaped"))

    with pytest.raises(podio.PodIOError, match="cannot extract"):
        _stage_in(exchange, stage)

    assert _everything(outside) == set()


@pytest.mark.parametrize("send_length", [True, False], ids=["declared", "close-delimited"])
def test_stage_in_refuses_a_tar_past_the_cap(
    send_length: bool, exchange: Exchange, stage: Path
) -> None:
    """A body larger than the cap is refused while it streams, whether or not its length was declared."""
    exchange.send_length = send_length
    exchange.in_tar = _tar(_file("work/big.bin", b"\0" * 300_000))

    with pytest.raises(podio.PodIOError, match="larger than"):
        _stage_in(exchange, stage, max_bytes=100_000)

    assert _everything(stage) == set()


def test_stage_in_refuses_members_larger_together_than_the_cap(
    exchange: Exchange, stage: Path
) -> None:
    """The members' sizes count against the cap too (the tar's own size would not catch a sparse inflation)."""
    exchange.in_tar = _tar(_file("work/a", b"a" * 40_000), _file("work/b", b"b" * 40_000))

    with (
        tarfile.open(fileobj=io.BytesIO(exchange.in_tar)) as tar,
        pytest.raises(podio.PodIOError, match="together"),
    ):
        podio.check_members(tar, max_bytes=60_000)


def test_stage_in_refuses_a_truncated_tar(exchange: Exchange, stage: Path) -> None:
    """A tar cut in the middle of a member is refused with a reason, not half extracted silently."""
    whole = _tar(_file("work/a", b"a" * 5000))
    exchange.in_tar = whole[:2048]

    with pytest.raises(podio.PodIOError, match=EXCHANGE_IN):
        _stage_in(exchange, stage)


def test_stage_in_cli_fails_in_one_line_without_the_token(exchange: Exchange, stage: Path) -> None:
    """The init container's command exits non-zero with one line of reason that never shows a token."""
    exchange.in_tar = _tar(*GOOD)
    env = {**os.environ, ENV_EXCHANGE_URL: exchange.url, ENV_EXCHANGE_TOKEN: "wrong-" + IN_TOKEN}
    command = [sys.executable, *STAGE_IN_COMMAND[1:], "--stage-dir", str(stage)]

    failed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    env[ENV_EXCHANGE_TOKEN] = IN_TOKEN
    passed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    assert failed.returncode == podio.EXIT_HELPER_FAILED
    assert failed.stderr.strip().splitlines() == [
        f"podio: the exchange answered 401 to GET {EXCHANGE_IN}"
    ]
    assert IN_TOKEN not in failed.stderr
    assert passed.returncode == 0, passed.stderr
    assert IN_TOKEN not in passed.stderr + passed.stdout
    assert (stage / "work/app/main.py").is_file()


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/x", "http://127.0.0.1/x?t=1", "", "file:///x"],
)
def test_stage_in_refuses_odd_exchange_urls(url: str, stage: Path) -> None:
    """Only http(s)://host[:port]/path: no userinfo, query or other scheme, and nothing is fetched."""
    with pytest.raises(podio.PodIOError, match="exchange URL"):
        podio.stage_in(url, IN_TOKEN, stage)


# --------------------------------------------------------------------------- run (in namespaces)


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason="needs unprivileged user and PID namespaces (unshare)"
)


@dataclass
class Pod:
    """The main container's folders on the host."""

    root: Path
    out: Path
    note: Path

    def run(
        self,
        command: list[str],
        *,
        as_init: bool = True,
        max_bytes: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``podio run -- command`` in fresh user and PID namespaces, as their PID 1 or as a child of sh."""
        helper = [sys.executable, *wrapped_command(command)[1:]]
        options = ["--out-dir", str(self.out), "--exchange-config", str(self.note)]
        if max_bytes is not None:
            options += ["--max-bytes", str(max_bytes)]
        helper[5:5] = options  # after "run", before "--"
        namespaces = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
        if as_init:
            full = [*namespaces, *helper]
        else:
            # sh is PID 1; the helper is its child (a child subreaper), as in a Pod that shares PIDs.
            script = (
                '"$@"; status=$?; cp "$BEAT" "$BEAT.at-exit" 2>/dev/null; sleep 0.5; exit $status'
            )
            full = [*namespaces, "sh", "-c", script, "sh", *helper]
        environ = {**os.environ, "BEAT": str(self.root / "beat"), **(env or {})}
        return subprocess.run(
            full, env=environ, capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture
def pod(tmp_path: Path, exchange: Exchange) -> Pod:
    """An out folder and an exchange note pointing at the loopback exchange."""
    out = tmp_path / "out"
    out.mkdir()
    note = tmp_path / "exchange.json"
    note.write_text(json.dumps({"url": exchange.url, "token": OUT_TOKEN}), encoding="utf-8")
    return Pod(root=tmp_path, out=out, note=note)


def _py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


@needs_namespaces
@pytest.mark.parametrize(("code", "status"), [("0", 0), ("7", 7)])
def test_run_sends_regular_files_and_passes_the_status_on(
    code: str, status: int, pod: Pod, exchange: Exchange
) -> None:
    """The out folder's top-level regular files go back once as a tar; links, folders and fifos stay; the status passes on."""
    script = f"""
import os, sys
out = sys.argv[1]
open(os.path.join(out, "result.json"), "w").write('{{"ok": true}}')
open(os.path.join(out, "result.bundle"), "wb").write(b"B" * 70000)
os.symlink("/etc/passwd", os.path.join(out, "passwd"))
os.mkdir(os.path.join(out, "sub"))
open(os.path.join(out, "sub", "inner"), "w").write("no")
os.mkfifo(os.path.join(out, "fifo"))
sys.exit({code})
"""
    done = pod.run(_py(script, str(pod.out), "--not-an-option-of-podio"))

    assert done.returncode == status, done.stderr
    members = exchange.out_members()
    assert sorted(members) == ["result.bundle", "result.json"]
    assert all(m.isreg() and m.mode == 0o644 for m in members.values())
    assert exchange.out_file("result.json") == b'{"ok": true}'
    assert exchange.out_file("result.bundle") == b"B" * 70000
    assert OUT_TOKEN not in done.stderr + done.stdout


@needs_namespaces
def test_run_reports_death_by_signal_as_128_plus_n(pod: Pod, exchange: Exchange) -> None:
    """A command killed by SIGKILL exits the helper with 137, after the upload."""
    done = pod.run(_py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))

    assert done.returncode == 128 + 9, done.stderr
    assert exchange.out_members() == {}


TAMPER = """
import os, sys, time
out, beat = sys.argv[1], sys.argv[2]
open(os.path.join(out, "result.json"), "w").write("GOOD")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # a grandchild in its own session: it outlives the command
        n = 0
        while True:
            n += 1
            with open(os.path.join(out, "result.json"), "w") as handle:
                handle.write(f"TAMPERED {n}")
            with open(os.path.join(out, f"late-{n % 50}"), "w") as handle:
                handle.write(str(n))
            with open(beat, "w") as handle:
                handle.write(str(n))
    os._exit(0)
while not os.path.exists(beat):
    time.sleep(0.001)
sys.exit(0)
"""


@needs_namespaces
@pytest.mark.parametrize("as_init", [True, False], ids=["pid-1", "subreaper"])
def test_processes_left_behind_are_dead_before_the_pack(
    as_init: bool, pod: Pod, exchange: Exchange
) -> None:
    """A background process rewriting the out folder after the command ends is killed and reaped before packing."""
    beat = pod.root / "beat"

    done = pod.run(_py(TAMPER, str(pod.out), str(beat)), as_init=as_init)

    assert done.returncode == 0, done.stderr
    on_disk = {p.name: p.read_bytes() for p in pod.out.iterdir()}
    sent = {name: exchange.out_file(name) for name in exchange.out_members()}
    assert sent == on_disk  # nothing was written after the pack began
    # The process had really been running (it may die between truncating and writing).
    assert sent["result.json"] != b"GOOD"
    assert beat.exists()
    if not as_init:  # sh lived on for 0.5 s after the helper: the process did not
        assert beat.read_bytes() == (pod.root / "beat.at-exit").read_bytes()


@needs_namespaces
def test_the_command_cannot_kill_the_helper_as_pid_1(pod: Pod, exchange: Exchange) -> None:
    """As the namespace's PID 1 the helper ignores SIGKILL and SIGSTOP from the command and still uploads."""
    script = """
import os, signal, sys
open(os.path.join(sys.argv[1], "result.json"), "w").write("{}")
os.kill(os.getppid(), signal.SIGKILL)
os.kill(1, signal.SIGSTOP)
try:
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass
sys.exit(3)
"""
    done = pod.run(_py(script, str(pod.out)))

    assert done.returncode == 3, done.stderr
    assert exchange.out_file("result.json") == b"{}"


ORPHANS = """
import glob, os, sys, time
for _ in range(30):
    if os.fork() == 0:
        if os.fork() == 0:
            os._exit(0)  # an orphan that ends at once: init must reap it
        os._exit(0)
    os.wait()
def zombies():
    count = 0
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            count += open(path).read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            pass
    return count
deadline = time.monotonic() + 5
while zombies() and time.monotonic() < deadline:
    time.sleep(0.02)
open(os.path.join(sys.argv[1], "zombies.txt"), "w").write(str(zombies()))
"""


@needs_namespaces
def test_orphans_are_reaped_while_the_command_runs(pod: Pod, exchange: Exchange) -> None:
    """As PID 1 the helper reaps orphans during the run, so zombies never pile up against the pids limit."""
    done = pod.run(_py(ORPHANS, str(pod.out)))

    assert done.returncode == 0, done.stderr
    assert exchange.out_file("zombies.txt") == b"0"


@needs_namespaces
def test_a_refused_upload_fails_the_helper_in_one_line(pod: Pod, exchange: Exchange) -> None:
    """When the exchange refuses out.tar the helper exits non-zero with one line and no token."""
    exchange.put_status = HTTPStatus.FORBIDDEN

    done = pod.run(_py("import sys; sys.exit(0)"))

    assert done.returncode == podio.EXIT_HELPER_FAILED
    assert done.stderr.strip().splitlines() == [
        f"podio: the exchange answered 403 to PUT {EXCHANGE_OUT}"
    ]
    assert OUT_TOKEN not in done.stderr


@needs_namespaces
def test_without_an_exchange_note_the_command_never_runs(pod: Pod, exchange: Exchange) -> None:
    """A missing or malformed exchange note stops the helper before the command starts."""
    marker = pod.root / "ran"
    pod.note.write_text(json.dumps({"url": exchange.url}), encoding="utf-8")

    done = pod.run(_py("import sys; open(sys.argv[1], 'w').close()", str(marker)))

    assert done.returncode == podio.EXIT_HELPER_FAILED
    assert "needs a string url and token" in done.stderr
    assert not marker.exists()
    assert exchange.requests == []


@needs_namespaces
@pytest.mark.parametrize("where", ["option", "note"])
def test_files_past_the_out_cap_are_left_out(where: str, pod: Pod, exchange: Exchange) -> None:
    """A file that would take out.tar past its cap (option or the note's max_bytes) is left out, and said so."""
    script = """
import os, sys
out = sys.argv[1]
open(os.path.join(out, "a-huge.bin"), "wb").write(b"H" * 200000)
open(os.path.join(out, "result.json"), "w").write("{}")
"""
    if where == "note":
        note = {"url": exchange.url, "token": OUT_TOKEN, "max_bytes": 100_000}
        pod.note.write_text(json.dumps(note), encoding="utf-8")
    done = pod.run(_py(script, str(pod.out)), max_bytes=100_000 if where == "option" else None)

    assert done.returncode == 0, done.stderr
    assert sorted(exchange.out_members()) == ["result.json"]
    assert "left out a-huge.bin" in done.stderr


def test_exchange_note_names_the_folder_or_the_file(tmp_path: Path) -> None:
    """The note's url may be the run's exchange folder or out.tar itself; both PUT to out.tar."""
    note = tmp_path / "exchange.json"
    for url in ("http://ex:8080/exchange/r1", "http://ex:8080/exchange/r1/out.tar"):
        note.write_text(json.dumps({"url": url, "token": OUT_TOKEN}), encoding="utf-8")
        assert podio.read_exchange_config(note) == (
            "http://ex:8080/exchange/r1/out.tar",
            OUT_TOKEN,
            None,
        )
    note.write_text(json.dumps({"url": "http://ex/x", "token": "a b"}), encoding="utf-8")
    with pytest.raises(podio.PodIOError, match="malformed"):
        podio.read_exchange_config(note)


@pytest.mark.parametrize("max_bytes", [30_000, 60_000, 200_000])
def test_out_tar_never_exceeds_its_cap(max_bytes: int, tmp_path: Path, exchange: Exchange) -> None:
    """Whatever the names (long ones need extended headers) and sizes, the tar sent is within max_bytes."""
    out = tmp_path / "out"
    out.mkdir()
    for n in range(12):
        (out / (f"{n:02d}-" + "n" * (n * 20))).write_bytes(b"d" * (n * 3_001))

    size = podio.send_out(out, f"{exchange.url}/{EXCHANGE_OUT}", OUT_TOKEN, max_bytes)

    assert size == len(exchange.received[0]) <= max_bytes
    sent = exchange.out_members()
    assert sent
    assert all(exchange.out_file(name) == (out / name).read_bytes() for name in sent)


def test_exchange_note_max_bytes_must_be_a_positive_integer(tmp_path: Path) -> None:
    """A max_bytes in the note that is not a positive integer is refused."""
    note = tmp_path / "exchange.json"
    for bad in (0, -1, "100", 1.5, True):
        note.write_text(json.dumps({"url": "http://ex/x", "token": "t", "max_bytes": bad}))
        with pytest.raises(podio.PodIOError, match="max_bytes"):
            podio.read_exchange_config(note)


LIMITS = """
import json, os, resource, sys
names = {"nofile": resource.RLIMIT_NOFILE, "fsize": resource.RLIMIT_FSIZE, "core": resource.RLIMIT_CORE}
got = {name: list(resource.getrlimit(limit)) for name, limit in names.items()}
got["handed_on"] = [name for name in os.environ if name == "TASKBOX_RLIMITS"]
open(os.path.join(sys.argv[1], "limits.json"), "w").write(json.dumps(got))
"""


@needs_namespaces
def test_run_sets_the_limits_the_pod_spec_has_no_field_for(pod: Pod, exchange: Exchange) -> None:
    """TASKBOX_RLIMITS (the manifests' ulimits) hold in the command before it starts, and are not in its environment."""
    wanted = {"nofile": [64, 128], "fsize": [1_000_000, 1_000_000], "core": [0, 0]}

    done = pod.run(_py(LIMITS, str(pod.out)), env={ENV_RLIMITS: json.dumps(wanted)})

    assert done.returncode == 0, done.stderr
    assert json.loads(exchange.out_file("limits.json")) == {**wanted, "handed_on": []}


@needs_namespaces
@pytest.mark.parametrize(
    "value",
    [
        '{"bogus": [1, 1]}',
        '{"nofile": [10, 5]}',
        '{"nofile": 64}',
        "[1]",
        "{",
        '{"fsize": [-1, 2]}',
    ],
)
def test_unusable_limits_stop_the_command_from_starting(
    value: str, pod: Pod, exchange: Exchange
) -> None:
    """An unknown limit or a malformed TASKBOX_RLIMITS is refused before the command runs (fail closed)."""
    marker = pod.root / "ran"

    done = pod.run(
        _py("import sys; open(sys.argv[1], 'w').close()", str(marker)),
        env={ENV_RLIMITS: value},
    )

    assert done.returncode == podio.EXIT_HELPER_FAILED
    assert ENV_RLIMITS in done.stderr
    assert not marker.exists()
    assert exchange.received == []


@needs_namespaces
def test_the_limits_bind_the_command_not_the_helper(pod: Pod, exchange: Exchange) -> None:
    """With nofile 12 for the command the helper still opens the 30 out files it packs."""
    script = """
import os, sys
for n in range(30):
    with open(os.path.join(sys.argv[1], f"f{n:02d}"), "w") as handle:
        handle.write(str(n))
"""
    done = pod.run(_py(script, str(pod.out)), env={ENV_RLIMITS: '{"nofile": [12, 12]}'})

    assert done.returncode == 0, done.stderr
    assert len(exchange.out_members()) == 30
