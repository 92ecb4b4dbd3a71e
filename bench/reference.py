"""Yardsticks for the bridge's cost, each its own process: ``python -m bench.reference ...``.

``client``: the grpc.aio client alone, with the bridge's channel options, on uvloop, making
the bench's calls as fast as the backend answers. It prints one JSON line with its own CPU
time: the least any bridge built on grpc.aio can spend per call on this machine.

``hop``: the naive single-process hop the benchmark issue measures against, an aiohttp handler
that parses the body with json_format, makes one grpc.aio call and prints the reply with
json_format, over a channel with the bridge's options. wrk drives it like the bridge, so it is
the machine's own price of a hop, and the difference is the bridge's own work.
"""

from __future__ import annotations  # noqa: I001  (services before demo.*)

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Sequence

import grpc
import uvloop
from aiohttp import web
from google.protobuf import json_format

import services  # noqa: F401  (puts the generated code on sys.path, so before demo.*)
from bench.load import percentile
from bridge.upstream.pool import CHANNEL_OPTIONS
from demo.bench.v1 import bench_pb2

Outcome = dict[str, float | None]  # count, seconds, cpu_seconds[, p50_ms, p99_ms]
ECHO = "/demo.bench.v1.BenchService/Echo"
STREAM = "/demo.bench.v1.BenchService/Stream"


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


async def unary_calls(target: str, connections: int, seconds: float, message: str) -> Outcome:
    """``connections`` concurrent callers making Echo calls for ``seconds``."""
    async with _channel(target) as channel:
        echo = channel.unary_unary(ECHO, request_serializer=bench_pb2.Ping.SerializeToString,
                                   response_deserializer=bench_pb2.Ping.FromString)  # fmt: skip
        request = bench_pb2.Ping(message=message)
        for _ in range(100):  # connect and warm up, unmeasured
            await echo(request)
        latencies: list[float] = []
        stop = time.monotonic() + seconds

        async def caller() -> None:
            while (start := time.monotonic()) < stop:
                await echo(request)
                latencies.append((time.monotonic() - start) * 1000)

        cpu, wall = await _measured(asyncio.gather(*(caller() for _ in range(connections))))
        return {
            "count": len(latencies),
            "seconds": wall,
            "cpu_seconds": cpu,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
        }


async def stream_calls(target: str, streams: int, messages: int, message: str) -> Outcome:
    """``streams`` concurrent Stream calls that together receive ``messages`` messages."""
    async with _channel(target) as channel:
        stream = channel.unary_stream(STREAM, request_serializer=bench_pb2.Ping.SerializeToString,
                                      response_deserializer=bench_pb2.Ping.FromString)  # fmt: skip
        per = messages // streams

        async def receive(count: int) -> int:
            received = 0
            async for _ in stream(bench_pb2.Ping(message=message, count=count)):
                received += 1
            return received

        await receive(100)  # connect and warm up, unmeasured
        counts = asyncio.gather(*(receive(per) for _ in range(streams)))
        cpu, wall = await _measured(counts)
        return {"count": sum(counts.result()), "seconds": wall, "cpu_seconds": cpu}


async def _measured(work: Awaitable[object]) -> tuple[float, float]:
    """Await work; the CPU seconds this process spent on it, and the wall seconds."""
    before, started = os.times(), time.monotonic()
    await work
    after = os.times()
    return (after.user - before.user) + (after.system - before.system), time.monotonic() - started


def hop_app(target: str) -> web.Application:
    """The naive hop: json_format in, one grpc.aio call, json_format out; nothing else."""
    app = web.Application()
    state: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    async def connect(_: web.Application):  # type: ignore[no-untyped-def]
        async with _channel(target) as channel:
            state["echo"] = channel.unary_unary(
                ECHO, request_serializer=bench_pb2.Ping.SerializeToString,
                response_deserializer=bench_pb2.Ping.FromString,
            )  # fmt: skip
            yield

    async def echo(request: web.Request) -> web.Response:
        message = json_format.Parse(await request.read(), bench_pb2.Ping())
        reply = await state["echo"](message)
        return web.Response(text=json_format.MessageToJson(reply), content_type="application/json")

    app.cleanup_ctx.append(connect)
    app.router.add_post("/v1/bench/echo", echo)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client", help="the grpc.aio client alone; prints one JSON line")
    client.add_argument("--target", required=True)
    client.add_argument("--message", default="hello")
    client.add_argument("--connections", type=int, default=16, help="concurrent unary callers")
    client.add_argument("--duration", type=float, default=10.0)
    client.add_argument("--streams", type=int, help="make Stream calls instead, this many")
    client.add_argument("--messages", type=int, default=50_000, help="over all streams")
    hop = sub.add_parser("hop", help="serve the naive hop on 127.0.0.1:PORT")
    hop.add_argument("--target", required=True)
    hop.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "hop":
        listening = f"naive hop listening on {args.port}"
        web.run_app(hop_app(args.target), host="127.0.0.1", port=args.port, access_log=None,
                    print=lambda _: print(listening, flush=True),
                    loop=uvloop.new_event_loop())  # fmt: skip
        return 0
    if args.streams:
        run = stream_calls(args.target, args.streams, args.messages, args.message)
    else:
        run = unary_calls(args.target, args.connections, args.duration, args.message)
    print(json.dumps(uvloop.run(run)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
