"""Exponential backoff with full jitter, for device links and the sink.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the
reconnect attempts of many daemons, or of many analysers on one daemon, that lost
their link at the same moment (a switched-off cabinet, a Postgres restart), so they
do not come back in lock-step. A small floor keeps a dead port from being hammered.
The ceiling resets once the link has been healthy for ``healthy_after`` seconds, so
a flapping link stays slow while one that recovered reconnects quickly next time.

With ``quick_for`` > 0, a link that delivered valid data before it failed is retried
quickly first: for ``quick_for`` seconds after that failure the delay stays below
``quick_cap`` (a replugged adapter, a resumed process or a restarted database is
usually back within seconds), then the usual growth resumes where it was.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    """``next_delay()`` after a failure; ``mark_healthy()`` or ``reset()`` on success."""

    def __init__(
        self,
        *,
        initial: float = 0.5,
        cap: float = 30.0,
        floor: float = 0.05,
        multiplier: float = 2.0,
        healthy_after: float = 30.0,
        quick_for: float = 0.0,
        quick_cap: float = 1.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial <= 0 or cap < initial or multiplier < 1 or floor < 0:
            raise ValueError("need 0 < initial <= cap, multiplier >= 1, floor >= 0")
        self.initial = initial
        self.cap = cap
        self.floor = min(floor, initial)
        self.multiplier = multiplier
        self.healthy_after = healthy_after
        self.quick_for = quick_for
        self.quick_cap = quick_cap
        self._quick_until: float | None = None
        self._rng = rng
        self._clock = clock
        self.attempt = 0
        self._healthy_since: float | None = None

    def ceiling(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        return min(self.cap, self.initial * self.multiplier**self.attempt)

    def next_delay(self) -> float:
        """A delay for the failure that just happened; raises the ceiling for the next."""
        now = self._clock()
        if self._healthy_since is not None:
            if now - self._healthy_since >= self.healthy_after:
                self.attempt = 0
            self._healthy_since = None
            if self.quick_for > 0:
                self._quick_until = now + self.quick_for
        ceiling = self.ceiling()
        if ceiling < self.cap:
            self.attempt += 1
        if self._quick_until is not None:
            if now < self._quick_until:
                ceiling = min(ceiling, max(self.quick_cap, self.floor))
            else:
                self._quick_until = None
        return self.floor + (ceiling - self.floor) * self._rng()

    def mark_healthy(self) -> None:
        """The link works (first valid frame); it must stay up ``healthy_after`` to reset."""
        if self._healthy_since is None:
            self._healthy_since = self._clock()

    def reset(self) -> None:
        self.attempt = 0
        self._healthy_since = None
        self._quick_until = None
