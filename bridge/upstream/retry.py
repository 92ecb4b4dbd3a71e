"""When a failed call may be tried again (SPEC 7), and how long to wait first.

Two kinds of retry, decided from the failure alone:

- transparent: the call never reached a backend, so repeating it cannot repeat its effect;
  any method, on another target, at once. "Never reached" is gRPC's own verdict: the channel
  failed the call while picking a connection for it ("failed to connect to all addresses"), so
  no HTTP/2 stream was opened and not a byte of the request left the bridge. A connection
  reset or closed after the stream was opened ("Stream removed", "Socket closed") is not
  that: the backend may have read the request and acted on it.
- configured (`retries`): a method safe to repeat that failed with one of the listed codes,
  up to ``attempts`` tries in all, after a jittered, doubling backoff.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

import grpc

from bridge.config.sections import RetrySettings

# What grpc core says when the load-balancing pick for a call failed: every address of the
# target's channel is refusing or unreachable, and the call was failed without being sent.
NOT_SENT: Final = "failed to connect to all addresses"
# Failures that say the target is down or stuck, not that it answered: the breaker counts them.
TARGET_FAILURES: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
JITTER: Final = 0.5  # each wait is its nominal value times a uniform factor in [0.5, 1.5]


def never_reached(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a failure means the request was never sent to any backend."""
    return code == grpc.StatusCode.UNAVAILABLE and (details or "").startswith(NOT_SENT)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """An upstream's `retries`, in the terms the terminal step uses."""

    attempts: int
    codes: frozenset[grpc.StatusCode]
    backoff: float

    @classmethod
    def of(cls, settings: RetrySettings | None) -> RetryPolicy | None:
        if settings is None:
            return None
        codes = frozenset(grpc.StatusCode[name] for name in settings.on)
        return cls(settings.attempts, codes, settings.backoff)

    def delay(self, retry: int, rand: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1 for the first): backoff * 2**(retry-1),
        jittered so that calls failing together do not come back together."""
        factor = (rand or random).uniform(1 - JITTER, 1 + JITTER)
        return self.backoff * 2 ** (retry - 1) * factor
