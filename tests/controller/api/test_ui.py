"""The web view over real HTTP (uvicorn on loopback): signing in, the pages, escaping, redaction, 404 rules.

The runs are played by :class:`RecordingExecutor`, which writes each run's record
the way ``controller.runs`` does (``RunRecord``, the gateway's ``TranscriptWriter``,
a real commit on ``taskbox/<key>``) and fills every text a sandbox or a task could
control with hostile markup. ``test_ui_browser.py`` reuses this world in Chromium.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from markupsafe import escape
from pydantic import JsonValue

from controller.admission import Admission, admit
from controller.api import create_app
from controller.api.auth import decode_cookie_token, encode_cookie_token
from controller.api.models import EventView
from controller.api.redact import HostPathRedactor
from controller.api.ui import routes as ui_routes
from controller.api.ui import views
from controller.api.ui.pages import ENVIRONMENT
from controller.api.ui.session import COOKIE_NAME, SECURITY_HEADERS
from controller.events import RunEvent
from controller.gateway.transcript import (
    TRANSCRIPT_FILE,
    ExchangeMeta,
    RecordedRequest,
    TranscriptEntry,
    TranscriptWriter,
)
from controller.runs import RunRecord, audit_record
from controller.settings import PROJECT_ROOT, Settings
from controller.store import FINAL_STATES
from taskbox_wire.contract import ConstraintReport, Task, TaskResult, TestResults
from tests.conftest import GIT_ENV, RepoFactory
from tests.controller.api.conftest import (
    TOKEN_ALL,
    TOKEN_ALPHA,
    TOKEN_UNKNOWN,
    TOKENS,
    ServedApi,
    serve_app_in_thread,
    task_body,
)
from tests.controller.api.fake_executor import wait_for

#: A file name the model chose: markup that would run if a page ever wrote it raw.
HOSTILE_NAME = "app/<img src=x onerror=alert(1)>.py"
#: Evidence of a failed check that quotes model-written text.
HOSTILE_EVIDENCE = "tests/test_api.py::test_create FAILED: <script>alert('evidence')</script>"
#: An event message built from a sandbox's text.
HOSTILE_EVENT = "</td></tr></table><script>alert('event')</script><b id=injected>bold</b>"
#: Model text with a bidi override and a terminal escape (shown escaped, never raw).
HOSTILE_MODEL_TEXT = "Done \u202eevil\u202c and \x1b[31mred\x1b[0m <iframe src=//x></iframe>"
#: The ten checks' names, as the judge reports them.
CHECK_NAMES = (
    "No SQL injection",
    "No hardcoded secrets",
    "Type hints everywhere",
    "Test coverage >= 80%",
    "All tests pass",
    "Contract compliance",
    "Pydantic validation",
    "No print() in production",
    "PEP 8 compliance (ruff check)",
    "Async consistency",
)


def ten_checks(failed: dict[int, list[str]]) -> list[ConstraintReport]:
    """The ten checks, those in ``failed`` failing with that evidence."""
    return [
        ConstraintReport(
            id=number,
            name=name,
            passed=number not in failed,
            evidence=failed.get(number, [f"check {number} passed on 2 owned files"]),
        )
        for number, name in enumerate(CHECK_NAMES, start=1)
    ]


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        env={**GIT_ENV, **(env or {})},
        check=True,
    )
    return done.stdout.decode().strip()


def land_commit(repo: Path, base: str, key: str, files: dict[str, str]) -> str:
    """A commit of ``files`` on ``base``, on ``taskbox/<key>``, made with plumbing as the controller does."""
    index = repo / ".git" / f"ui-test-index-{key}"
    env = {"GIT_INDEX_FILE": str(index)}
    _git(repo, "read-tree", base, env=env)
    for path, text in files.items():
        blob = subprocess.run(
            ["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
            input=text.encode(),
            capture_output=True,
            env=GIT_ENV,
            check=True,
        ).stdout.decode()
        _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob.strip()},{path}", env=env)
    tree = _git(repo, "write-tree", env=env)
    index.unlink()
    commit = _git(repo, "commit-tree", tree, "-p", base, "-m", f"feat(app): work [{key}]")
    _git(repo, "update-ref", f"refs/heads/taskbox/{key}", commit)
    return commit


class RecordingExecutor:
    """Plays a run by its key and writes its record as ``controller.runs`` does.

    ``OK…`` lands a real commit (with a hostile file name) and succeeds; any other key
    fails two checks with hostile evidence. Both emit a hostile event, write a mount
    plan from the real admission, a container as inspected (host paths in it) and a
    two-turn transcript.
    """

    def __init__(self, runs_dir: Path, pause: float = 0.0) -> None:
        """Write records under ``runs_dir``; ``pause`` seconds between stages (for screenshots)."""
        self.runs_dir = runs_dir
        self.pause = pause

    def admit(
        self, task: Task, repo: Path, base_ref: str, policy_name: str | None = None
    ) -> Admission:
        """The real admission."""
        return admit(
            task,
            repo=repo,
            base_ref=base_ref,
            policies_dir=PROJECT_ROOT / "policies",
            policy_name=policy_name,
        )

    def execute(
        self,
        *,
        run_id: str,
        task: Task,
        repo: Path,
        base_ref: str,
        emit: Callable[[RunEvent], None],
        cancel: threading.Event,  # noqa: ARG002 - the executor protocol's signature
    ) -> TaskResult:
        """Write the record of one run and return its result."""

        def step(event: RunEvent) -> None:
            time.sleep(self.pause)
            emit(event)

        admission = self.admit(task, repo, base_ref)
        record = RunRecord(self.runs_dir, run_id)
        record.create()
        step(RunEvent(stage="admitted", message=f"task {task.task_key} admitted"))
        record.write_json("plan.json", admission.plan.model_dump(mode="json"))
        record.write_json(
            "policy.json",
            {
                "digest": admission.policy.digest(),
                "policy": admission.policy.model_dump(mode="json"),
            },
        )
        record.write_json(
            "run.json", {"run_id": run_id, "image": "taskbox-sandbox:test", "image_id": "sha256:ab"}
        )
        record.write_json("container.json", self._inspected(record))
        step(RunEvent(stage="staged", message=f"{len(admission.plan.staged)} files staged"))
        step(RunEvent(stage="sandbox_started", message=f"container of {run_id} started"))
        self._transcript(record)
        # A sandbox's progress line, quoting model text and a host path of this run.
        step(RunEvent(stage="checks", message=f"{HOSTILE_EVENT} in {record.stage}/work"))
        step(RunEvent(stage="sandbox_exited", message="exit status 0 after 2.00 s"))
        key = task.task_key
        if key.startswith("OK"):
            commit = land_commit(
                repo,
                admission.base_commit,
                key,
                {HOSTILE_NAME: "print('<b>hi</b>')\n", "app/main.py": "app = 'greetings'\n"},
            )
            step(RunEvent(stage="judged", message="succeeded: all checks passed"))
            return TaskResult(
                task_key=key,
                status="succeeded",
                git_commit=commit,
                files_created=[HOSTILE_NAME, "app/main.py"],
                summary="judge: 10/10 checks passed",
                test_results=TestResults(total=4, passed=4, coverage_percent=96.0),
                constraints=ten_checks({}),
                missing_context=admission.plan.missing_context,
            )
        step(RunEvent(stage="judged", message="failed: checks 4 and 5 failed"))
        return TaskResult(
            task_key=key,
            status="failed",
            reason="the judge's checks failed: 4, 5",
            summary="judge: 8/10 checks passed",
            files_created=[HOSTILE_NAME],
            test_results=TestResults(total=3, passed=2, failed=1, coverage_percent=61.5),
            constraints=ten_checks(
                {
                    4: ["61.50% < 80.00% line coverage of owned source"],
                    5: [HOSTILE_EVIDENCE, "1 failed, 2 passed"],
                }
            ),
            missing_context=admission.plan.missing_context,
        )

    def _inspected(self, record: RunRecord) -> dict[str, Any]:
        """A container as ``docker inspect`` shows it: its mounts' sources are host paths."""
        work = str(record.stage / "work")
        return {
            "Config": {"Image": "sha256:ab", "User": "10001:10001", "NetworkDisabled": True},
            "HostConfig": {
                "NetworkMode": "none",
                "ReadonlyRootfs": True,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges:true"],
                "Memory": 2 * 2**30,
                "MemorySwap": 2 * 2**30,
                "NanoCpus": 10**9,
                "PidsLimit": 256,
                "Tmpfs": {"/tmp": "rw,noexec,nosuid,size=536870912"},
                "Mounts": [
                    {"Type": "bind", "Source": work, "Target": "/work", "ReadOnly": True},
                    {"Type": "bind", "Source": f"{work}/app", "Target": "/work/app"},
                ],
            },
            "Mounts": [{"Source": work, "Destination": "/work", "RW": False}],
            "LogPath": "/var/lib/docker/containers/abc/abc-json.log",
        }

    def _transcript(self, record: RunRecord) -> None:
        """Two model turns: a tool call that writes the hostile file, then a hostile closing note."""
        writer = TranscriptWriter(record.dir / TRANSCRIPT_FILE)
        now = datetime.now(UTC)
        prompt = {"role": "user", "content": [{"type": "text", "text": "# Task\nWrite the app."}]}
        tool_use = {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "write_file",
            "input": {"path": HOSTILE_NAME, "content": "print('<b>hi</b>')\n"},
        }
        answers = [
            ([prompt], [{"type": "text", "text": "Writing the file."}, tool_use], "tool_use"),
            (
                [
                    prompt,
                    {"role": "assistant", "content": [tool_use]},
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_1",
                                "content": f"wrote {HOSTILE_NAME} in {record.stage}/work",
                            }
                        ],
                    },
                ],
                [{"type": "text", "text": HOSTILE_MODEL_TEXT}],
                "end_turn",
            ),
        ]
        for seq, (messages, content, stop) in enumerate(answers):
            request = RecordedRequest(path="/v1/messages", body={"messages": messages})
            writer.append(
                TranscriptEntry(
                    seq=seq,
                    turn=seq + 1,
                    request=request,
                    request_sha256=request.sha256(),
                    status=200,
                    response={"role": "assistant", "content": content, "stop_reason": stop},
                    meta=ExchangeMeta(
                        request_id=f"req_{seq}",
                        upstream="scripted:test",
                        started_at=now,
                        finished_at=now,
                    ),
                )
            )

    def container_ids_for(self, run_id: str) -> list[str]:  # noqa: ARG002 - protocol
        """No containers: nothing runs."""
        return []

    def remove_run_containers(self, run_id: str) -> int:  # noqa: ARG002 - protocol
        """Nothing to remove."""
        return 0

    def remove_staging(self, run_id: str) -> None:
        """No staging folder is made."""

    def audit(self, run_id: str) -> dict[str, JsonValue] | None:
        """The record, as ``TaskRunner.audit`` reads it."""
        return audit_record(RunRecord(self.runs_dir, run_id))


