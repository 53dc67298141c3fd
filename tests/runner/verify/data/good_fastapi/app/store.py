"""An in-memory user store, safe to share between concurrent requests."""

import asyncio

from app.schemas import User, UserCreate


class UserStore:
    """Users by id."""

    def __init__(self) -> None:
        self._users: dict[int, User] = {}
        self._lock = asyncio.Lock()

    async def add(self, new: UserCreate) -> User:
        """Store a new user and return it with its id."""
        async with self._lock:
            user = User(id=len(self._users) + 1, name=new.name, email=new.email)
            self._users[user.id] = user
            return user

    async def get(self, user_id: int) -> User | None:
        """The user with this id, if any."""
        return self._users.get(user_id)

    async def list(self, limit: int) -> list[User]:
        """Up to ``limit`` users, oldest first."""
        return list(self._users.values())[:limit]
