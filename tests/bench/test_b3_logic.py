"""B3's pure logic: the knee of a throughput curve, flatness past it, memory per running task, levels."""

from __future__ import annotations

import math

import pytest

from bench.b3_concurrency import memory_per_running_task, parse_levels, scaling
from bench.harness import BenchError


def test_the_knee_is_the_smallest_level_within_ten_percent_of_the_best() -> None:
    """Rising to a plateau: the knee is where the plateau starts, and the plateau is flat."""
    found = scaling([(1, 5.0, 0), (2, 8.0, 0), (4, 9.5, 0), (8, 10.0, 0), (16, 9.8, 0)])
    assert found is not None
    assert found.knee == 4
    assert found.best_level == 8
    assert found.levels_past_knee == [8, 16]
    assert found.lowest_past_ratio == 0.98
    assert found.flat is True
    assert "flat, no collapse" in found.summary()


def test_a_level_just_outside_ten_percent_is_not_the_knee() -> None:
    """89 % of the best is below the knee's threshold; 90 % is at it."""
    assert scaling([(1, 8.9, 0), (2, 10.0, 0)]).knee == 2  # type: ignore[union-attr]
    assert scaling([(1, 9.0, 0), (2, 10.0, 0)]).knee == 1  # type: ignore[union-attr]


def test_a_collapse_past_the_knee_is_not_flat() -> None:
    """Throughput that falls below 85 % of the best past the knee is a collapse."""
    found = scaling([(1, 5.0, 0), (2, 9.0, 0), (4, 10.0, 0), (8, 8.4, 0), (16, 4.0, 0)])
    assert found is not None
    assert found.knee == 2
    assert found.lowest_past_ratio == 0.4
    assert found.flat is False
    assert "NOT flat" in found.summary()


def test_errors_from_the_knee_on_make_it_not_flat() -> None:
    """Throughput holds but a task failed at a level past the knee: not flat."""
    found = scaling([(1, 5.0, 0), (2, 10.0, 0), (4, 10.0, 1)])
    assert found is not None
    assert found.errors_from_knee == 1
    assert found.flat is False


def test_errors_below_the_knee_do_not_count_against_flatness() -> None:
    """An error at a level below the knee is reported by the level, not as a collapse."""
    found = scaling([(1, 5.0, 1), (2, 10.0, 0), (4, 10.0, 0)])
    assert found is not None
    assert found.errors_from_knee == 0
    assert found.flat is True


def test_still_rising_at_the_largest_level_says_no_plateau() -> None:
    """When the best is the largest level, flatness is unknown, not true."""
    found = scaling([(4, 6.0, 0), (1, 3.0, 0), (2, 4.5, 0)])  # any order
    assert found is not None
    assert found.knee == 4
    assert found.flat is None
    assert found.lowest_past_ratio is None
    assert "no plateau" in found.summary()


def test_nothing_measured_has_no_knee() -> None:
    """No level, or no throughput at all (every task failed), gives no knee."""
    assert scaling([]) is None
    assert scaling([(1, 0.0, 1), (2, math.nan, 2)]) is None


def test_memory_per_running_task_adds_the_controllers_growth() -> None:
    """Sandboxes' usage plus the controller's RSS above idle, per running sandbox, median over samples."""
    mib = 2**20
    samples = [
        (0, 0, 100 * mib),  # nothing running: ignored
        (2, 140 * mib, 110 * mib),  # (140 + 10) / 2 = 75
        (4, 280 * mib, 120 * mib),  # (280 + 20) / 4 = 75
        (1, 60 * mib, 95 * mib),  # below idle adds nothing: 60
    ]
    assert memory_per_running_task(samples, 100 * mib) / mib == 75
    assert math.isnan(memory_per_running_task([(0, 0, 1)], 0))


def test_levels_from_the_environment() -> None:
    """A comma list is sorted and deduplicated; blank means the default; out of range is refused."""
    assert parse_levels("16, 1,2,2,12", (1,)) == (1, 2, 12, 16)
    assert parse_levels(None, (1, 2)) == (1, 2)
    assert parse_levels(" ", (4,)) == (4,)
    with pytest.raises(BenchError):
        parse_levels("0,2", (1,))
    with pytest.raises(BenchError):
        parse_levels("65", (1,))
