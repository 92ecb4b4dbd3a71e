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
SUBJECT: Final = "x-bridge-subject"

# Never forwarded: hop-by-hop headers (RFC 9110 7.6.1), framing, and what gRPC or the bridge owns.
_STRIPPED: Final = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
        "trailer", "proxy-authenticate", "proxy-authorization", "host", "content-length",
        "content-type", "user-agent", FORWARDED_FOR, REQUEST_ID, SUBJECT,
    }
)  # fmt: skip
_KEY: Final = re.compile(r"^[0-9a-z_.-]+$")
_TIMEOUT: Final = re.compile(r"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def request_metadata(
    headers: Iterable[tuple[str, str]],
    forward: frozenset[str],
    *,
    peer: str | None,
    request_id: str,
    max_bytes: int,
) -> Metadata:
    """The metadata sent to the backend for these request headers; a 400 for bad values."""
    metadata: Metadata = [(REQUEST_ID, request_id)]
    if peer:
        metadata.append((FORWARDED_FOR, peer))
    headers = list(headers)
    # Headers the client names in Connection are for this hop only (RFC 9110 7.6.1).
    hop_only = _connection_options(headers)
    pairs = (
        (_metadata_key(name.lower(), forward), value)
        for name, value in headers
        if name.lower() not in hop_only
    )
    return extend_metadata(metadata, pairs, max_bytes)


def extend_metadata(
    metadata: Metadata, pairs: Iterable[tuple[str | None, object]], max_bytes: int
) -> Metadata:
    """``metadata`` plus client-given entries, each checked; None keys are skipped."""
    out = list(metadata)
    size = sum(len(k) + len(v) for k, v in out)
    for key, value in pairs:
        if key is None or not _allowed(key):
            continue
        if not isinstance(value, str):
            raise invalid_argument(f"metadata '{key}' must be a string")
        converted = _metadata_value(key, value)
        size += len(key) + len(converted)
        if size > max_bytes:
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
        key = name[len(METADATA_PREFIX) :]
    elif name in forward:
        key = name
    else:
        return None
    return key


def _allowed(key: str) -> bool:
    """Whether a client may set this metadata key (not reserved, not the bridge's own)."""
    return key not in _STRIPPED and not key.startswith("grpc-") and _KEY.match(key) is not None


def _metadata_value(key: str, value: str) -> str | bytes:
    if "\r" in value or "\n" in value:
        raise invalid_argument(f"metadata '{key}' contains CR or LF")
    if key.endswith("-bin"):
        return decode_base64(key, value)
    if not value.isascii() or not value.isprintable():
        raise invalid_argument(f"metadata '{key}' must be printable ASCII (use a -bin key)")
    return value


def decode_base64(key: str, value: str) -> bytes:
    """Decode a ``-bin`` value, standard or URL-safe alphabet, padding optional."""
    text = value.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"metadata '{key}' is not valid base64") from None


def request_id(headers: Mapping[str, str]) -> str:
    """The client's x-request-id when it is sane, else a fresh one."""
    given = headers.get(REQUEST_ID)
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return new_request_id()


# A random per-process prefix and a counter: unique like a UUID, without a syscall per request.
_ID_PREFIX: Final = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def parse_grpc_timeout(text: str) -> float:
    """Seconds for a gRPC ``grpc-timeout`` value such as ``500m``; a 400 when malformed."""
    m = _TIMEOUT.match(text.strip())
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
