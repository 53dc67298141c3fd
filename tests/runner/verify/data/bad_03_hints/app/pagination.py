"""Paging helpers without type hints (the known-bad way)."""


def page_bounds(page, size=20):
    """First and last index of a page."""
    start = (page - 1) * size
    return start, start + size


class Pager:
    """Pages over a list."""

    def __init__(self, items):
        self.items = items

    def page(self, number: int):
        """One page."""
        start, end = page_bounds(number)
        return self.items[start:end]
