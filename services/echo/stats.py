"""Call counters for EchoService, so tests can see from outside that a cancel reached it."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from demo.echo.v1 import echo_pb2


@dataclass
class CallRecord:
    """One counted call: its method, the counter generation it began in, whether it ended."""

    method: str
    generation: int
    finished: bool = False


class CallStats:
    """Started, completed, cancelled and active calls, cancellations per method, ticks sent."""

    def __init__(self) -> None:
        self.active = 0
        self._generation = 0
        self._zero()

    def _zero(self) -> None:
        self.started = 0
        self.completed = 0
        self.cancelled = 0
        self.cancelled_by_method: Counter[str] = Counter()
        self.ticks_sent = 0

    def begin(self, method: str) -> CallRecord:
        """Count a call that starts now and return its record."""
        self.started += 1
        self.active += 1
        return CallRecord(method, self._generation)

    def finish(self, record: CallRecord, cancelled: bool) -> None:
        """Count a call's end; a record is counted once, however many paths report it."""
        if record.finished:
            return
        record.finished = True
        self.active -= 1
        # A call that began before a reset must not make completed exceed started.
        if record.generation != self._generation:
            return
        if cancelled:
            self.cancelled += 1
            self.cancelled_by_method[record.method] += 1
        else:
            self.completed += 1

    def reset(self) -> None:
        """Zero the counters; active keeps counting the calls still running."""
        self._generation += 1
        self._zero()

    def snapshot(self) -> echo_pb2.Stats:
        """Return the counters as a Stats message."""
        return echo_pb2.Stats(
            started=self.started,
            completed=self.completed,
            cancelled=self.cancelled,
            active=self.active,
            cancelled_by_method=dict(self.cancelled_by_method),
            ticks_sent=self.ticks_sent,
        )


class HasStats(Protocol):
    """A servicer that owns a CallStats."""

    stats: CallStats


S = TypeVar("S", bound=HasStats)
Handler = Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def counted(handler: Handler[S]) -> Handler[S]:
    """Wrap a servicer method so each call is counted in ``self.stats`` under its name.

    A call is cancelled when the client cancels it or its deadline passes: grpc.aio then
    cancels the handler's task (CancelledError) and marks the context cancelled. The done
    callback catches a cancellation that lands after the handler has returned.
    """
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
        record = self.stats.begin(method)
        context.add_done_callback(lambda ctx: self.stats.finish(record, cancelled=ctx.cancelled()))
        try:
            return await handler(self, request, context)
        except asyncio.CancelledError:
            self.stats.finish(record, cancelled=True)
            raise
        finally:
            self.stats.finish(record, cancelled=context.cancelled())

    return wrapper