@dataclass
class UiWorld:
    """A served app with finished runs: ``ok`` (landed) and ``bad`` (failed) in alpha, ``other`` in beta."""

    api: ServedApi
    root: Path
    repos: dict[str, Path]
    ok: str
    bad: str
    other: str

    def signed_in(self, token: str = TOKEN_ALL) -> httpx2.Client:
        """A client holding the sign-in cookie of ``token`` (signed in through the form)."""
        client = self.api.client(token=None)
        answer = client.post("/ui/sign-in", data={"token": token})
        assert answer.status_code == 303, answer.text
        return client


def submit_and_finish(api: ServedApi, key: str, repository: str) -> str:
    """Submit a task over the API and wait until it is final; its id."""
    client = api.client()
    body = task_body(
        key,
        repository,
        contextJson={f"{key}-ctx": {"relevant_files": ["README.md", ".env"]}},
    )
    answer = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": f"ui-{key}"})
    assert answer.status_code == 202, answer.text
    task_id: str = answer.json()["id"]
    wait_for(
        lambda: client.get(f"/v1/tasks/{task_id}").json()["status"] in FINAL_STATES,
        what=f"task {key} to finish",
    )
    return task_id


def make_ui_world(root: Path, make_repo: RepoFactory, pause: float = 0.0) -> UiWorld:
    """Repositories, settings and a served app with three finished tasks (``pause``: see the executor)."""
    files = {
        "README.md": "shop\n",
        "app/__init__.py": "",
        ".env": "TOKEN=not-for-the-sandbox\n",
    }
    alpha, _ = make_repo(files, name="ui-alpha")
    beta, _ = make_repo(files, name="ui-beta")
    repos = {"alpha": alpha, "beta": beta}
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        api_tokens=TOKENS,
        repositories=repos,
        database=root / "taskbox.sqlite3",
        runs_dir=root / "runs",
        max_concurrent_tasks=1,
        shutdown_grace_seconds=5,
    )
    api = serve_app_in_thread(create_app(settings, RecordingExecutor(settings.runs_dir, pause)))
    ok = submit_and_finish(api, "OK-101", "alpha")
    bad = submit_and_finish(api, "BE-102", "alpha")
    other = submit_and_finish(api, "BE-201", "beta")
    return UiWorld(api=api, root=root, repos=repos, ok=ok, bad=bad, other=other)


