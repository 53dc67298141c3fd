"""User routes."""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from app.schemas import User, UserCreate
from app.store import UserStore

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/users", tags=["users"])
_store = UserStore()


def get_store() -> UserStore:
    """The process-wide store (a dependency so tests can replace it)."""
    return _store


StoreDep = Annotated[UserStore, Depends(get_store)]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(payload: UserCreate, store: StoreDep) -> User:
    """Create a user."""
    user = await store.add(payload)
    logger.info("created user %d", user.id)
    return user


@router.get("/{user_id}")
async def read_user(user_id: int, store: StoreDep) -> User:
    """One user by id."""
    user = await store.get(user_id)
    if user is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="user not found")
    return user


@router.get("")
async def list_users(
    store: StoreDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[User]:
    """Users, oldest first."""
    return await store.list(limit)
