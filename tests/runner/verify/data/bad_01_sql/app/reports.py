"""Reports straight from SQLite (the known-bad way: SQL built from strings)."""

import sqlite3

from sqlalchemy import text
from sqlalchemy.orm import Session


def users_named(conn: sqlite3.Connection, name: str) -> list[tuple[int, str]]:
    """Users with this name."""
    return conn.execute(f"SELECT id, name FROM users WHERE name = '{name}'").fetchall()


def users_sorted(conn: sqlite3.Connection, column: str) -> list[tuple[int, str]]:
    """Users ordered by a caller-chosen column."""
    query = "SELECT id, name FROM users ORDER BY " + column
    return conn.execute(query).fetchall()


def count_matching(session: Session, pattern: str) -> int:
    """Users whose e-mail matches."""
    statement = text("SELECT count(*) FROM users WHERE email LIKE '%s'" % pattern)
    return int(session.execute(statement).scalar_one())


def user_by_id(conn: sqlite3.Connection, user_id: int) -> tuple[int, str] | None:
    """The safe way, for contrast: a bound parameter."""
    return conn.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
