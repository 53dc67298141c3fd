"""Sandbox backends and the container settings they apply."""
