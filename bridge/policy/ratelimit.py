"""The rate-limit step: a token bucket per rule and client, in front of the rest of the chain.

`RateLimits` is built once from the config's rules and one bucket store; when a snapshot is
built, `RateLimits.step` gives each method the step of the first rule whose glob matches it,
or None, and a method without one pays nothing. The bucket key is the rule's position and the
client's identity, so a ``*`` rule counts one client's calls to every method in one bucket.

Headers, on allowed calls (through ``call.response_headers``) and on refusals alike:

- ``RateLimit-Limit``: the rule's ``burst``, the most requests that can pass at once;
- ``RateLimit-Remaining``: whole tokens left after this request;
- ``RateLimit-Reset``: seconds, rounded up, until the bucket is full again (``burst``
  requests would pass at once);
- ``Retry-After`` (refusals only): seconds, rounded up and at least 1, until the next token.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from bridge.call import Call, Invoke, Reply
from bridge.errors import RESOURCE_EXHAUSTED, BridgeError
from bridge.observe.metrics import REJECTED_RATE
from bridge.policy.buckets import BucketStore

IP: Final = "ip"
API_KEY: Final = "api_key"
SUBJECT: Final = "subject"
KEYS: Final = (IP, API_KEY, SUBJECT)

LIMIT: Final = "RateLimit-Limit"
REMAINING: Final = "RateLimit-Remaining"
RESET: Final = "RateLimit-Reset"
RETRY_AFTER: Final = "Retry-After"

_RETRY_INFO: Final = "type.googleapis.com/google.rpc.RetryInfo"


class Rule(Protocol):
    """A ``rate_limits`` entry, as the config gives it."""

    @property
    def match(self) -> str: ...  # a glob over "pkg.Service/Method"
    @property
    def key(self) -> str: ...  # IP, API_KEY or SUBJECT
    @property
    def rate(self) -> float: ...  # tokens a second
    @property
    def burst(self) -> int: ...  # tokens when full


class RateLimits:
    """The configured rules and their one store; built once per application.

    Build it once, not per snapshot: buckets are keyed by rule position, so every snapshot's
    chains must share these steps and this store for counts to survive a registration.
    """

    def __init__(self, rules: Sequence[Rule], store: BucketStore) -> None:
        self.rules = tuple(rules)
        self.store = store
        self._steps = tuple(RateLimitStep(rule, i, store) for i, rule in enumerate(self.rules))

    def step(self, method_full_name: str) -> RateLimitStep | None:
        """The step of the first rule matching ``pkg.Service/Method``; None when none does."""
        for step in self._steps:
            if fnmatch.fnmatchcase(method_full_name, step.rule.match):
                return step
        return None


class RateLimitStep:
    """One rule's step: takes a token from the caller's bucket, or refuses with 429."""

    __slots__ = ("_burst", "_key", "_limit", "_own", "_peer", "_rate", "index", "rule", "store")

    def __init__(self, rule: Rule, index: int, store: BucketStore) -> None:
        if rule.key not in KEYS:
            raise ValueError(f"rate limit key {rule.key!r}: expected one of {', '.join(KEYS)}")
        self.rule = rule
        self.index = index
        self.store = store
        self._rate = rule.rate
        self._burst = rule.burst
        self._limit = str(rule.burst)
        self._peer = f"{index}:{IP}:"
        self._own = f"{index}:{rule.key}:"
        keys: dict[str, Callable[[Call], str]] = {
            IP: self._by_peer,
            API_KEY: self._by_api_key,
            SUBJECT: self._by_subject,
        }
        self._key = keys[rule.key]

    def key(self, call: Call) -> str:
        """The bucket key of ``call``'s client under this rule."""
        return self._key(call)

    async def __call__(self, call: Call, next: Invoke) -> Reply:
        allowed, remaining, reset, retry_after = await self.store.take(
            self._key(call), self._rate, self._burst
        )
        if allowed:
            headers = call.response_headers
            headers[LIMIT] = self._limit
            headers[REMAINING] = str(remaining)
            headers[RESET] = str(math.ceil(reset))
            return await next(call)
        retry = max(1, math.ceil(retry_after))
        REJECTED_RATE.inc()
        raise BridgeError(
            RESOURCE_EXHAUSTED,
            f"rate limit exceeded ({self._burst} requests at once, then {self._rate:g} a "
            f"second); retry after {retry} s",
            [{"@type": _RETRY_INFO, "retryDelay": f"{retry_after:.3f}s"}],
            status=429,
            headers={
                RETRY_AFTER: str(retry),
                LIMIT: self._limit,
                REMAINING: str(remaining),
                RESET: str(math.ceil(reset)),
            },
        )

    def _by_peer(self, call: Call) -> str:
        # An unknown peer (no socket address) shares one bucket with every other unknown peer.
        return self._peer + (call.peer or "")

    def _by_api_key(self, call: Call) -> str:
        # A call without an API key (anonymous, or a JWT) is counted by its address instead.
        principal = call.principal
        if principal is not None and principal.kind == API_KEY and principal.key_id is not None:
            return self._own + principal.key_id
        return self._peer + (call.peer or "")

    def _by_subject(self, call: Call) -> str:
        # An anonymous call is counted by its address. A subject is one identity whichever
        # credential proved it, so an API key and a JWT naming the same subject share a bucket.
        principal = call.principal
        if principal is not None:
            return self._own + principal.subject
        return self._peer + (call.peer or "")
