"""The cache step (SPEC 7): unary answers kept for a rule's ``ttl`` and served again.

`Cache` is built once from the config's ``cache`` section and one store; when a snapshot is
built, `Cache.step` gives each unary method the step of the first rule whose glob matches it,
or None, and a method without one pays nothing. Streams are never cached (a glob passes over
them; a rule naming one exactly is refused at start, `StreamingRule`).

The key is the method, the request message's canonical bytes (``deterministic=True``) and the
rule's ``vary`` parts: ``subject`` (the caller the auth step proved; anonymous calls share one
part, which no subject can equal) and ``header:<name>`` (every value the request sent, in
order; a missing header is its own part). Parts are length-framed before hashing, so no two
calls that differ in any part share a key. Without ``subject`` in ``vary`` every caller shares
an entry: that is the rule's promise, and why it must name the subject for answers that depend
on who asks.

Headers on every answer of a cached method (``call.response_headers``):

- ``X-Cache: HIT``: a fresh entry answered, no backend call was made;
- ``X-Cache: MISS``: the backend answered (or was asked and failed); also a call that waited
  for another call's backend call with the same key;
- ``X-Cache: STALE`` with ``X-Bridge-Fallback: true``: the backend failed with a server error
  (RFC 5861's stale-if-error: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, DATA_LOSS) and
  an entry at most ``stale_if_error`` past its ``ttl`` answered instead.

Only answers are stored, never errors. Concurrent misses for one key make one backend call
(single flight): the first call asks the backend, the others await its outcome, so they all
get its answer, or its failure (or the stale entry). An outcome that belongs to the asking
call alone is not shared: when it was cancelled (its client went away) or its own deadline
(the ``timeout`` it asked for) passed, a waiting call with time left asks the backend itself,
and the calls still waiting (and those arriving) wait on that call instead. A
DEADLINE_EXCEEDED that came before the asking call's deadline (the backend's own, or the
upstream's ``timeout``, which bounds every call alike) is shared as any failure is. A waiting
call's own deadline bounds its wait: it ends with DEADLINE_EXCEEDED (or the stale entry) when
its time is up, whatever the call it waits on does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message
from multidict import MultiMapping

from bridge.call import Call, Invoke, Reply
from bridge.errors import DEADLINE_EXCEEDED, BridgeError, http_status
from bridge.observe.metrics import CACHE_HIT, CACHE_MISS, CACHE_STALE
from bridge.policy.cache_store import CacheEntry, CacheStore
from bridge.upstream.call import UnaryReply
from bridge.upstream.metadata import Metadata

if TYPE_CHECKING:
    from bridge.registry.snapshot import Method

log = logging.getLogger(__name__)

X_CACHE: Final = "X-Cache"
FALLBACK: Final = "X-Bridge-Fallback"
HIT: Final = "HIT"
MISS: Final = "MISS"
STALE: Final = "STALE"

SUBJECT: Final = "subject"
HEADER: Final = "header:"
# RFC 5861 section 4 serves stale answers on 500, 502, 503 and 504: the gRPC codes of those.
_SERVER_FAILURES: Final = frozenset(c for c in range(17) if http_status(c) in (500, 502, 503, 504))
_ABSENT: Final = b"\x00"  # a part that is missing: no present part starts with this byte
_PRESENT: Final = b"\x01"


class Rule(Protocol):
    """A ``cache`` rule, as the config gives it."""

    @property
    def match(self) -> str: ...  # a glob over "pkg.Service/Method"
    @property
    def ttl(self) -> float: ...  # seconds an entry is fresh
    @property
    def vary(self) -> Sequence[str]: ...  # SUBJECT or HEADER + a lowercase name
    @property
    def stale_if_error(self) -> float: ...  # seconds past ttl an entry may answer a failure


class _Matching(Protocol):
    @property
    def match(self) -> str: ...


R = TypeVar("R", bound=_Matching)


class StreamingRule(ValueError):
    """A cache or fallback rule names a streaming method exactly: those are for unary ones."""


def unary_rule(rules: Sequence[R], method: Method, section: str, what: str) -> tuple[int, R] | None:
    """The first rule whose glob matches a unary ``method``, with its index; None when none
    does, or when the method streams and the glob matches others too (it passes over streams).

    StreamingRule when the rule names the streaming method exactly: that is a mistake.
    """
    name = method.full_name
    found = next(((i, r) for i, r in enumerate(rules) if fnmatch.fnmatchcase(name, r.match)), None)
    if found is None or not (method.client_streaming or method.server_streaming):
        return found
    index, rule = found
    if not any(c in rule.match for c in "*?["):
        raise StreamingRule(
            f"{section}[{index}] ({rule.match}): {method.full_name} is a {method.kind} method; "
            f"only unary methods are {what}"
        )
    return None


class Cache:
    """The configured rules, their one store and the backend calls in flight; built once per
    application, so every snapshot's chains share the entries."""

    def __init__(
        self, rules: Sequence[Rule], store: CacheStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.rules = tuple(rules)
        self.store = store
        self.clock = clock
        self.flights: dict[str, asyncio.Future[_Outcome]] = {}

    def step(self, method: Method) -> CacheStep | None:
        """The step of the first rule matching a unary ``method``; None when none does.

        StreamingRule when that rule names a streaming method exactly.
        """
        found = unary_rule(self.rules, method, "cache", "cached")
        if found is None:
            return None
        return CacheStep(found[1], method.full_name, method.output, self)


# What a backend call in flight ends with, for the calls waiting on it: the entry it stored,
# the failure it raised, or None when that outcome was the asking call's own (it was cancelled,
# or its own deadline passed): a waiting call asks instead.
_Outcome = CacheEntry | BridgeError | None
# The asking call's own answer: the message in hand, and the backend's metadata.
_Answer = tuple[Message, Metadata, Metadata]


class CacheStep:
    """One rule's step for one method: answers from the store, or asks the rest of the chain."""

    __slots__ = ("_cache", "_keep", "_name", "_output", "_stale", "_ttl", "_vary", "rule")

    def __init__(self, rule: Rule, method_full_name: str, output: type[Message], cache: Cache):
        self.rule = rule
        self._cache = cache
        self._name = method_full_name
        self._output = output
        self._ttl = rule.ttl
        self._stale = rule.stale_if_error
        self._keep = rule.ttl + rule.stale_if_error  # how long the store keeps an entry
        self._vary = tuple(rule.vary)

    def key(self, call: Call) -> str:
        """The store key of ``call``: the method and a digest of the request and vary parts."""
        request = call.request
        assert isinstance(request, Message)  # unary methods only
        digest = hashlib.sha256(request.SerializeToString(deterministic=True))
        for part in self._vary:
            if part == SUBJECT:
                principal = call.principal
                _frame(digest, None if principal is None else principal.subject.encode())
            else:
                for value in _values(call.headers, part[len(HEADER) :]):
                    _frame(digest, value.encode("utf-8", "surrogateescape"))
                digest.update(_ABSENT)  # ends the header's list of values
        return f"{self._name} {digest.hexdigest()}"

    async def __call__(self, call: Call, next: Invoke) -> Reply:
        key = self.key(call)
        cache = self._cache
        entry = await cache.store.get(key)
        if entry is not None and cache.clock() < entry.fresh_until:
            call.response_headers[X_CACHE] = HIT
            reply = self._reply(entry)
            if reply is not None:
                CACHE_HIT.inc()
                return reply
        call.response_headers[X_CACHE] = MISS
        CACHE_MISS.inc()
        loop = asyncio.get_running_loop()
        deadline = None if call.timeout is None else loop.time() + call.timeout
        asking = call
        while True:
            flight = cache.flights.get(key)
            outcome: _Outcome | _Answer
            if flight is None:
                outcome = await self._ask(asking, next, key)
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        # shielded: a waiting call's cancel or deadline stays its own
                        outcome = await asyncio.shield(flight)
                except TimeoutError:
                    return self._expired(call, entry)
            if isinstance(outcome, tuple):  # the asking call's own answer, message in hand
                message, initial, trailers = outcome
                return UnaryReply(message, initial, trailers)
            if isinstance(outcome, CacheEntry):
                reply = self._reply(outcome)
                if reply is not None:
                    return reply
            elif isinstance(outcome, BridgeError):
                return self._stale_or_raise(call, entry, outcome)
            if deadline is not None:  # asking after a wait: the backend gets the time left
                left = deadline - loop.time()
                if left <= 0:
                    return self._expired(call, entry)
                asking = dataclasses.replace(call, timeout=left)

    async def _ask(self, call: Call, next: Invoke, key: str) -> _Answer | BridgeError:
        """Make the one backend call for ``key``; the calls waiting on it get its outcome."""
        cache = self._cache
        loop = asyncio.get_running_loop()
        flight: asyncio.Future[_Outcome] = loop.create_future()
        cache.flights[key] = flight
        outcome: _Outcome = None
        began = loop.time()
        try:
            reply = await next(call)
            message = await reply.next()
            assert message is not None  # a unary reply is a stream of exactly one
            initial, trailers = list(reply.initial), list(await reply.trailers())
            outcome = CacheEntry(
                message.SerializeToString(),
                tuple(initial),
                tuple(trailers),
                cache.clock() + self._ttl,
            )
            await cache.store.put(key, outcome, self._keep)
            return message, initial, trailers
        except BridgeError as error:
            if not _own_deadline(error, call.timeout, loop.time() - began):
                outcome = error  # else None: a waiting call with time left asks instead
            return error
        finally:  # before anyone else can look: the store holds the entry already
            del cache.flights[key]
            flight.set_result(outcome)

    def _expired(self, call: Call, entry: CacheEntry | None) -> Reply:
        """The stale entry, or DEADLINE_EXCEEDED, for a call whose own deadline passed while it
        waited for another call's backend call."""
        assert call.timeout is not None  # only a call with a timeout of its own expires here
        error = BridgeError(
            DEADLINE_EXCEEDED,
            f"deadline exceeded: no answer within the call's timeout ({call.timeout:g}s) while"
            " it waited for the same request's backend call",
        )
        return self._stale_or_raise(call, entry, error)

    def _stale_or_raise(self, call: Call, entry: CacheEntry | None, error: BridgeError) -> Reply:
        """The stale entry in place of a server failure, when the rule allows it; else raise."""
        usable = (
            entry is not None
            and error.code in _SERVER_FAILURES
            and self._cache.clock() < entry.fresh_until + self._stale
        )
        reply = self._reply(entry) if usable and entry is not None else None
        if reply is None:
            raise _copy(error)  # each waiting call adds its own headers to its error
        call.response_headers[X_CACHE] = STALE
        CACHE_STALE.inc()
        call.response_headers[FALLBACK] = "true"
        return reply

    def _reply(self, entry: CacheEntry) -> Reply | None:
        """The entry as a reply with a message of its own; None if it no longer parses (the
        method's response type changed with a registration: the entry is a miss)."""
        try:
            message = self._output.FromString(entry.body)
        except DecodeError:
            log.warning("%s: a cached answer no longer parses; asking the backend", self._name)
            return None
        return UnaryReply(message, list(entry.initial), list(entry.trailers))


def _frame(digest: hashlib._Hash, part: bytes | None) -> None:
    if part is None:
        digest.update(_ABSENT)
    else:
        digest.update(_PRESENT + len(part).to_bytes(8, "big"))
        digest.update(part)


def _values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of a request header, in order: a repeated header must not share a key with
    its first value alone (the backend may read another one)."""
    if isinstance(headers, MultiMapping):
        return list(headers.getall(name, ()))
    value = headers.get(name)
    return [] if value is None else [value]


def _own_deadline(error: BridgeError, timeout: float | None, elapsed: float) -> bool:
    """Whether a backend call failed because the timeout its caller asked for ran out: an
    earlier DEADLINE_EXCEEDED is the backend's own, or the upstream's, and every caller's."""
    return error.code == DEADLINE_EXCEEDED and timeout is not None and elapsed >= timeout


def _copy(error: BridgeError) -> BridgeError:
    """A failure shared by the calls that waited on one backend call, one copy for each."""
    copy = BridgeError(
        error.code,
        error.message,
        error.details,
        headers=dict(error.headers),
        status=error.status,
        extra=error.extra,
    )
    copy.trailers = list(error.trailers)
    return copy
