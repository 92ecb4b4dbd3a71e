"""google.api.HttpBody as raw bodies (SPEC section 3 "Raw bodies"): replies, response_body
fields and server streams written as raw bytes with their content type, requests taking the raw
body and Content-Type; errors before and after the first byte; the plans' flags alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from multidict import MultiDict

from bridge.transcode.request import RequestPlan
from bridge.transcode.response import OCTET_STREAM, ResponsePlan
from tests.conftest import Bridge, StartBridge
from tests.proto_service import bridge_for, fidelity_pool, message_class
from tests.ws_client import connect, status

__all__ = ["fidelity_pool"]  # a session fixture, imported so that pytest finds it

PAGE: Final = b"\x00\xff<p>not UTF-8, not JSON</p>"
CSV: Final = b"a,b\n1,2\n"
TEXT: Final = "text/plain; charset=utf-8"


@pytest.fixture
async def raw(start_bridge: StartBridge, fidelity_pool: descriptor_pool.DescriptorPool):
    """The bridge in front of a RawService backend that reports what it received."""
    http_body = message_class(fidelity_pool, "google.api.HttpBody")
    report = message_class(fidelity_pool, "Report")
    stored = message_class(fidelity_pool, "Stored")

    async def page(request: Any, context: grpc.aio.ServicerContext) -> Message:
        if request.name == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no page 'missing'")
        return http_body(content_type=request.content_type, data=PAGE + request.name.encode())

    async def report_of(request: Any, context: grpc.aio.ServicerContext) -> Message:
        return report(title=request.name, body=http_body(content_type="text/csv", data=CSV))

    async def store(request: Any, context: grpc.aio.ServicerContext) -> Message:
        return stored(content_type=request.content_type, data=request.data)

    async def attach(request: Any, context: grpc.aio.ServicerContext) -> Message:
        file = request.file
        return stored(
            name=request.name,
            note=request.note,
            content_type=file.content_type,
            data=file.data,
            has_file=request.HasField("file"),
        )

    handlers = {
        "RawService/Page": page,
        "RawService/GetReport": report_of,
        "RawService/Store": store,
        "RawService/Attach": attach,
    }
    bridges: AsyncIterator[Bridge] = bridge_for(start_bridge, fidelity_pool, handlers)
    yield await anext(bridges)
    await bridges.aclose()


async def fetch(bridge: Bridge, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, Any]:
    async with bridge.request(method, path, **kwargs) as resp:
        return resp.status, await resp.read(), resp.headers


# --- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, content_type",
    [
        pytest.param("?content_type=text/html;%20charset=utf-8", "text/html; charset=utf-8",
                     id="its-content-type"),
        pytest.param("", OCTET_STREAM, id="none-is-octet-stream"),
        pytest.param("?content_type=a%01b", OCTET_STREAM, id="unsendable-is-octet-stream"),
    ],
)  # fmt: skip
async def test_http_body_reply_is_raw(raw: Bridge, query: str, content_type: str) -> None:
    got, body, headers = await fetch(raw, "GET", f"/v1/pages/home{query}")
    assert got == 200
    assert body == PAGE + b"home"
    assert headers["Content-Type"] == content_type
    assert headers["X-Request-Id"]


async def test_response_body_http_body_is_raw_and_other_bindings_stay_json(raw: Bridge) -> None:
    got, body, headers = await fetch(raw, "GET", "/v1/reports/q1")
    assert (got, body, headers["Content-Type"]) == (200, CSV, "text/csv")
    got, body, headers = await fetch(raw, "GET", "/v1/reports/q1:json")  # no response_body
    assert got == 200 and headers["Content-Type"].startswith("application/json")
    reply = json.loads(body)
    assert reply["title"] == "q1" and base64.b64decode(reply["body"]["data"]) == CSV


async def test_error_before_the_first_byte_is_a_status_body(raw: Bridge) -> None:
    got, body, headers = await fetch(raw, "GET", "/v1/pages/missing")
    assert got == 404 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"code": 5, "message": "no page 'missing'", "details": []}
    assert (await fetch(raw, "GET", "/v1/pages/home"))[0] == 200


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, content_type",
    [
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\xff", "image/png", id="binary"),
        pytest.param(b'{"contentType": "x", "data": "AA=="}', "application/json", id="json-text"),
        pytest.param(b"", "text/plain", id="empty"),
    ],
)
async def test_http_body_request_takes_the_raw_body(
    raw: Bridge, data: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type}
    got, body, _ = await fetch(raw, "POST", "/v1/blobs", data=data, headers=headers)
    assert got == 200, body
    reply = json.loads(body)
    assert reply["contentType"] == content_type
    assert base64.b64decode(reply["data"]) == data


async def test_http_body_field_takes_the_raw_body_and_query_binds_the_rest(raw: Bridge) -> None:
    headers = {"Content-Type": "text/csv"}
    path = "/v1/things/t1/attachment?note=hello"
    got, body, _ = await fetch(raw, "PUT", path, data=CSV, headers=headers)
    assert got == 200, body
    reply = json.loads(body)
    assert (reply["name"], reply["note"], reply["contentType"]) == ("t1", "hello", "text/csv")
    assert base64.b64decode(reply["data"]) == CSV and reply["hasFile"] is True
    got, body, _ = await fetch(raw, "PUT", "/v1/things/t1/attachment?bogus=1", data=CSV)
    assert got == 400 and "bogus" in json.loads(body)["message"]


async def test_websocket_calls_keep_http_body_as_json(raw: Bridge) -> None:
    async with connect(raw.url) as ws:
        message = {"contentType": "text/plain", "data": base64.b64encode(b"hi").decode()}
        frames = await ws.call(1, "fidelity.v1.RawService/Store", message)
        assert status(frames)["code"] == 0, frames
        assert frames[-2]["message"]["data"] == base64.b64encode(b"hi").decode()


# --- the echo example: Download (a stream of HttpBody) and Upload --------------------------


async def test_download_is_the_concatenated_chunks(demo: Bridge) -> None:
    got, body, headers = await fetch(demo, "GET", "/v1/files/report.txt?lines=3")
    assert got == 200
    assert body == b"report.txt line 1\nreport.txt line 2\nreport.txt line 3\n"
    assert headers["Content-Type"] == TEXT
    assert headers["Transfer-Encoding"] == "chunked"


async def test_download_uses_the_first_chunks_content_type(demo: Bridge) -> None:
    got, _, headers = await fetch(demo, "GET", "/v1/files/a.csv?content_type=text/csv")
    assert (got, headers["Content-Type"]) == (200, "text/csv")


async def test_download_chunks_are_written_as_they_arrive(demo: Bridge) -> None:
    started = time.monotonic()
    async with demo.request("GET", "/v1/files/slow?lines=3&interval_ms=600") as resp:
        first = await resp.content.readuntil(b"\n")
        first_at = time.monotonic() - started
        rest = await resp.read()
    assert first == b"slow line 1\n" and first_at < 0.5, first_at
    assert rest == b"slow line 2\nslow line 3\n"
    assert time.monotonic() - started >= 1.2


async def raw_get(bridge: Bridge, path: str) -> bytes:
    """Everything the bridge sends for a GET until it closes the connection."""
    url = urlsplit(bridge.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 5)  # read() ends at the bridge's close
    finally:
        writer.close()


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body of a chunked response and whether it ended with the terminating chunk."""
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body, True
        body, data = body + data[:size], data[size + 2 :]
    return body, False


