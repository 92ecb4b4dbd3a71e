"""One value describes a call and one function makes it: what every transport hands over.

REST, WebSocket and (later) aggregate, gRPC-Web and Connect calls all build a `Call` and await
``binding.invoke(call)``. ``invoke`` is the method's chain: its policy steps, decided once when
the snapshot was built, in front of the terminal step that calls the upstream. Whatever the
call kind, the answer is a `Reply`: a stream of response messages (a unary answer is a stream
of one) with the backend's initial and trailing metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

from google.protobuf.message import Message

from bridge.upstream.metadata import Metadata

if TYPE_CHECKING:
    from bridge.registry.snapshot import Binding

HTTP: Final = "http"
WEBSOCKET: Final = "ws"
AGGREGATE: Final = "aggregate"

Requests: TypeAlias = Message | Iterable[Message] | AsyncIterable[Message]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, once a credential was verified."""

    subject: str  # sent to the backend as x-bridge-subject
    kind: str  # "api_key" or "jwt": which credential proved it
    scopes: frozenset[str] = frozenset()
    expires: float | None = None  # a JWT's exp (Unix time): a long-lived socket re-checks it
    key_id: str | None = None  # an API key's stable, non-secret id (for rate-limit keys)


@dataclass(slots=True, eq=False)
class Call:
    """Everything about one call that a policy step or the upstream needs."""

    binding: Binding  # from the snapshot the request started on
    request: Requests  # the request message, or the stream of them (client streaming)
    metadata: Metadata  # what the client sent that may reach the backend, already checked
    timeout: float | None  # seconds the client asked for; None: the upstream's default
    peer: str | None  # the client's address (X-Forwarded-For only from trusted proxies)
    transport: str  # HTTP, WEBSOCKET, AGGREGATE
    request_id: str
    # Where credentials come from: the HTTP request's headers, or a WebSocket upgrade's.
    headers: Mapping[str, str] = field(default_factory=dict)
    # Set by the auth step, or by the transport when it authenticated earlier (a socket's
    # upgrade); the terminal step sends its subject as x-bridge-subject.
    principal: Principal | None = None
    # Headers policy steps add to the answer (RateLimit-*); transports that have headers send them.
    response_headers: dict[str, str] = field(default_factory=dict)


class Reply(Protocol):
    """A call's answer, read one message at a time; always read to the end or cancel it."""

    initial: Metadata  # the backend's initial metadata

    async def next(self) -> Message | None:
        """The next response message, None at a clean end; a BridgeError when the call fails."""
        ...

    async def trailers(self) -> Metadata:
        """The backend's trailing metadata, once the messages are read."""
        ...

    def cancel(self) -> None:
        """Stop the backend call if it is still running (the client went away)."""
        ...


Invoke = Callable[[Call], Awaitable[Reply]]


class Step(Protocol):
    """A policy: looks at (and may change) the call, then calls ``next`` or refuses."""

    async def __call__(self, call: Call, next: Invoke) -> Reply: ...
