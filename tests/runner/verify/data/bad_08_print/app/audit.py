"""Audit trail written with print (the known-bad way)."""

from pprint import pprint


def record(event: str, user_id: int) -> None:
    """Write an audit line."""
    print(f"audit: {event} by {user_id}")


def dump(state: dict[str, int]) -> None:
    """Show the whole state."""
    pprint(state)
