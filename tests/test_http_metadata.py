"""HTTP headers <-> gRPC metadata through the bridge, checked against what the echo backend saw.

EchoService.Echo returns every metadata entry it received (keys lowercased, ``-bin`` values
base64), so each test makes a real call and inspects ``metadata`` in the reply.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Bridge, StartBridge, demo_config

DEFAULT_FORWARDED = {
    "Authorization": "Bearer s3cret",
    "X-Request-Id": "req-42",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=abc",
}


async def echo(
    bridge: Bridge, headers: dict[str, str] | list[tuple[str, str]], **fields: Any
) -> tuple[int, Any, Any]:
    """POST /v1/echo with these headers; returns (status, body, response headers)."""
    return await bridge.json("POST", "/v1/echo", json={"message": "hi", **fields}, headers=headers)


async def backend_metadata(bridge: Bridge, headers: dict[str, str] | list[tuple[str, str]]) -> dict:
    status, body, _ = await echo(bridge, headers)
    assert status == 200, body
    return body["metadata"]


async def started_calls(bridge: Bridge) -> int:
    """Echo's ``started`` counter (GetStats itself is not counted)."""
    status, body, _ = await bridge.json("GET", "/v1/stats")
    assert status == 200, body
    return int(body["started"])


async def assert_rejected_before_backend(
    bridge: Bridge, headers: dict[str, str] | list[tuple[str, str]]
) -> dict:
    """The call is a 400 INVALID_ARGUMENT and the backend never saw it; returns the body."""
    before = await started_calls(bridge)
    status, body, _ = await echo(bridge, headers)
    assert status == 400, body
    assert body["code"] == 3, body
    assert body["message"]
    assert await started_calls(bridge) == before, "the backend was called for a bad request"
    return body


