"""Taskbox's benchmarks (B1-B8 of the performance notes): run them with ``scripts/bench [names]``.

Speed is measured here and nowhere else: tests never assert on time.
"""
