"""HTTP headers <-> gRPC metadata: what is forwarded, what is stripped, what the bridge owns."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Final

from bridge.errors import invalid_argument

Metadata = list[tuple[str, "str | bytes"]]

METADATA_PREFIX: Final = "grpc-metadata-"
REQUEST_ID: Final = "x-request-id"
FORWARDED_FOR: Final = "x-forwarded-for"
BRIDGE_PREFIX: Final = "x-bridge-"
SUBJECT: Final = BRIDGE_PREFIX + "subject"

# Never forwarded: hop-by-hop headers (RFC 9110 7.6.1), framing, and what gRPC or the bridge owns.
_STRIPPED: Final = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
        "trailer", "proxy-authenticate", "proxy-authorization", "host", "content-length",
        "content-type", "user-agent", FORWARDED_FOR, REQUEST_ID, SUBJECT,
    }
)  # fmt: skip
_KEY: Final = re.compile(r"[0-9a-z_.-]+")  # gRPC's Header-Name, lowercase as HTTP/2 sends it
# ASCII digits only: the gRPC grammar's TimeoutValue is 1*8 DIGIT, and \d would take "\u0661".
_TIMEOUT: Final = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def request_metadata(
    headers: Iterable[tuple[str, str]],
    forward: frozenset[str],
    *,
    peer: str | None,
    request_id: str,
    max_bytes: int,
) -> Metadata:
    """The metadata sent to the backend for these request headers; a 400 for bad entries."""
    metadata: Metadata = [(REQUEST_ID, request_id)]
    if peer:
        metadata.append((FORWARDED_FOR, peer))
    headers = list(headers)
    # Headers the client names in Connection are for this hop only (RFC 9110 7.6.1).
    hop_only = _connection_options(headers)
    entries = (
        (key, value, f"header '{name}'")
        for name, value in headers
        if name.lower() not in hop_only
        and (key := _metadata_key(name.lower(), forward)) is not None
    )
    return _extend(metadata, entries, max_bytes)


def extend_metadata(
    metadata: Metadata, pairs: Iterable[tuple[str | None, object]], max_bytes: int
) -> Metadata:
    """``metadata`` plus client-given entries (a WebSocket start frame's), each checked.

    None keys are skipped; reserved keys are dropped; any other entry the bridge cannot
    forward as given is a 400 naming it (see ``_extend``).
    """
    entries = ((key, value, f"metadata {key!r}") for key, value in pairs if key is not None)
    return _extend(metadata, entries, max_bytes)


def _extend(
    metadata: Metadata, entries: Iterable[tuple[str, object, str]], max_bytes: int
) -> Metadata:
    """``metadata`` plus (key, value, what to call it in an error) entries from a client.

    One rule for REST headers and WebSocket metadata: keys that are reserved (hop-by-hop,
    ``grpc-*``, the bridge's own) are never forwarded and so dropped silently, which also
    means they cannot be spoofed; anything else that cannot be forwarded exactly as given
    (a key gRPC does not allow, a value that is not printable ASCII on a non ``-bin`` key,
    bad base64 on a ``-bin`` key) is refused with a 400 rather than silently changed or lost.
    """
    out = list(metadata)
    size = sum(len(k) + len(v) for k, v in out)
    for key, value, what in entries:
        if _reserved(key):
            continue
        if _KEY.fullmatch(key) is None:
            raise invalid_argument(
                f"{what}: {key!r} is not a valid metadata key "
                "(lowercase letters, digits, '-', '_' and '.' only)"
            )
        if not isinstance(value, str):
            raise invalid_argument(f"{what} must be a string")
        converted = _metadata_value(key, value, what)
        size += len(key) + len(converted)
        if size > max_bytes:
            # Imported here: the metrics module imports bridge.call, which imports this one.
            from bridge.observe.metrics import REJECTED_LIMIT

            REJECTED_LIMIT.inc()  # limits.max_metadata
            raise invalid_argument(f"request metadata exceeds {max_bytes} bytes in total")
        out.append((key, converted))
    return out


def _connection_options(headers: list[tuple[str, str]]) -> frozenset[str]:
    """The header names listed in the request's Connection header(s), lowercased."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    )


def _metadata_key(name: str, forward: frozenset[str]) -> str | None:
    if name.startswith(METADATA_PREFIX):
        return name[len(METADATA_PREFIX) :]
    if name in forward:
        return name
    return None


def _reserved(key: str) -> bool:
    """Whether a key is one clients never set: hop-by-hop, gRPC's own, or the bridge's.

    Every ``x-bridge-*`` key is the bridge's, those it sends today (``x-bridge-subject``) and
    those later versions add, so a backend can trust any of them.
    """
    return key in _STRIPPED or key.startswith(("grpc-", BRIDGE_PREFIX))


def _metadata_value(key: str, value: str, what: str) -> str | bytes:
    if "\r" in value or "\n" in value:
        raise invalid_argument(f"{what} contains CR or LF")
    if key.endswith("-bin"):
        return decode_base64(value, what)
    if not value.isascii() or not value.isprintable():
        raise invalid_argument(f"{what} must be printable ASCII (use a -bin key)")
    return value


def decode_base64(value: str, what: str) -> bytes:
    """Decode a ``-bin`` value, standard or URL-safe alphabet, padding optional."""
    text = value.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"{what} is not valid base64") from None


def request_id(headers: Mapping[str, str]) -> str:
    """The client's x-request-id when it is sane, else a fresh one."""
    return client_request_id(headers.get(REQUEST_ID)) or new_request_id()


def client_request_id(given: object) -> str | None:
    """A client's x-request-id (a header, a WebSocket frame's metadata) when sane, else None."""
    if isinstance(given, str) and given and len(given) <= 128:
        if given.isascii() and given.isprintable():
            return given
    return None


# A random per-process prefix and a counter: unique like a UUID, without a syscall per request.
_ID_PREFIX: Final = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def parse_grpc_timeout(text: str) -> float:
    """Seconds for a gRPC ``grpc-timeout`` value such as ``500m``; a 400 when malformed."""
    m = _TIMEOUT.fullmatch(text.strip(" \t"))  # HTTP's optional whitespace, no more
    if m is None:
        raise invalid_argument(
            f"grpc-timeout '{text}' is malformed (up to 8 digits, then one of H M S m u n)"
        )
    return int(m[1]) * _TIMEOUT_UNITS[m[2]]


def response_headers(
    initial: Iterable[tuple[str, str | bytes]] | None,
    trailing: Iterable[tuple[str, str | bytes]] | None,
) -> dict[str, str]:
    """Backend metadata as ``Grpc-Metadata-*`` and trailers as ``Grpc-Trailer-*`` headers."""
    out: dict[str, str] = {}
    for prefix, items in (("Grpc-Metadata-", initial), ("Grpc-Trailer-", trailing)):
        for key, value in items or ():
            if key.startswith("grpc-"):
                continue  # gRPC's own (status, details): rendered in the body instead
            out[prefix + key] = _header_value(value)
    return out


def metadata_dict(items: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """Metadata as a JSON-friendly dict (``-bin`` values base64), for WebSocket frames."""
    return {k: _header_value(v) for k, v in items or () if not k.startswith("grpc-")}


def _header_value(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
