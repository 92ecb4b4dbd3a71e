"""One Redis as the bridge uses it: every call bounded in time, an outage noticed once.

A store that is down must not hold requests: every socket operation has a timeout
(``socket_timeout`` and ``socket_connect_timeout``, 0.25 s unless the URL's query sets them),
and after a failure the link is *down* for ``retry`` seconds, during which its users take their
per-instance fallback at once instead of each waiting for its own timeout. When that pause is
over, one caller tries Redis again (the others keep falling back until it succeeds), so a Redis
that stays down costs one timeout per pause, not one per request. The outage is logged once
when it starts and once when it ends, never per request, and never with the URL's password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, RedisSSLContext, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger("bridge.shared")

SCHEMES: Final = ("redis://", "rediss://")
TIMEOUT: Final = 0.25  # seconds, each socket operation, unless the URL's query says otherwise
RETRY: Final = 1.0  # seconds a failed link is left alone before one caller tries it again
MAX_CONNECTIONS: Final = 64  # per URL and process; a caller waits at most TIMEOUT for one
# What a failed Redis call raises: redis-py's own errors (its timeouts and connection errors
# among them), and what the socket raises below them.
FAILURES: Final = (RedisError, OSError, TimeoutError)


def is_redis(store: str) -> bool:
    return store.startswith(SCHEMES)


def shown(url: str) -> str:
    """``url`` as logs and /readyz show it: the password (and a user's name) masked, and so is
    every query argument redis-py takes for one (``?password=``, ``ssl_password=``)."""
    parts = urlsplit(url)
    if parts.password is not None or parts.username is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    query = "&".join(_masked(argument) for argument in parts.query.split("&"))
    return urlunsplit(parts._replace(query=query))


def _masked(argument: str) -> str:
    name, equals, _ = argument.partition("=")
    return f"{name}=***" if equals and "password" in unquote(name).lower() else argument


class RedisLink:
    """A pool of connections to one Redis URL and whether it answers now.

    Users call `usable` before each Redis call, and `failed` or `succeeded` after it.
    ``on_recovery`` callbacks run when the link comes back up after an outage (the registrar
    catches up on what it missed).
    """

    def __init__(
        self, url: str, *, retry: float = RETRY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.shown = shown(url)
        self.retry = retry
        self._clock = clock
        pool = _Pool.from_url(
            url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            timeout=TIMEOUT,  # the longest wait for a free connection of the pool
            max_connections=MAX_CONNECTIONS,
            # A pooled connection a restarted Redis closed is reconnected once, not taken for
            # a new outage; a timeout is not retried (a hung Redis costs one timeout).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.down_since: float | None = None  # wall-clock time the outage began, None when up
        self.last_error = ""
        self._retry_at = 0.0
        self.on_recovery: list[Callable[[], Any]] = []

    @property
    def up(self) -> bool:
        return self.down_since is None

    @property
    def usable(self) -> bool:
        """Whether to try Redis now: when up, and once per ``retry`` seconds while down."""
        if self.down_since is None:
            return True
        now = self._clock()
        if now < self._retry_at:
            return False
        self._retry_at = now + self.retry  # this caller tries; the others fall back meanwhile
        return True

    def failed(self, exc: BaseException) -> None:
        """A call failed: fall back for ``retry`` seconds, and say so if this starts an outage."""
        self._retry_at = self._clock() + self.retry
        self.last_error = _describe(exc)
        if self.down_since is None:
            self.down_since = time.time()
            log.warning(
                "redis %s is unreachable (%s): serving with this instance's own state until "
                "it is back",
                self.shown,
                self.last_error,
            )

    def succeeded(self) -> None:
        """A call worked: ends an outage (logged once, then the recovery callbacks run)."""
        if self.down_since is None:
            return
        lasted = time.time() - self.down_since
        self.down_since = None
        self.last_error = ""
        log.warning("redis %s is reachable again after %.1f s", self.shown, lasted)
        for callback in self.on_recovery:
            callback()

    async def ping(self) -> bool:
        """Ask Redis whether it answers (for /readyz and the registrar's watch)."""
        try:
            await self.client.ping()
        except FAILURES as exc:
            self.failed(exc)
            return False
        self.succeeded()
        return True

    async def readiness(self) -> dict[str, Any]:
        """What /readyz reports about this store; an unreachable one is reported, not fatal."""
        reachable = await self.ping()
        detail: dict[str, Any] = {"store": self.shown, "reachable": reachable}
        if not reachable:
            detail["error"] = self.last_error
            detail["down_since"] = self.down_since
        return detail

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)  # a pool given is not closed else


class _Pool(aioredis.BlockingConnectionPool):
    """A pool whose TLS connections (``rediss://``) share one SSL context, made once.

    redis-py makes one per connection, ~60 ms of CPU each (the system's CA certificates read
    again) and inside the connect timeout, so a few connections opened at once (a burst on a
    fresh pool, or after an outage) made one another time out: an outage that was not one.
    A CA file changed on disk once a context is made is read again when the bridge restarts.
    """

    _tls: RedisSSLContext | None = None

    def make_connection(self) -> AbstractConnection:
        connection = super().make_connection()
        if isinstance(connection, SSLConnection):
            if self._tls is None:  # made here, before any connect timeout starts; kept once made
                connection.ssl_context.get()
                self._tls = connection.ssl_context
            connection.ssl_context = self._tls
        return connection


def _describe(exc: BaseException) -> str:
    """A failure in one line, without anything the URL carried."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


class RedisLinks:
    """The links of one application, one per distinct URL, so every store shares one pool."""

    def __init__(self) -> None:
        self._links: dict[str, RedisLink] = {}

    def get(self, url: str) -> RedisLink:
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = RedisLink(url)
        return link

    def __len__(self) -> int:
        return len(self._links)

    def __iter__(self) -> Iterator[RedisLink]:
        return iter(self._links.values())

    async def readiness(self) -> dict[str, Any]:
        return {link.shown: await link.readiness() for link in self._links.values()}

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
