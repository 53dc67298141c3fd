"""A small users service."""
