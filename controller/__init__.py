"""Taskbox controller: plans, runs and checks one locked-down container per agent task."""

__version__ = "0.1.0"
