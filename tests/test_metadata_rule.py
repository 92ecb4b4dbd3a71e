"""Unit tests of the metadata rule (bridge.upstream.metadata) shared by REST and WebSocket calls:
reserved keys are dropped, anything else that cannot be forwarded as given is a 400 naming it.
"""

from __future__ import annotations

import pytest

from bridge.errors import BridgeError
from bridge.upstream.metadata import extend_metadata, parse_grpc_timeout, request_metadata

FORWARD = frozenset({"authorization"})


def rest(*headers: tuple[str, str]) -> list[tuple[str, str | bytes]]:
    """The client-given part of the metadata for these headers."""
    got = request_metadata(headers, FORWARD, peer=None, request_id="rid", max_bytes=8192)
    return got[1:]


@pytest.mark.parametrize(
    "headers, expected",
    [
        pytest.param([("Grpc-Metadata-Tenant", "acme")], [("tenant", "acme")], id="prefixed"),
        pytest.param(
            [("Authorization", "Bearer t")], [("authorization", "Bearer t")], id="forward-header"
        ),
        pytest.param([("Grpc-Metadata-a.b_c-d", "v")], [("a.b_c-d", "v")], id="all-key-chars"),
        pytest.param([("Grpc-Metadata-t-bin", "AAE")], [("t-bin", b"\x00\x01")], id="bin"),
        pytest.param([("Grpc-Metadata-x", "a b ~")], [("x", "a b ~")], id="space-and-tilde"),
        pytest.param([("X-Other", "Zoë")], [], id="unforwarded-header-not-checked"),
        pytest.param([("Grpc-Metadata-grpc-timeout", "1n")], [], id="reserved-grpc"),
        pytest.param([("Grpc-Metadata-x-request-id", "spoof")], [], id="reserved-request-id"),
        pytest.param([("Grpc-Metadata-x-forwarded-for", "1.2.3.4")], [], id="reserved-xff"),
        pytest.param([("Grpc-Metadata-x-bridge-subject", "root")], [], id="reserved-subject"),
        pytest.param([("X-Bridge-Subject", "root")], [], id="reserved-subject-header"),
        pytest.param([("Grpc-Metadata-x-bridge-anything", "x")], [], id="reserved-bridge-prefix"),
        pytest.param([("Grpc-Metadata-te", "trailers")], [], id="reserved-hop-by-hop"),
        pytest.param([("Grpc-Metadata-grpc-x", "Zoë")], [], id="reserved-before-value-check"),
        pytest.param(
            [("Connection", "Grpc-Metadata-a!b"), ("Grpc-Metadata-a!b", "v")],
            [],
            id="connection-listed-is-hop-only",
        ),
    ],
)
def test_rest_headers_forwarded_or_dropped(headers, expected) -> None:
    assert rest(*headers) == expected


@pytest.mark.parametrize(
    "header, named",
    [
        pytest.param(("Grpc-Metadata-a!b", "v"), "'Grpc-Metadata-a!b'", id="bad-key-char"),
        pytest.param(("Grpc-Metadata-", "v"), "'Grpc-Metadata-'", id="empty-key"),
        pytest.param(("Grpc-Metadata-x", "Zoë"), "'Grpc-Metadata-x'", id="non-ascii"),
        pytest.param(("Grpc-Metadata-x", "a\tb"), "'Grpc-Metadata-x'", id="tab"),
        pytest.param(("Grpc-Metadata-x", "a\nb"), "CR or LF", id="newline"),
        pytest.param(("Grpc-Metadata-x-bin", "@@"), "'Grpc-Metadata-x-bin'", id="bad-base64"),
    ],
)
def test_rest_headers_refused(header: tuple[str, str], named: str) -> None:
    with pytest.raises(BridgeError) as raised:
        rest(header)
    assert raised.value.code == 3 and named in raised.value.message, raised.value.message


@pytest.mark.parametrize(
    "pairs, expected",
    [
        pytest.param([("x-k", "v")], [("x-k", "v")], id="plain"),
        pytest.param([("grpc-encoding", "gzip")], [], id="reserved-dropped"),
        pytest.param([(None, "v")], [], id="none-key-skipped"),
    ],
)
def test_websocket_metadata_forwarded_or_dropped(pairs, expected) -> None:
    assert extend_metadata([], pairs, 8192) == expected


@pytest.mark.parametrize(
    "pairs, named",
    [
        pytest.param([("bad key", "v")], "'bad key'", id="space-in-key"),
        pytest.param([("", "v")], "''", id="empty-key"),
        pytest.param([("x", 1)], "'x' must be a string", id="not-a-string"),
        pytest.param([("x", "Zoë")], "'x' must be printable ASCII", id="non-ascii"),
    ],
)
def test_websocket_metadata_refused(pairs, named: str) -> None:
    with pytest.raises(BridgeError) as raised:
        extend_metadata([], pairs, 8192)
    assert raised.value.code == 3 and named in raised.value.message, raised.value.message


@pytest.mark.parametrize(
    "text, seconds",
    [
        pytest.param("500m", 0.5, id="millis"),
        pytest.param("2S", 2.0, id="seconds"),
        pytest.param(" 1H\t", 3600.0, id="http-whitespace"),
        pytest.param("12345678n", 0.012345678, id="eight-digits"),
    ],
)
def test_grpc_timeout_parsed(text: str, seconds: float) -> None:
    assert parse_grpc_timeout(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\u0661S", id="arabic-indic"),
        pytest.param("\u06f1S", id="extended-arabic-indic"),
        pytest.param("\uff11S", id="fullwidth"),
        pytest.param("1\u0660S", id="mixed"),
        pytest.param("\u00a01S", id="no-break-space"),
        pytest.param("1S\n", id="trailing-newline"),
        pytest.param("123456789S", id="nine-digits"),
        pytest.param("-1S", id="negative"),
        pytest.param("S", id="no-digits"),
    ],
)
def test_grpc_timeout_refused(text: str) -> None:
    with pytest.raises(BridgeError) as raised:
        parse_grpc_timeout(text)
    assert raised.value.code == 3 and "grpc-timeout" in raised.value.message