async def test_download_failing_midway_ends_with_an_error_line_and_no_last_chunk(
    demo: Bridge,
) -> None:
    answer = await raw_get(demo, "/v1/files/f?lines=5&fail_after=2")
    head, _, chunked = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    body, complete = dechunk(chunked)
    assert not complete, "the body must not look complete"
    lines = body.split(b"\n")
    assert lines[:2] == [b"f line 1", b"f line 2"]
    assert json.loads(lines[2]) == {
        "error": {"code": 14, "message": "file source failed", "details": []}
    }
    with pytest.raises(aiohttp.ClientPayloadError):  # a client library sees it too
        await fetch(demo, "GET", "/v1/files/f?lines=5&fail_after=2")
    got, body, _ = await fetch(demo, "GET", "/v1/files/ok")
    assert got == 200 and body.endswith(b"ok line 3\n")


async def test_download_failing_before_the_first_chunk_is_a_status_body(demo: Bridge) -> None:
    got, body, headers = await fetch(demo, "GET", "/v1/files/f?lines=-1")
    assert got == 400 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"code": 3, "message": "lines must not be negative", "details": []}


async def test_upload_takes_the_raw_body(demo: Bridge) -> None:
    data = bytes(range(256)) * 40
    headers = {"Content-Type": "application/x-thing"}
    got, body, _ = await fetch(demo, "POST", "/v1/files/blob.bin", data=data, headers=headers)
    assert got == 200, body
    assert json.loads(body) == {
        "name": "blob.bin",
        "contentType": "application/x-thing",
        "size": str(len(data)),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


async def test_upload_with_a_non_ascii_content_type_is_400(demo: Bridge) -> None:
    url = urlsplit(demo.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        f"POST /v1/files/x HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n".encode()
        + b"Content-Type: text/\xc3\xa9\r\nContent-Length: 2\r\n\r\nhi"
    )
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert "Content-Type" in json.loads(body)["message"]
    assert (await fetch(demo, "POST", "/v1/files/x", data=b"hi"))[0] == 200


# --- unit: the plans decide once per route -------------------------------------------------


@pytest.mark.parametrize(
    "request_type, body, raw_body",
    [
        pytest.param("google.api.HttpBody", "*", (), id="whole-request"),
        pytest.param("AttachRequest", "file", ("file",), id="body-field"),
        pytest.param("AttachRequest", "*", None, id="star-on-a-holder-is-json"),
        pytest.param("google.api.HttpBody", "", None, id="no-body"),
        pytest.param("PageRequest", "*", None, id="plain-message"),
    ],
)
def test_request_plan_raw_body(fidelity_pool, request_type: str, body: str, raw_body) -> None:
    plan = RequestPlan.build(message_class(fidelity_pool, request_type), fidelity_pool, body, ())
    assert plan.raw_body == raw_body


def test_raw_request_binds_path_and_query(fidelity_pool) -> None:
    plan = RequestPlan.build(
        message_class(fidelity_pool, "AttachRequest"), fidelity_pool, "file", (("name",),)
    )
    message: Any = plan.to_message(
        {("name",): "t"}, b"\x00raw", MultiDict(note="n"), "application/x"
    )
    assert (message.name, message.note) == ("t", "n")
    assert (message.file.content_type, message.file.data) == ("application/x", b"\x00raw")


@pytest.mark.parametrize(
    "output, field, raw",
    [
        pytest.param("google.api.HttpBody", None, True, id="whole-reply"),
        pytest.param("Report", "body", True, id="response-body-field"),
        pytest.param("Report", None, False, id="holder-is-json"),
        pytest.param("Report", "title", False, id="other-response-body"),
        pytest.param("google.api.HttpBody", "content_type", False, id="a-field-of-it"),
    ],
)
def test_response_plan_raw(fidelity_pool, output: str, field: str | None, raw: bool) -> None:
    descriptor = message_class(fidelity_pool, output).DESCRIPTOR
    chosen = descriptor.fields_by_name[field] if field else None
    plan = ResponsePlan.build(descriptor, fidelity_pool, True, False, chosen)
    assert plan.raw is raw
