"""Constraint 10: async endpoints, and nothing that blocks the event loop inside async code."""

from __future__ import annotations

from taskbox_runner.verify.async_endpoints import check_async
from taskbox_runner.verify.endpoints import ProjectTypes
from taskbox_runner.verify.models import CheckOutcome

from tests.runner.verify.conftest import Stage, Staged


def _check(staged: Staged) -> CheckOutcome:
    space = staged.space()
    return check_async(space, ProjectTypes.scan(space))


def test_good_project_passes(stage: Stage) -> None:
    """The known-good project's endpoints are async and await only async code."""
    outcome = _check(stage())
    assert outcome.passed, outcome.findings


def test_blocking_code_is_reported(stage: Stage) -> None:
    """A def endpoint, time.sleep, requests and a sync Session/query in async code are each reported."""
    outcome = _check(stage(overlay="bad_10_async"))
    assert not outcome.passed
    assert [f.render() for f in sorted(outcome.findings)] == [
        "app/api/slow.py:18: TB1001 endpoint sync_endpoint() is a plain def; make it async def",
        "app/api/slow.py:26: TB1002 sleepy() calls blocking time.sleep() inside async def",
        "app/api/slow.py:27: TB1002 sleepy() calls blocking requests.get() inside async def",
        "app/api/slow.py:32: TB1003 async endpoint users() takes a sync Session 'db'; use AsyncSession",
        "app/api/slow.py:34: TB1003 users() runs a sync ORM db.query() inside async def",
    ]


def test_unawaited_async_session_call_is_reported(stage: Stage) -> None:
    """Calling AsyncSession.execute without await is reported; awaited calls pass."""
    staged = stage()
    staged.write(
        "app/repo.py",
        "from sqlalchemy.ext.asyncio import AsyncSession\n\n\n"
        "async def count(session: AsyncSession) -> object:\n"
        "    ok = await session.execute('x')\n"
        "    session.execute('y')\n"
        "    return ok\n",
    )
    assert [f.render() for f in _check(staged).findings] == [
        "app/repo.py:6: TB1004 count() calls session.execute() on an AsyncSession without await"
    ]


DB_MODULE = '''"""A sync engine and session factory, shared by the routes."""

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

engine = create_engine("sqlite:///./items.db")
SessionLocal = sessionmaker(bind=engine)
'''

HELPERS = '''"""Sync helpers in another owned module."""

import time


def backoff(seconds: float) -> None:
    """Waits."""
    time.sleep(seconds)


def settle() -> None:
    """Waits, one call further down."""
    backoff(0.1)
'''

BLOCKING_ROUTES = '''"""Async routes that block the event loop one way or another."""

import sqlite3
from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import text

from app.db import SessionLocal, engine
from app.waits import settle

router = APIRouter(prefix="/items")


def _count_rows() -> int:
    """A sync helper with a sync driver."""
    conn = sqlite3.connect("items.db")
    return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


@router.get("/sqlite")
async def via_sqlite() -> int:
    """sqlite3 right in the endpoint."""
    conn = sqlite3.connect("items.db")
    return int(conn.execute("SELECT 1").fetchone()[0])


@router.get("/engine")
async def via_engine() -> int:
    """A sync SQLAlchemy engine and its connection."""
    with engine.begin() as conn:
        return int(conn.execute(text("SELECT 1")).scalar_one())


@router.get("/session")
async def via_session() -> int:
    """A session from a sync sessionmaker."""
    session = SessionLocal()
    return int(session.execute(text("SELECT 1")).scalar_one())


@router.get("/files")
async def via_files() -> str:
    """File reads."""
    banner = open("banner.txt").read()
    return banner + Path("motd.txt").read_text()


@router.get("/helper")
async def via_helper() -> int:
    """A sync helper in this module and one in another owned module."""
    settle()
    return _count_rows()
'''

NON_BLOCKING_ROUTES = '''"""Async routes that hand blocking work to threads or use async drivers."""

import asyncio
import time

import aiofiles
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.concurrency import run_in_threadpool

router = APIRouter(prefix="/calm")
engine = create_async_engine("sqlite+aiosqlite:///./items.db")


def _slow_sum(values: list[int]) -> int:
    """Blocking work, meant for a thread."""
    time.sleep(0.01)
    return sum(values)


def _label(count: int) -> str:
    """Pure computation."""
    return f"{count} items"


@router.get("/thread")
async def in_thread() -> int:
    """Blocking helpers passed to a thread, not called here."""
    first = await asyncio.to_thread(_slow_sum, [1, 2])
    return first + await run_in_threadpool(_slow_sum, [3])


@router.get("/db")
async def with_async_engine() -> str:
    """An async engine, awaited."""
    async with engine.begin() as conn:
        count = (await conn.execute(text("SELECT 1"))).scalar_one()
    return _label(count)


@router.get("/file")
async def with_aiofiles() -> str:
    """Async file I/O."""
    async with aiofiles.open("banner.txt") as handle:
        return await handle.read()
'''


