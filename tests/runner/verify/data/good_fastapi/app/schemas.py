"""Request and response models."""

from pydantic import BaseModel, ConfigDict, Field


class UserCreate(BaseModel):
    """What a caller sends to create a user."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")


class User(BaseModel):
    """A stored user."""

    id: int
    name: str
    email: str
