"""Resilient upstreams (SPEC 7) against real backends: failover, retries, health and breakers.

Every test runs two or more real gRPC servers: example-service processes killed while traffic
flows, or in-process servers that count what they received, fail on demand, or flip their
grpc.health.v1 status.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.echo.servicer import EchoServicer
from services.serving import bind_and_start, new_server
from tests.conftest import ROOT, Bridge, StartBridge, demo_config

from demo.echo.v1 import echo_pb2_grpc  # isort: skip  (generated, importable after services)
from demo.users.v1 import users_pb2  # isort: skip

DEAD = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


class EchoProcess:
    """``python -m services.echo`` in its own process, on a free port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(cls) -> EchoProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.echo", "--port", "0",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        return cls(proc, int(line.rsplit(":", 1)[1]))

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()


@pytest.fixture
async def echo_processes() -> AsyncIterator[list[EchoProcess]]:
    processes = list(await asyncio.gather(EchoProcess.start(), EchoProcess.start()))
    yield processes
    for process in processes:
        await process.kill()


def upstream(name: str, targets: list[str], **settings: Any) -> dict[str, Any]:
    """The example config with upstream ``name`` on ``targets`` (the other one on a dead port)."""
    config = demo_config(users_port=1, echo_port=1)
    config["upstreams"][name] = {"targets": targets, "timeout": "5s", **settings}
    return config


def echo_upstream(targets: list[str], **settings: Any) -> dict[str, Any]:
    return upstream("echo", targets, **settings)


def users_upstream(targets: list[str], **settings: Any) -> dict[str, Any]:
    return upstream("users", targets, **settings)


async def traffic(
    call: Callable[[int], Awaitable[bool]], during: float, workers: int = 4
) -> tuple[int, list[int]]:
    """Run ``call`` in a loop from several workers for ``during`` seconds: (calls, failed ones)."""
    failed: list[int] = []
    counter = iter(range(10**9))
    stop = time.monotonic() + during

    async def worker() -> None:
        while time.monotonic() < stop:
            i = next(counter)
            if not await call(i):
                failed.append(i)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return next(counter), failed


async def echo_ok(bridge: Bridge, i: int) -> bool:
    status, body, _ = await bridge.json("GET", f"/v1/echo/m{i}")
    return status == 200 and body["message"] == f"m{i}"


async def ticks_ok(bridge: Bridge, i: int, whole: bool = True) -> bool:
    """A stream of two ticks; with ``whole`` False, one cut after its first tick counts too
    (SPEC 7 retries a stream only before its first message)."""
    async with bridge.request("GET", "/v1/ticks?count=2") as resp:
        text = await resp.text()
    if not whole:
        return resp.status == 200 and text.startswith('{"result":{"seq":"1"')
    return resp.status == 200 and text.count('"seq"') == 2 and '"error"' not in text


async def test_a_killed_backend_loses_no_safe_call(
    start_bridge: StartBridge, echo_processes: list[EchoProcess]
) -> None:
    """SIGKILL mid-traffic: calls in flight on it are retried (safe method, `retries`), new
    ones go to the survivor; unary and server-streaming alike. A stream cut after its first
    message is the one loss SPEC 7 allows: its client has seen part of the answer."""
    a, b = echo_processes
    retries = {"attempts": 3, "on": ["UNAVAILABLE"], "backoff": "10ms"}
    bridge = await start_bridge(
        echo_upstream([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], retries=retries)
    )

    async def mixed(i: int) -> bool:
        return await echo_ok(bridge, i) if i % 2 else await ticks_ok(bridge, i, whole=False)

    async def kill_soon() -> None:
        await asyncio.sleep(0.3)
        await a.kill()

    (calls, failed), _ = await asyncio.gather(traffic(mixed, 1.0), kill_soon())
    assert calls > 50 and not failed, f"{len(failed)} of {calls} failed"


async def test_every_backend_down_is_a_fast_503_naming_the_upstream(
    start_bridge: StartBridge, echo_processes: list[EchoProcess]
) -> None:
    a, b = echo_processes
    bridge = await start_bridge(echo_upstream([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]))
    assert await echo_ok(bridge, 0)
    await asyncio.gather(a.kill(), b.kill())
    for path in ("/v1/echo/x", "/v1/ticks?count=1"):
        started = time.monotonic()
        status, body, _ = await bridge.json("GET", path, headers={"grpc-timeout": "4S"})
        assert time.monotonic() - started < 0.5
        assert status == 503 and body["code"] == 14
        assert body["message"].startswith("upstream 'echo': no target reachable"), body


