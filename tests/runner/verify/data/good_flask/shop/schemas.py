"""Request bodies."""

from pydantic import BaseModel, Field


class ItemIn(BaseModel):
    """A new item."""

    name: str = Field(min_length=1)
    price_cents: int = Field(ge=0)
