"""Exponential backoff with full jitter, for device links and the sink.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the
reconnect attempts of many daemons, or of many analysers on one daemon, that lost
their link at the same moment (a switched-off cabinet, a Postgres restart), so they
do not come back in lock-step. A small floor keeps a dead port from being hammered.
The ceiling resets once the link has been healthy for ``healthy_after`` seconds, so
a flapping link stays slow while one that recovered reconnects quickly next time.
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
        self._rng = rng
        self._clock = clock
        self.attempt = 0
        self._healthy_since: float | None = None

    def ceiling(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        return min(self.cap, self.initial * self.multiplier**self.attempt)

    def next_delay(self) -> float:
        """A delay for the failure that just happened; raises the ceiling for the next."""
        if self._healthy_since is not None:
            if self._clock() - self._healthy_since >= self.healthy_after:
                self.attempt = 0
            self._healthy_since = None
        ceiling = self.ceiling()
        if ceiling < self.cap:
            self.attempt += 1
        return self.floor + (ceiling - self.floor) * self._rng()

    def mark_healthy(self) -> None:
        """The link works (first valid frame); it must stay up ``healthy_after`` to reset."""
        if self._healthy_since is None:
            self._healthy_since = self._clock()

    def reset(self) -> None:
        self.attempt = 0
        self._healthy_since = None
