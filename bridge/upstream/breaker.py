"""A circuit breaker for one target: closed, open after consecutive failures, then half-open.

Closed, every call may use the target. After ``failures`` consecutive failures the circuit
opens and the target leaves the rotation. Once ``reset`` seconds have passed, the next pick
takes the single trial slot (half-open): its success closes the circuit, its failure reopens it
for another ``reset``. Only one trial is in flight at a time; a trial that ends without a
verdict (the client went away) frees the slot for the next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


class Breaker:
    """The circuit of one target; `clock` is monotonic seconds (a test passes its own)."""

    __slots__ = ("_clock", "_failures", "_opened_at", "_trial", "failures", "reset", "state")

    def __init__(
        self, failures: int, reset: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset = reset
        self.state = CLOSED
        self._clock = clock
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._trial = False  # the half-open trial call is in flight

    def allow(self) -> bool:
        """Whether a call may use the target now; True once after ``reset`` takes the trial."""
        if self.state == CLOSED:
            return True
        if self._trial or self._clock() - self._opened_at < self.reset:
            return False
        self.state = HALF_OPEN
        self._trial = True
        return True

    def available(self) -> bool:
        """Whether `allow` would say yes, without taking the trial slot (for readiness)."""
        if self.state == CLOSED:
            return True
        return not self._trial and self._clock() - self._opened_at >= self.reset

    def succeeded(self) -> None:
        self._failures = 0
        self._trial = False
        self.state = CLOSED

    def failed(self) -> None:
        self._trial = False
        if self.state == CLOSED:
            self._failures += 1
            if self._failures < self.failures:
                return
        self.state = OPEN
        self._failures = 0
        self._opened_at = self._clock()

    def abandoned(self) -> None:
        """The call ended with no verdict on the target (cancelled): a trial slot is freed."""
        self._trial = False