def test_blocking_calls_through_helpers_and_sync_db_are_reported(stage: Stage) -> None:
    """sqlite3, a sync engine/connection/session, open().read(), read_text and sync helpers: each with its chain."""
    staged = stage()
    staged.write("app/db.py", DB_MODULE)
    staged.write("app/waits.py", HELPERS)
    staged.write("app/api/blocking.py", BLOCKING_ROUTES)
    outcome = _check(staged)
    found = {f.line: f.render() for f in outcome.findings if f.path == "app/api/blocking.py"}
    assert sorted(found) == [24, 25, 31, 32, 38, 39, 45, 46, 52, 53]
    assert (
        "TB1003 via_sqlite() runs sync database call sqlite3.connect() inside async def"
        in found[24]
    )
    assert "TB1003 via_sqlite() runs sync database call conn.execute()" in found[25]
    assert "TB1003 via_engine() runs sync database call engine.begin()" in found[31]
    assert "conn.execute()" in found[32]
    assert "TB1003 via_session() runs sync database call SessionLocal()" in found[38]
    assert "session.execute()" in found[39]
    assert "TB1002 via_files() calls blocking open() inside async def" in found[45]
    assert "TB1002 via_files() calls blocking Path('motd.txt').read_text() inside" in found[46]
    assert found[52] == (
        "app/api/blocking.py:52: TB1002 via_helper() reaches blocking time.sleep() through sync "
        "code: via_helper -> settle -> backoff -> time.sleep (app/waits.py:8)"
    )
    assert "via_helper -> _count_rows -> sqlite3.connect (app/api/blocking.py:17)" in found[53]


def test_threads_and_async_drivers_pass(stage: Stage) -> None:
    """Blocking helpers handed to to_thread/run_in_threadpool, an async engine and aiofiles pass."""
    staged = stage()
    staged.write("app/api/calm.py", NON_BLOCKING_ROUTES)
    outcome = _check(staged)
    assert outcome.passed, outcome.findings
    assert "sync helpers followed" in outcome.verdict


def test_django_orm_chains_in_async_code_are_reported(stage: Stage) -> None:
    """Item.objects.filter(...).count() in async def is a sync query; acount() awaited passes."""
    staged = stage()
    staged.write(
        "app/counts.py",
        '"""Counts."""\n\nfrom app.models import Item\n\n\n'
        "async def done_count() -> int:\n"
        '    """Sync ORM."""\n'
        "    return Item.objects.filter(done=True).count()\n\n\n"
        "async def done_count_async() -> int:\n"
        '    """Async ORM."""\n'
        "    return await Item.objects.filter(done=True).acount()\n",
    )
    assert [f.render() for f in _check(staged).findings] == [
        (
            "app/counts.py:8: TB1003 done_count() runs sync database call "
            "Item.objects.filter(done=True).count() inside async def; use acount()"
        )
    ]


def test_methods_of_owned_classes_are_followed(stage: Stage) -> None:
    """repo.load() on a module-level Repo() instance reaches the sleep inside; an async twin passes."""
    staged = stage()
    staged.write(
        "app/repo.py",
        '"""A repository with a sync and an async load."""\n\nimport asyncio\nimport time\n\n\n'
        "class Repo:\n"
        '    """Rows."""\n\n'
        "    def load(self) -> list[int]:\n"
        '        """Sync."""\n'
        "        time.sleep(0.1)\n"
        "        return [1]\n\n"
        "    async def aload(self) -> list[int]:\n"
        '        """Async."""\n'
        "        await asyncio.sleep(0.1)\n"
        "        return [1]\n\n\n"
        "repo = Repo()\n",
    )
    staged.write(
        "app/api/rows.py",
        '"""Rows."""\n\nfrom fastapi import APIRouter\n\nfrom app.repo import repo\n\n'
        'router = APIRouter()\n\n\n@router.get("/rows")\n'
        "async def rows() -> list[int]:\n"
        '    """Sync load."""\n'
        "    return repo.load()\n\n\n"
        '@router.get("/arows")\n'
        "async def arows() -> list[int]:\n"
        '    """Async load."""\n'
        "    return await repo.aload()\n",
    )
    assert [f.render() for f in _check(staged).findings] == [
        (
            "app/api/rows.py:13: TB1002 rows() reaches blocking time.sleep() through sync code: "
            "rows -> load -> time.sleep (app/repo.py:12)"
        )
    ]
