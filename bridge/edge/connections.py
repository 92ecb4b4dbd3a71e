"""The open client connections: who waits for a request, for how long, and who makes room.

A connection is *waiting* (for its request head: just accepted, or sending the head), *idle*
(kept alive between requests) or *busy* (a request in progress, or an upgraded WebSocket).
Waiting and idle connections sit in two insertion-ordered queues. Every entry of one queue has
the same timeout, so the queue's first entry is both the next to expire and the one that has
waited longest; that is what makes every event O(1) and lets one timer serve all connections.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from typing import Final, Protocol

# Deadlines this close are handled together: one timer wake-up, not one per connection.
_SLACK: Final = 0.001


class Connection(Protocol):
    """What the table needs of a connection: two fields it owns, and how to end a wait."""

    queue: OrderedDict[Connection, float] | None  # the queue holding it; None while busy
    counted: bool  # it holds one of the table's `capacity` places

    def expire(self) -> None:
        """Its wait is over: answer 408 if it began a request head, then close."""

    def evict(self) -> None:
        """Close it to make room for a new connection (503 if it began a request head)."""


class ConnectionTable:
    """Every counted client connection, with the waiting and idle ones in the order they began."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        capacity: int,
        header_timeout: float,
        idle_timeout: float,
    ) -> None:
        self.capacity = capacity
        self.open = 0
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.waiting: OrderedDict[Connection, float] = OrderedDict()  # -> when the wait began
        self.idle: OrderedDict[Connection, float] = OrderedDict()
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @property
    def busy(self) -> int:
        """How many counted connections are serving a request or a WebSocket."""
        return self.open - len(self.waiting) - len(self.idle)

    def admit(self, conn: Connection) -> bool:
        """Count a new connection as waiting for its head; False if all places are busy.

        At capacity the connection that has waited longest, idle or still without a request
        head, is closed to make room, as nginx drains its keep-alive connections.
        """
        if self.open >= self.capacity:
            victim = self._longest_waiting()
            if victim is None:
                return False
            self._drop(victim)
            victim.evict()
        self.open += 1
        conn.counted = True
        self._enqueue(self.waiting, conn, self._loop.time())
        return True

    def head_started(self, conn: Connection) -> None:
        """The first bytes of a request head arrived: an idle connection now has a head to send."""
        if conn.queue is self.idle:
            del self.idle[conn]
            self._enqueue(self.waiting, conn, self._loop.time())

    def start_request(self, conn: Connection) -> None:
        """A request began: no timeout of the table applies until it is answered."""
        queue = conn.queue
        if queue is not None:
            del queue[conn]
            conn.queue = None

    def rest(self, conn: Connection) -> None:
        """A response went out and the connection stays open for the next request."""
        if not conn.counted:
            return
        queue = conn.queue
        if queue is not None:  # written out by hand: this runs once per response
            del queue[conn]
        now = self._loop.time()
        self.idle[conn] = now
        conn.queue = self.idle
        if now + self.idle_timeout < self._timer_at:
            self._arm(now + self.idle_timeout)

    def leave(self, conn: Connection) -> None:
        """The connection closed."""
        if conn.counted:
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        self.start_request(conn)
        conn.counted = False
        self.open -= 1

    def _enqueue(self, queue: OrderedDict[Connection, float], conn: Connection, now: float) -> None:
        queue[conn] = now
        conn.queue = queue
        self._arm(now + (self.header_timeout if queue is self.waiting else self.idle_timeout))

    def _longest_waiting(self) -> Connection | None:
        first_waiting = next(iter(self.waiting.items()), None)
        first_idle = next(iter(self.idle.items()), None)
        if first_waiting is None or (first_idle is not None and first_idle[1] < first_waiting[1]):
            return None if first_idle is None else first_idle[0]
        return first_waiting[0]

    def _arm(self, deadline: float) -> None:
        """Make the one timer fire by `deadline` (queues grow at their end: it rarely moves)."""
        if deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """End every wait past its deadline, then set the timer for the next one."""
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time() + _SLACK
        for queue, timeout in ((self.waiting, self.header_timeout), (self.idle, self.idle_timeout)):
            while queue:
                conn, since = next(iter(queue.items()))
                if since + timeout > now:
                    self._arm(since + timeout)
                    break
                self._drop(conn)
                conn.expire()

    def close(self) -> None:
        """Stop the timer (the server is shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
