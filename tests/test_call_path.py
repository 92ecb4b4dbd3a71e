"""The one call path: chains composed once per method, one terminal, one guard for bugs."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from typing import Any

import pytest

from bridge.call import HTTP, Call, Principal
from bridge.config import UpstreamSettings
from bridge.policy import compose
from bridge.upstream import call as upstream_call
from bridge.upstream import pool
from tests.conftest import Bridge, demo_config
from tests.ws_client import connect, messages, status

USER = "/v1/users/1"


class Recorder:
    """A step that notes it ran, then either refuses or goes on."""

    def __init__(self, name: str, seen: list[str], refuse: Exception | None = None) -> None:
        self.name, self.seen, self.refuse = name, seen, refuse

    async def __call__(self, call: Call, next: Any) -> Any:
        self.seen.append(self.name)
        if self.refuse is not None:
            raise self.refuse
        return await next(call)


async def terminal(call: Call) -> Any:
    call.response_headers["terminal"] = "reached"
    return "reply"


def fake_call() -> Call:
    return Call(None, None, [], None, "127.0.0.1", HTTP, "rid")  # type: ignore[arg-type]


def test_no_steps_is_the_terminal_itself():
    """A method without policies pays nothing: its chain is the upstream call."""
    assert compose([], terminal) is terminal


async def test_steps_run_in_order_then_the_terminal():
    seen: list[str] = []
    invoke = compose([Recorder("auth", seen), Recorder("limit", seen)], terminal)
    call = fake_call()
    assert await invoke(call) == "reply"
    assert seen == ["auth", "limit"]
    assert call.response_headers == {"terminal": "reached"}


async def test_a_refusing_step_stops_the_chain():
    seen: list[str] = []
    refusal = PermissionError("no")
    invoke = compose([Recorder("auth", seen, refusal), Recorder("limit", seen)], terminal)
    call = fake_call()
    with pytest.raises(PermissionError):
        await invoke(call)
    assert seen == ["auth"]
    assert "terminal" not in call.response_headers


@pytest.fixture
async def buggy(monkeypatch, start_bridge, users_server, echo_server) -> Bridge:
    """The bridge with a bug in the terminal step's unary replies (streams still work)."""

    async def broken(self: Any) -> Any:
        raise ZeroDivisionError("a bug")

    bridge = await start_bridge(demo_config(users_server, echo_server))
    monkeypatch.setattr(upstream_call.UnaryReply, "next", broken)
    return bridge


async def test_a_bug_in_a_rest_call_is_internal_and_logged_once_with_its_request_id(
    buggy: Bridge, caplog
):
    with caplog.at_level(logging.ERROR, "bridge"):
        status_code, body, headers = await buggy.json("GET", USER, headers={"x-request-id": "r-1"})
    assert status_code == 500
    assert body["code"] == 13 and "r-1" in body["message"]
    assert headers["X-Request-Id"] == "r-1"
    logged = [r for r in caplog.records if "r-1" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    # The bridge goes on serving: a stream does not use the broken piece.
    async with buggy.request("GET", "/v1/ticks?count=2") as resp:
        assert resp.status == 200


async def test_a_bug_in_a_websocket_call_ends_it_with_internal_and_the_socket_goes_on(
    buggy: Bridge, caplog
):
    with caplog.at_level(logging.ERROR, "bridge"):
        async with connect(buggy.url) as ws:
            frames = await ws.call(1, "Echo", {"message": "hi"})
            assert status(frames)["code"] == 13
            assert "request id" in status(frames)["message"]
            streamed = await ws.call(2, "Tick", {"count": 2})
            assert status(streamed)["code"] == 0 and len(messages(streamed)) == 2
    assert len([r for r in caplog.records if r.exc_info is not None]) == 1


async def test_the_subject_goes_to_the_backend_only_from_the_principal():
    """The terminal adds x-bridge-subject from the principal; the call's own list is untouched."""
    sent: dict[str, Any] = {}

    class Stub:
        def __call__(self, request: Any, *, timeout: Any, metadata: Any) -> Any:
            sent["metadata"] = metadata
            raise RuntimeError("stop here")

    class Upstreams(dict):
        pass

    class Fake(pool.Upstream):
        def stub(self, method: Any, target: Any) -> Any:
            return Stub()

    class Method:
        upstream, server_streaming = "u", False

    class Binding:
        method = Method()

        class request:
            pool = None

    call = fake_call()
    call.binding = Binding()  # type: ignore[assignment]
    call.metadata = [("x-request-id", "rid")]
    call.principal = Principal("alice", "jwt")
    with pytest.raises(RuntimeError):
        fake = Fake(UpstreamSettings(name="u", targets=("127.0.0.1:1",)))
        await upstream_call.Upstream(Upstreams(u=fake))(call)  # type: ignore[arg-type]
    assert sent["metadata"] == [("x-request-id", "rid"), ("x-bridge-subject", "alice")]
    assert call.metadata == [("x-request-id", "rid")]


async def test_registration_temp_folders_are_made_and_removed_off_the_event_loop(
    monkeypatch, start_bridge, users_server, echo_server, tmp_path
):
    threads: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        threads.append(threading.current_thread().name)
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    config = demo_config(users_server, echo_server, admin={"token": "t"})
    config["protos"]["store"] = str(tmp_path / "store")
    bridge = await start_bridge(config)
    proto = 'syntax = "proto3"; package t.v1; message M {} service S { rpc Get(M) returns (M); }'
    body = {"name": "t", "upstream": "users", "files": {"t/v1/t.proto": proto}}
    headers = {"Authorization": "Bearer t"}
    async with bridge.request("POST", "/admin/protos", json=body, headers=headers) as resp:
        assert resp.status in (200, 201), await resp.text()
    assert threads and threading.main_thread().name not in threads
    assert not list(tmp_path.glob("bridge-upload-*"))


async def test_a_bug_in_the_middle_of_a_stream_ends_it_with_an_internal_line(
    monkeypatch, start_bridge, users_server, echo_server, caplog
):
    """Once a stream's headers went out, the bug's INTERNAL status is its last NDJSON line."""
    real_next = upstream_call.StreamReply.next
    calls = 0

    async def second_read_fails(self: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ZeroDivisionError("a bug")
        return await real_next(self)

    bridge = await start_bridge(demo_config(users_server, echo_server))
    monkeypatch.setattr(upstream_call.StreamReply, "next", second_read_fails)
    with caplog.at_level(logging.ERROR, "bridge"):
        async with bridge.request("GET", "/v1/ticks?count=3", headers={"x-request-id": "s-1"}) as r:
            assert r.status == 200
            lines = [json.loads(line) for line in (await r.read()).splitlines()]
    assert "result" in lines[0]
    assert lines[-1]["error"]["code"] == 13 and "s-1" in lines[-1]["error"]["message"]
    assert len([rec for rec in caplog.records if rec.exc_info is not None]) == 1
