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