class Counting:
    """demo.users.v1.UserService on a real server, counting calls and failing on demand."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.fail: Counter[str] = Counter()  # method -> how many more calls fail UNAVAILABLE
        self.hang: set[str] = set()  # methods that wait until the server stops

    async def _answer(self, method: str, context: grpc.aio.ServicerContext) -> users_pb2.User:
        self.received[method] += 1
        if method in self.hang:
            await asyncio.sleep(30)
        if self.fail[method] > 0:
            self.fail[method] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded, try again")
        return users_pb2.User(id="u1", display_name=method)

    async def start(self) -> tuple[grpc.aio.Server, str]:
        def unary(method: str, request_type: Any) -> grpc.RpcMethodHandler:
            async def handle(request: Any, context: grpc.aio.ServicerContext) -> users_pb2.User:
                return await self._answer(method, context)

            return grpc.unary_unary_rpc_method_handler(
                handle,
                request_deserializer=request_type.FromString,
                response_serializer=users_pb2.User.SerializeToString,
            )

        handlers = {
            "GetUser": unary("GetUser", users_pb2.GetUserRequest),
            "CreateUser": unary("CreateUser", users_pb2.CreateUserRequest),
        }
        server = new_server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("demo.users.v1.UserService", handlers),)
        )
        return server, f"127.0.0.1:{await bind_and_start(server, '127.0.0.1', 0)}"


@pytest.fixture
async def counting() -> AsyncIterator[list[tuple[Counting, grpc.aio.Server, str]]]:
    backends = []
    for _ in range(2):
        backend = Counting()
        backends.append((backend, *await backend.start()))
    yield backends
    for _, server, _ in backends:
        await server.stop(None)


def received(backends: list[tuple[Counting, Any, str]], method: str) -> int:
    return sum(backend.received[method] for backend, _, _ in backends)


RETRIES = {"attempts": 3, "on": ["UNAVAILABLE"], "backoff": "5ms"}


async def test_a_call_that_reached_a_backend_is_repeated_only_if_safe(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    bridge = await start_bridge(users_upstream([t for _, _, t in counting], retries=RETRIES))
    for backend, _, _ in counting:
        backend.fail.update({"CreateUser": 10, "GetUser": 10})
    status, body, _ = await bridge.json("POST", "/v1/users", json={"displayName": "x"})
    assert status == 503 and body["message"] == "overloaded, try again"
    assert received(counting, "CreateUser") == 1  # not safe: never sent twice
    status, body, _ = await bridge.json("GET", "/v1/users/u1")
    assert status == 503 and received(counting, "GetUser") == 3  # safe: 3 tries in all


async def test_a_safe_call_is_retried_until_it_succeeds(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    bridge = await start_bridge(users_upstream([t for _, _, t in counting], retries=RETRIES))
    for backend, _, _ in counting:
        backend.fail["GetUser"] = 1  # each fails its first call
    status, body, _ = await bridge.json("GET", "/v1/users/u1")
    assert status == 200 and body["displayName"] == "GetUser"
    assert received(counting, "GetUser") == 3


async def test_without_retries_a_failed_safe_call_is_not_repeated(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    bridge = await start_bridge(users_upstream([t for _, _, t in counting]))
    counting[0][0].fail["GetUser"] = counting[1][0].fail["GetUser"] = 1
    status, _, _ = await bridge.json("GET", "/v1/users/u1")
    assert status == 503 and received(counting, "GetUser") == 1


async def test_a_connection_lost_mid_call_is_never_repeated_for_an_unsafe_method(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    """The backend read the request, then went away: the call may have had its effect."""
    bridge = await start_bridge(users_upstream([t for _, _, t in counting], retries=RETRIES))
    for backend, _, _ in counting:
        backend.hang.add("CreateUser")
    call = asyncio.create_task(bridge.json("POST", "/v1/users", json={"displayName": "x"}))
    while received(counting, "CreateUser") == 0:
        await asyncio.sleep(0.01)
    hit = next(server for backend, server, _ in counting if backend.received["CreateUser"])
    await hit.stop(None)
    status, _, _ = await call
    assert status != 200 and received(counting, "CreateUser") == 1


async def test_retries_stop_at_the_deadline(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    slow = {"attempts": 5, "on": ["UNAVAILABLE"], "backoff": "400ms"}
    bridge = await start_bridge(users_upstream([t for _, _, t in counting], retries=slow))
    for backend, _, _ in counting:
        backend.fail["GetUser"] = 10
    started = time.monotonic()
    status, _, _ = await bridge.json("GET", "/v1/users/u1", headers={"grpc-timeout": "500m"})
    # The first wait (200-600 ms) may fit in the 500 ms; the second (400-1200 ms) cannot. The
    # answer is the last failure (503), or a 504 when the deadline ran out during the second
    # attempt (a loaded machine); either way no attempt starts past the deadline.
    assert status in (503, 504) and received(counting, "GetUser") in (1, 2)
    assert time.monotonic() - started < 0.6


async def test_the_circuit_opens_after_failures_and_a_trial_closes_it(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    (backend, _, target), _ = counting
    breaker = {"failures": 3, "reset": "300ms"}
    bridge = await start_bridge(users_upstream([target], circuit_breaker=breaker))
    backend.fail["GetUser"] = 4
    for _ in range(3):
        status, body, _ = await bridge.json("GET", "/v1/users/u1")
        assert body["message"] == "overloaded, try again"
    started = time.monotonic()
    status, body, _ = await bridge.json("GET", "/v1/users/u1")
    assert time.monotonic() - started < 0.1 and status == 503
    assert body["message"] == "upstream 'users': no target in the rotation (1 with an open circuit)"
    assert backend.received["GetUser"] == 3  # the open circuit kept the call off the target
    await asyncio.sleep(0.35)
    status, _, _ = await bridge.json("GET", "/v1/users/u1")  # the trial fails: open again
    assert status == 503 and backend.received["GetUser"] == 4
    status, body, _ = await bridge.json("GET", "/v1/users/u1")
    assert "open circuit" in body["message"] and backend.received["GetUser"] == 4
    await asyncio.sleep(0.35)
    for _ in range(3):  # the trial succeeds: closed, every call reaches it again
        status, _, _ = await bridge.json("GET", "/v1/users/u1")
        assert status == 200
    assert backend.received["GetUser"] == 7


async def test_an_open_circuit_sends_every_call_to_the_other_target(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    (bad, _, bad_target), (good, _, good_target) = counting
    breaker = {"failures": 2, "reset": "10s"}
    bridge = await start_bridge(users_upstream([bad_target, good_target], circuit_breaker=breaker))
    bad.fail["GetUser"] = 100
    results = [(await bridge.json("GET", "/v1/users/u1"))[0] for _ in range(10)]
    assert results.count(503) == 2 and bad.received["GetUser"] == 2
    assert good.received["GetUser"] == 8


async def test_a_dead_target_is_skipped_without_failing_a_call(
    start_bridge: StartBridge, counting: list[tuple[Counting, Any, str]]
) -> None:
    """Connect failures are transparent retries, and count for the breaker too."""
    (good, _, target), _ = counting
    breaker = {"failures": 1, "reset": "10s"}
    bridge = await start_bridge(users_upstream([DEAD, target], circuit_breaker=breaker))
    statuses = [(await bridge.json("POST", "/v1/users", json={"displayName": "x"}))[0]]
    statuses += [(await bridge.json("POST", "/v1/users", json={"displayName": "x"}))[0]]
    assert statuses == [200, 200] and good.received["CreateUser"] == 2


class Watched:
    """An EchoService server whose grpc.health.v1 status the test sets."""

    def __init__(self) -> None:
        self.servicer = EchoServicer()
        self.health = health.aio.HealthServicer()

    async def start(self) -> tuple[grpc.aio.Server, str]:
        server = new_server()
        echo_pb2_grpc.add_EchoServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        await self.set(True)
        return server, f"127.0.0.1:{await bind_and_start(server, '127.0.0.1', 0)}"

    async def set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        await self.health.set("", status.SERVING if serving else status.NOT_SERVING)

    @property
    def calls(self) -> int:
        return self.servicer.stats.started


async def test_a_target_not_serving_leaves_the_rotation_until_it_serves(
    start_bridge: StartBridge,
) -> None:
    backends = [Watched(), Watched()]
    servers = [await backend.start() for backend in backends]
    try:
        bridge = await start_bridge(echo_upstream([t for _, t in servers], health_check=True))
        a, b = backends
        await a.set(False)
        await asyncio.sleep(0.1)  # the watch stream brings the change
        before = a.calls
        for i in range(6):
            assert await echo_ok(bridge, i)
        assert a.calls == before and b.calls >= 6
        await a.set(True)
        await asyncio.sleep(0.1)
        for i in range(6):
            assert await echo_ok(bridge, i)
        assert a.calls == before + 3
        await a.set(False)
        await b.set(False)
        await asyncio.sleep(0.1)
        status, body, _ = await bridge.json("GET", "/v1/echo/x")
        assert status == 503
        assert body["message"] == "upstream 'echo': no target in the rotation (2 not serving)"
    finally:
        for server, _ in servers:
            await server.stop(None)


async def test_a_drained_backend_loses_no_call_of_any_method(start_bridge: StartBridge) -> None:
    """A backend that says NOT_SERVING, then stops (as a deployment drains one), with no
    `retries`: calls on it finish, new ones go to the other, even a client stream (Sum, not
    safe). Stopped without draining, a gRPC server cancels calls that arrive as it stops:
    CANCELLED, which no client can tell from a call the backend gave up on after acting."""
    backends = [Watched(), Watched()]
    servers = [await backend.start() for backend in backends]
    try:
        bridge = await start_bridge(echo_upstream([t for _, t in servers], health_check=True))

        async def mixed(i: int) -> bool:
            if i % 3 == 0:
                return await ticks_ok(bridge, i)
            if i % 3 == 1:
                return await echo_ok(bridge, i)
            status, body, _ = await bridge.json(
                "POST", "/v1/sum", json=[{"value": i}, {"value": 1}]
            )
            return status == 200 and int(body["total"]) == i + 1

        async def drain_soon() -> None:
            await asyncio.sleep(0.3)
            await backends[0].set(False)
            await asyncio.sleep(0.2)
            await servers[0][0].stop(1.0)

        (calls, failed), _ = await asyncio.gather(traffic(mixed, 1.0), drain_soon())
        assert calls > 50 and not failed, f"{len(failed)} of {calls} failed"
    finally:
        for server, _ in servers:
            await server.stop(None)
