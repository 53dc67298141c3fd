"""The Kubernetes backend: one Pod and one NetworkPolicy per sandbox, built by pure functions (manifests.py)."""
