"""HTTP routes: ``tasks`` (the orchestrator's API under /v1/tasks) and ``system`` (health, metrics, policies)."""