@pytest.fixture
def bridge_with(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> Callable[..., Awaitable[Bridge]]:
    """Start a bridge in front of the example services with extra top-level config keys."""

    async def _start(**extra: Any) -> Bridge:
        return await start_bridge(demo_config(users_server, echo_server, **extra))

    return _start


# --- what is forwarded ---------------------------------------------------------------------


async def test_grpc_metadata_prefix_reaches_backend_without_prefix(demo):
    metadata = await backend_metadata(
        demo, {"Grpc-Metadata-Tenant": "acme", "grpc-metadata-x-flavour": "vanilla"}
    )
    assert metadata["tenant"] == "acme"
    assert metadata["x-flavour"] == "vanilla"
    assert not any(k.startswith("grpc-metadata-") for k in metadata)


async def test_repeated_metadata_headers_all_reach_backend(demo):
    metadata = await backend_metadata(
        demo, [("Grpc-Metadata-x-tag", "a"), ("Grpc-Metadata-x-tag", "b")]
    )
    assert metadata["x-tag"] == "a,b"  # echo joins repeated keys as HTTP does


async def test_default_forward_headers_are_forwarded(demo):
    metadata = await backend_metadata(demo, DEFAULT_FORWARDED)
    assert metadata["authorization"] == "Bearer s3cret"
    assert metadata["x-request-id"] == "req-42"
    assert metadata["traceparent"] == DEFAULT_FORWARDED["traceparent"]
    assert metadata["tracestate"] == "vendor=abc"


async def test_other_plain_headers_are_not_forwarded(demo):
    metadata = await backend_metadata(
        demo, {"X-Tenant": "acme", "Accept-Language": "fr", "Cookie": "a=b"}
    )
    assert "x-tenant" not in metadata
    assert "accept-language" not in metadata
    assert "cookie" not in metadata


async def test_custom_forward_headers_list_is_honoured(bridge_with):
    bridge = await bridge_with(forward_headers=["X-Tenant", "x-api-key"])
    metadata = await backend_metadata(
        bridge,
        {"x-tenant": "acme", "X-Api-Key": "k1", "Authorization": "Bearer t", "X-Other": "no"},
    )
    assert metadata["x-tenant"] == "acme"
    assert metadata["x-api-key"] == "k1"
    # The list replaces the default: authorization is no longer forwarded.
    assert "authorization" not in metadata
    assert "x-other" not in metadata
    # What the bridge itself adds does not depend on the list.
    assert metadata["x-request-id"]
    assert metadata["x-forwarded-for"] == "127.0.0.1"


# --- what is never forwarded ---------------------------------------------------------------

NEVER_FORWARDED = [
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate", "host", "content-length",
]  # fmt: skip


async def test_hop_by_hop_and_framing_names_never_forwarded_via_prefix(demo):
    headers = [(f"Grpc-Metadata-{name}", "evil") for name in NEVER_FORWARDED]
    headers.append(("Grpc-Metadata-x-kept", "yes"))
    metadata = await backend_metadata(demo, headers)
    assert metadata["x-kept"] == "yes"
    leaked = {name: metadata[name] for name in NEVER_FORWARDED if name in metadata}
    assert leaked == {}


async def test_hop_by_hop_names_never_forwarded_even_when_listed(bridge_with):
    listed = ["keep-alive", "te", "trailer", "proxy-authorization", "host", "x-kept"]
    bridge = await bridge_with(forward_headers=listed)
    metadata = await backend_metadata(
        bridge,
        {
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "x-foo",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "x-kept": "yes",
        },
    )
    assert metadata["x-kept"] == "yes"
    leaked = {name: metadata[name] for name in listed if name != "x-kept" and name in metadata}
    assert leaked == {}
    # host and content-length are sent by the HTTP client on every request; never forwarded.
    assert "host" not in metadata
    assert "content-length" not in metadata


async def test_headers_named_in_connection_are_hop_by_hop(bridge_with):
    # RFC 9110 7.6.1: a header listed in Connection is meant for the next hop only.
    bridge = await bridge_with(forward_headers=["x-hop", "x-kept"])
    metadata = await backend_metadata(
        bridge, {"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "x-kept": "yes"}
    )
    assert metadata["x-kept"] == "yes"
    assert "x-hop" not in metadata


async def test_grpc_reserved_names_never_forwarded(demo):
    metadata = await backend_metadata(
        demo,
        {
            # If forwarded, this would cut the deadline to one nanosecond.
            "Grpc-Metadata-grpc-timeout": "1n",
            "Grpc-Metadata-grpc-encoding": "gzip",
            "Grpc-Metadata-grpc-status": "13",
            "Grpc-Metadata-x-kept": "yes",
        },
    )
    assert metadata["x-kept"] == "yes"
    assert not [k for k in metadata if k.startswith("grpc-")], metadata


async def test_grpc_metadata_grpc_timeout_does_not_set_the_deadline(demo):
    status, body, _ = await echo(demo, {"Grpc-Metadata-grpc-timeout": "1n"}, sleep_ms=50)
    assert status == 200, body
    assert body["deadlineRemaining"] > 1.0


# --- what the bridge owns ------------------------------------------------------------------


async def test_x_forwarded_for_is_the_client_address(demo):
    metadata = await backend_metadata(demo, {})
    assert metadata["x-forwarded-for"] == "127.0.0.1"


async def test_x_forwarded_for_cannot_be_spoofed(demo):
    metadata = await backend_metadata(
        demo,
        [
            ("X-Forwarded-For", "203.0.113.7"),
            ("Grpc-Metadata-X-Forwarded-For", "198.51.100.9"),
        ],
    )
    assert metadata["x-forwarded-for"] == "127.0.0.1"


async def test_x_forwarded_for_cannot_be_spoofed_even_when_listed(bridge_with):
    bridge = await bridge_with(forward_headers=["x-forwarded-for"])
    metadata = await backend_metadata(bridge, {"X-Forwarded-For": "203.0.113.7"})
    assert metadata["x-forwarded-for"] == "127.0.0.1"


async def test_request_id_generated_when_absent(demo):
    status, body, headers = await echo(demo, {})
    assert status == 200, body
    rid = headers["X-Request-Id"]
    assert rid
    assert body["metadata"]["x-request-id"] == rid
    _, body2, headers2 = await echo(demo, {})
    assert headers2["X-Request-Id"] != rid, "request ids must be unique per request"
    assert body2["metadata"]["x-request-id"] == headers2["X-Request-Id"]


async def test_request_id_kept_when_given(demo):
    status, body, headers = await echo(demo, {"X-Request-Id": "my-trace-0001"})
    assert status == 200, body
    assert headers["X-Request-Id"] == "my-trace-0001"
    assert body["metadata"]["x-request-id"] == "my-trace-0001"
    # Exactly one value reaches the backend (no generated id next to the given one).
    assert "," not in body["metadata"]["x-request-id"]


async def test_unusable_request_id_is_replaced(demo):
    status, body, headers = await echo(demo, {"X-Request-Id": "x" * 300})
    assert status == 200, body
    rid = headers["X-Request-Id"]
    assert rid and len(rid) <= 128
    assert body["metadata"]["x-request-id"] == rid


async def test_request_id_echoed_on_errors(demo):
    status, body, headers = await demo.json(
        "GET", "/v1/no-such-route", headers={"X-Request-Id": "e-1"}
    )
    assert status == 404, body
    assert headers["X-Request-Id"] == "e-1"
    status, body, headers = await demo.json("GET", "/v1/fail/5")
    assert status == 404, body
    assert headers["X-Request-Id"]


# --- backend metadata back to the client ---------------------------------------------------


async def test_backend_headers_and_trailers_become_response_headers(demo):
    status, body, headers = await echo(
        demo,
        {},
        response_headers={"x-served-by": "echo-1"},
        response_trailers={"x-cost": "42"},
    )
    assert status == 200, body
    assert headers["Grpc-Metadata-x-served-by"] == "echo-1"
    assert headers["Grpc-Trailer-x-cost"] == "42"
    assert "Grpc-Metadata-x-cost" not in headers
    assert "Grpc-Trailer-x-served-by" not in headers


async def test_backend_metadata_comes_back_on_errors_too(demo):
    # Echo sends its initial metadata before sleeping; the deadline then fails the call.
    status, body, headers = await echo(
        demo, {"grpc-timeout": "100m"}, sleep_ms=2000, response_headers={"x-served-by": "echo-1"}
    )
    assert status == 504, body
    assert headers["Grpc-Metadata-x-served-by"] == "echo-1"


async def test_backend_binary_metadata_comes_back_base64(demo):
    raw = base64.b64encode(b"\x00\x01\xfe\xff").decode()
    status, body, headers = await echo(demo, {}, response_headers={"x-blob-bin": raw})
    assert status == 200, body
    assert base64.b64decode(headers["Grpc-Metadata-x-blob-bin"]) == b"\x00\x01\xfe\xff"


# --- binary metadata -----------------------------------------------------------------------


async def test_bin_header_reaches_backend_as_bytes(demo):
    value = b"\x00\x01\x02\xff trace \x80"
    metadata = await backend_metadata(
        demo, {"Grpc-Metadata-trace-bin": base64.b64encode(value).decode()}
    )
    # Echo reports binary values base64-encoded; a text value would be reported as is.
    assert base64.b64decode(metadata["trace-bin"]) == value


async def test_bin_header_unpadded_base64_accepted(demo):
    value = b"\xfa\xce"
    encoded = base64.b64encode(value).decode().rstrip("=")
    metadata = await backend_metadata(demo, {"Grpc-Metadata-trace-bin": encoded})
    assert base64.b64decode(metadata["trace-bin"]) == value


@pytest.mark.parametrize("value", ["not base64!", "@@@@", "YWJj$ZGVm"])
async def test_invalid_base64_in_bin_header_is_400_before_backend(demo, value):
    body = await assert_rejected_before_backend(demo, {"Grpc-Metadata-trace-bin": value})
    assert "trace-bin" in body["message"]


async def test_non_ascii_metadata_value_is_400(demo):
    body = await assert_rejected_before_backend(demo, {"Grpc-Metadata-x-name": "Zoë"})
    assert "x-name" in body["message"]


async def test_metadata_over_8_kib_in_total_is_400_before_backend(demo):
    # Ten headers of 1 KiB each: no single header is large, the total is over 8 KiB.
    headers = [(f"Grpc-Metadata-x-chunk-{i}", "v" * 1024) for i in range(10)]
    await assert_rejected_before_backend(demo, headers)


async def test_metadata_limit_is_configurable(bridge_with):
    bridge = await bridge_with(limits={"max_metadata": "1KiB"})
    await assert_rejected_before_backend(bridge, {"Grpc-Metadata-x-blob": "v" * 1500})
    metadata = await backend_metadata(bridge, {"Grpc-Metadata-x-small": "v" * 500})
    assert metadata["x-small"] == "v" * 500


async def test_metadata_under_the_limit_is_accepted(demo):
    headers = [(f"Grpc-Metadata-x-chunk-{i}", "v" * 1000) for i in range(6)]
    metadata = await backend_metadata(demo, headers)
    assert metadata["x-chunk-5"] == "v" * 1000
