"""Policies as data: the schema, loading and linting, and the pure mount planner."""