@pytest.fixture
def world(tmp_path: Path, make_repo: RepoFactory) -> Any:
    """The served web view with its three finished tasks; stopped at teardown."""
    made = make_ui_world(tmp_path, make_repo)
    yield made
    made.api.stop()


# --------------------------------------------------------------------------- signing in


def test_pages_without_a_cookie_send_the_browser_to_sign_in(world: UiWorld) -> None:
    """A page asked for without a cookie, or with one that is not a token, answers 303 to the sign-in form."""
    client = world.api.client(token=None)
    for path in ("/ui", "/ui/tasks", f"/ui/tasks/{world.bad}", "/ui/anything"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == "/ui/sign-in"
        assert world.bad not in answer.text
    forged = client.get(
        "/ui/tasks", headers={"Cookie": f"{COOKIE_NAME}={encode_cookie_token(TOKEN_UNKNOWN)}"}
    )
    assert forged.status_code == 303
    assert f"{COOKIE_NAME}=;" in forged.headers["set-cookie"]  # the bad cookie is cleared
    junk = client.get("/ui/tasks", headers={"Cookie": f"{COOKIE_NAME}=%%%not-base64"})
    assert junk.status_code == 303


def test_sign_in_form_is_public_and_locked_down(world: UiWorld) -> None:
    """The sign-in form and the stylesheet need no token and carry the CSP and no-store headers."""
    client = world.api.client(token=None)
    form = client.get("/ui/sign-in")
    assert form.status_code == 200
    assert '<input id="token" name="token" type="password"' in form.text
    assert "<script" not in form.text
    for name, value in SECURITY_HEADERS.items():
        assert form.headers[name] == value
    assert "default-src 'none'" in form.headers["content-security-policy"]
    css = client.get("/ui/static/ui.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


def test_a_wrong_token_is_refused_and_never_echoed(world: UiWorld) -> None:
    """Signing in with a token no setting knows answers 401, sets no cookie and does not repeat the token."""
    client = world.api.client(token=None)
    answer = client.post("/ui/sign-in", data={"token": TOKEN_UNKNOWN})
    assert answer.status_code == 401
    assert "not valid" in answer.text
    assert TOKEN_UNKNOWN not in answer.text
    assert "set-cookie" not in answer.headers
    assert client.post("/ui/sign-in", data={}).status_code == 401


def test_sign_in_sets_a_strict_http_only_cookie_scoped_to_the_view(world: UiWorld) -> None:
    """A valid token gets a 303 to the list and an HttpOnly, SameSite=Strict cookie for /ui only."""
    client = world.api.client(token=None)
    answer = client.post("/ui/sign-in", data={"token": TOKEN_ALL})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/tasks"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert "Max-Age=43200" in cookie
    assert TOKEN_ALL not in answer.headers["location"]
    assert client.get("/ui/tasks").status_code == 200


def test_the_cookie_never_calls_the_api(world: UiWorld) -> None:
    """The sign-in cookie is taken for reads of the view only: the API and any POST still need the header."""
    client = world.signed_in()
    cookie = {"Cookie": f"{COOKIE_NAME}={encode_cookie_token(TOKEN_ALL)}"}
    assert client.get("/v1/tasks", headers=cookie).status_code == 401
    assert client.get(f"/v1/tasks/{world.bad}/audit", headers=cookie).status_code == 401
    assert client.post(f"/v1/tasks/{world.bad}/cancel", headers=cookie).status_code == 401
    assert client.post("/ui/tasks", headers=cookie).status_code == 401


def test_sign_in_from_another_site_is_refused(world: UiWorld) -> None:
    """A sign-in form posted from another site's page (Origin or Sec-Fetch-Site) sets no cookie."""
    client = world.api.client(token=None)
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        answer = client.post("/ui/sign-in", data={"token": TOKEN_ALL}, headers=headers)
        assert answer.status_code == 403, headers
        assert "set-cookie" not in answer.headers
    same = client.post(
        "/ui/sign-in",
        data={"token": TOKEN_ALL},
        headers={"Origin": world.api.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 303


def test_sign_out_clears_the_cookie(world: UiWorld) -> None:
    """Signing out drops the cookie and the next page asks to sign in; another site cannot sign a person out."""
    client = world.signed_in()
    answer = client.post("/ui/sign-out")
    assert answer.status_code == 303
    assert f"{COOKIE_NAME}=" in answer.headers["set-cookie"]
    assert "Max-Age=0" in answer.headers["set-cookie"]
    assert client.get("/ui/tasks").status_code == 303
    again = world.signed_in()
    elsewhere = again.post("/ui/sign-out", headers={"Origin": "https://evil.example"})
    assert elsewhere.status_code == 403
    assert "set-cookie" not in elsewhere.headers
    assert again.get("/ui/tasks").status_code == 200


# --------------------------------------------------------------------------- the list


def _task_links(html: str) -> set[str]:
    return set(re.findall(r'href="/ui/tasks/([0-9a-f]{32})"', html))


def test_the_list_shows_what_the_token_may_see_with_filters(world: UiWorld) -> None:
    """The list has every visible task; the status and repository filters narrow it; alpha's token sees no beta task."""
    everyone = world.signed_in()
    page = everyone.get("/ui/tasks")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert _task_links(page.text) == {world.ok, world.bad, world.other}
    assert _task_links(everyone.get("/ui/tasks?status=succeeded").text) == {world.ok}
    assert _task_links(everyone.get("/ui/tasks?repository=beta").text) == {world.other}
    both = everyone.get("/ui/tasks?status=failed&repository=alpha")
    assert _task_links(both.text) == {world.bad}
    assert '<option value="failed" selected>' in everyone.get("/ui/tasks?status=failed").text

    alpha = world.signed_in(TOKEN_ALPHA)
    assert _task_links(alpha.get("/ui/tasks").text) == {world.ok, world.bad}
    forbidden = alpha.get("/ui/tasks?repository=beta")
    assert forbidden.status_code == 403
    assert _task_links(forbidden.text) == set()
    assert alpha.get("/ui/tasks?status=<b>").status_code == 422
    assert alpha.get("/ui/tasks?cursor=not-a-cursor").status_code == 422


def test_the_list_pages_with_the_api_cursor(
    world: UiWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a page size of 2, the first page links the next one, which holds the rest."""
    monkeypatch.setattr(ui_routes, "PAGE_SIZE", 2)
    client = world.signed_in()
    first = client.get("/ui/tasks")
    assert _task_links(first.text) == {world.ok, world.bad}
    found = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert found is not None
    second = client.get(found.group(1).replace("&amp;", "&"))
    assert _task_links(second.text) == {world.other}
    assert 'rel="next"' not in second.text


# --------------------------------------------------------------------------- one task


def test_a_task_of_another_repository_is_not_found_like_an_unknown_id(world: UiWorld) -> None:
    """alpha's token gets the same 404 page for beta's task as for an id that does not exist."""
    alpha = world.signed_in(TOKEN_ALPHA)
    hidden = alpha.get(f"/ui/tasks/{world.other}")
    unknown = alpha.get(f"/ui/tasks/{'0' * 32}")
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.text.replace(world.other, "ID") == unknown.text.replace("0" * 32, "ID")
    assert "BE-201" not in hidden.text
    assert alpha.get("/ui/tasks/not-an-id").status_code == 404


def test_the_failed_task_page_shows_checks_timeline_mounts_container_and_transcript(
    world: UiWorld,
) -> None:
    """The page of a failed run has its ten checks with the failures' evidence, the timeline, the plan and the container."""
    page = world.signed_in().get(f"/ui/tasks/{world.bad}")
    assert page.status_code == 200
    html = page.text
    assert "8 of 10 checks pass" in html
    assert html.count('<tr class="fail">') == 2
    assert "61.50% &lt; 80.00% line coverage of owned source" in html
    for name in CHECK_NAMES:
        assert escape(name) in html
    for stage in ("queued", "admitted", "staged", "sandbox_started", "judged", "finished"):
        assert f"<code>{stage}</code>" in html
    assert "No commit landed." in html
    # The plan: the owned folder is read-write, .env is refused with the policy's reason.
    assert "<td><code>app</code></td>" in html or "<td><code>app/</code></td>" in html
    assert "<td><code>.env</code></td>" in html
    assert "denied by rule" in html
    # The container as inspected, and the transcript's two turns (folded).
    assert "<th>read-only root filesystem</th><td>yes</td>" in html
    assert "<th>network</th><td>disabled</td>" in html
    assert "<th>mount /work</th><td>read-only (bind)</td>" in html
    assert html.count('<details class="turn">') == 2
    assert "tool call write_file" in html


def test_hostile_text_is_escaped_everywhere(world: UiWorld) -> None:
    """File names, evidence, event and model text with markup appear escaped; control and bidi characters as escapes."""
    client = world.signed_in()
    for task_id in (world.bad, world.ok):
        html = client.get(f"/ui/tasks/{task_id}").text
        for raw in ("<script", "<img", "<iframe", "<b>hi", "<b id=injected", "\u202e", "\x1b"):
            assert raw not in html, (task_id, raw)
        assert escape(HOSTILE_NAME) in html
        assert escape(HOSTILE_EVENT) in html
        assert "\\u202eevil\\u202c" in html
        assert "\\x1b[31mred" in html
    assert escape(HOSTILE_EVIDENCE) in client.get(f"/ui/tasks/{world.bad}").text


def test_the_landed_commit_diff_is_shown(world: UiWorld) -> None:
    """The succeeded task's page shows its commit's diff by file, the hostile file name as text."""
    html = world.signed_in().get(f"/ui/tasks/{world.ok}").text
    assert "10 of 10 checks pass" in html
    assert '<details class="file" open>' in html
    assert '<span class="add">+app = &#39;greetings&#39;</span>' in html
    assert escape(f"b/{HOSTILE_NAME}") in html
    assert "taskbox/OK-101" in html


def test_no_host_path_reaches_a_page(world: UiWorld) -> None:
    """Run folders and repository paths in events, the container and the transcript are shown as <host path>."""
    client = world.signed_in()
    for task_id in (world.bad, world.ok):
        html = client.get(f"/ui/tasks/{task_id}").text
        for host in (str(world.root), *map(str, world.repos.values()), "/var/lib/docker"):
            assert host not in html, (task_id, host)
        assert "&lt;host path&gt;" in html


def test_a_bearer_header_reads_the_view_too(world: UiWorld) -> None:
    """A script with a bearer token can read the pages without the form (same tokens, same rules)."""
    assert world.api.client(TOKEN_ALL).get(f"/ui/tasks/{world.bad}").status_code == 200
    assert world.api.client(TOKEN_ALPHA).get(f"/ui/tasks/{world.other}").status_code == 404


# --------------------------------------------------------------------------- units


def test_cookie_values_round_trip_and_junk_is_refused() -> None:
    """Any token survives the cookie encoding; a value that is not base64url, or empty, is no token."""
    for token in ("plain", "with space;and,comma=", "ünïcödé"):
        assert decode_cookie_token(encode_cookie_token(token)) == token
    for junk in ("", "%%%", "a b", "x" * 5000):
        assert decode_cookie_token(junk) is None


def test_templates_escape_markup_and_control_characters() -> None:
    """A value with markup, a bidi override and ESC is printed escaped by any template."""
    template = ENVIRONMENT.from_string("<p>{{ value }}</p><a title='{{ value }}'>x</a>")
    html = template.render(value="<script>'\u202e\x1b")
    assert html == (
        "<p>&lt;script&gt;&#39;\\u202e\\x1b</p><a title='&lt;script&gt;&#39;\\u202e\\x1b'>x</a>"
    )
    assert ENVIRONMENT.from_string("{{ value }}").render(value=None) == ""


def test_diff_files_split_and_classify() -> None:
    """A diff of two files becomes two parts with counted additions and removals."""
    text = (
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-old\n+new\n"
        "diff --git a/y.py b/y.py\nnew file mode 100644\n+++ b/y.py\n+a\n+b\n"
    )
    first, second = views.diff_files(text)
    assert first.title == "a/x.py b/x.py"
    assert (first.added, first.removed) == (1, 1)
    assert ("hunk", "@@ -1 +1 @@") in first.lines
    assert ("ctx", "+++ b/x.py") in first.lines
    assert (second.added, second.removed) == (2, 0)


def test_timeline_measures_each_stage() -> None:
    """Each event shows its time since the first and how long until the next."""
    start = datetime(2026, 12, 6, tzinfo=UTC)
    events = [
        EventView(seq=n, stage=s, message="m", data={}, created_at=start + timedelta(seconds=t))
        for n, s, t in ((1, "queued", 0), (2, "admitted", 1.5), (3, "finished", 64))
    ]
    rows = views.timeline(events)
    assert [(r.offset, r.took) for r in rows] == [
        ("0.0s", "1.5s"),
        ("1.5s", "1m02.5s"),
        ("1m04.0s", ""),
    ]


def test_landed_diff_refuses_what_is_not_a_commit_id(tmp_path: Path) -> None:
    """A commit value that git could read as an option is never passed to git."""
    redactor = HostPathRedactor(())
    assert views.landed_diff(tmp_path, "--output=/tmp/x", redactor) == (None, False)
    assert views.landed_diff(tmp_path, "a" * 40, redactor) == (None, False)  # not a repository


def test_container_settings_read_an_inspected_container() -> None:
    """The security review's rows come from the inspected settings, unset limits said plainly."""
    rows = dict(
        views.container_settings(
            {"HostConfig": {"ReadonlyRootfs": False, "Privileged": True, "Memory": 0}}
        )
    )
    assert rows["read-only root filesystem"] == "NO"
    assert rows["privileged"] == "YES"
    assert rows["memory"] == "not limited"
    assert rows["network"] == "ENABLED"


def test_no_template_turns_escaping_off() -> None:
    """No template marks a value safe or switches autoescape off, so every value goes through escaping."""
    folder = Path(views.__file__).parent / "templates"
    templates = sorted(folder.glob("*.html"))
    assert len(templates) >= 5
    for template in templates:
        text = template.read_text()
        for escape_hatch in ("|safe", "| safe", "autoescape false", "Markup("):
            assert escape_hatch not in text, (template.name, escape_hatch)
    assert ENVIRONMENT.autoescape is True
