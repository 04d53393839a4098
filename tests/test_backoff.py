"""servomexd/backoff.py: growth, cap, jitter bounds, healthy reset."""

from __future__ import annotations

import random

import pytest

from servomexd.backoff import Backoff


def test_ceiling_doubles_to_cap() -> None:
    backoff = Backoff(initial=0.5, cap=30, rng=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays[:7] == [0.5, 1, 2, 4, 8, 16, 30]
    assert delays[7:] == [30, 30, 30]


def test_full_jitter_within_bounds() -> None:
    rng = random.Random(7)
    backoff = Backoff(initial=0.5, cap=30, floor=0.05, rng=rng.random)
    for _ in range(200):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.05 <= delay <= ceiling
    # jitter: not every delay at the ceiling
    backoff.reset()
    assert len({round(backoff.next_delay(), 6) for _ in range(20)}) > 10


def test_reset_only_after_healthy_period() -> None:
    now = [0.0]
    backoff = Backoff(initial=1, cap=64, healthy_after=30, rng=lambda: 1.0, clock=lambda: now[0])
    for _ in range(5):
        backoff.next_delay()
    assert backoff.ceiling() == 32
    backoff.mark_healthy()
    now[0] += 5  # flapping: up for 5 s only
    assert backoff.next_delay() == 32
    backoff.mark_healthy()
    now[0] += 31
    assert backoff.next_delay() == 1  # healthy long enough: back to the start


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(initial=5, cap=1)


def test_a_link_that_delivered_is_retried_quickly_first_then_backs_off() -> None:
    """An unplugged adapter that worked (valid frames for 5 s, not the 30 s healthy
    period): retries stay under quick_cap for quick_for seconds, then grow again."""
    now = [0.0]
    backoff = Backoff(initial=0.5, cap=30, healthy_after=30, quick_for=20, quick_cap=1.0,
                      rng=lambda: 1.0, clock=lambda: now[0])  # fmt: skip
    for _ in range(6):
        backoff.next_delay()  # a long outage before: the ceiling is at 30
    assert backoff.ceiling() == 30
    backoff.mark_healthy()
    now[0] += 5  # delivered frames for 5 s, then the adapter was pulled
    delays = []
    while now[0] < 40:
        delay = backoff.next_delay()
        delays.append(delay)
        now[0] += delay
    assert all(d <= 1.0 for d in delays[:15])  # the first 20 s: within a second
    assert delays[-1] == 30  # then the usual growth, from where it was


def test_without_valid_data_there_is_no_quick_retry() -> None:
    now = [0.0]
    backoff = Backoff(initial=0.5, cap=30, quick_for=20, quick_cap=1.0,
                      rng=lambda: 1.0, clock=lambda: now[0])  # fmt: skip
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1, 2, 4, 8]
