"""What every example service shares: health, binding, and running alone until a signal."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn, TypeAlias

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

STOP_GRACE_SECONDS: Final = 5.0
# How long a stopping service reports NOT_SERVING before it refuses calls: long enough for a
# gateway watching its health (grpc.health.v1 Watch) to take it out of the rotation first.
DRAIN_SECONDS: Final = 0.5

# Each server's health servicer, so that a stopping service can say it no longer serves.
_HEALTH: weakref.WeakKeyDictionary[grpc.aio.Server, health.aio.HealthServicer] = (
    weakref.WeakKeyDictionary()
)

StartFn = Callable[[int, str], Awaitable[tuple[grpc.aio.Server, int]]]


def new_server() -> grpc.aio.Server:
    """Return an unstarted grpc.aio server with the options every example service uses."""
    # gRPC enables SO_REUSEPORT by default, which lets a second copy of a service bind the
    # same port and silently share its traffic; a busy port should be an error instead.
    return grpc.aio.server(options=[("grpc.so_reuseport", 0)])


async def add_health(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Register grpc.health.v1 on server with every named service (and "") SERVING."""
    # The asyncio servicer: the sync one guards its state with threading locks and
    # blocking condition variables, which a Watch call would hold inside the event loop.
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    _HEALTH[server] = servicer
    for name in ("", *service_names, health.SERVICE_NAME):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def bind_and_start(server: grpc.aio.Server, host: str, port: int) -> int:
    """Bind server to host:port (0 picks a free port), start it, and return the port."""
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpc reports a failed bind as a RuntimeError
        raise OSError(f"cannot bind gRPC server to {host}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {host}:{port}")
    await server.start()
    return bound


def parse_args(name: str, default_port: int, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of ``python -m services.<name>``."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("--port", type=int, default=default_port, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    return parser.parse_args(argv)


async def serve_until_signal(name: str, start: StartFn, port: int, host: str) -> None:
    """Start a service, log where it listens, and stop it gracefully on SIGINT/SIGTERM."""
    server, bound = await start(port, host)
    print(f"{name}: listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"{name}: stopping", flush=True)
    servicer = _HEALTH.get(server)
    if servicer is not None:  # first out of the rotation of whoever watches our health
        await servicer.enter_graceful_shutdown()
        await asyncio.sleep(DRAIN_SECONDS)
    # In-flight calls get the grace period to finish; new ones are refused at once.
    await server.stop(STOP_GRACE_SECONDS)


def main(name: str, start: StartFn, default_port: int, argv: Sequence[str] | None = None) -> None:
    """Run one service alone; the entry point of its ``__main__`` module."""
    args = parse_args(name, default_port, argv)
    try:
        asyncio.run(serve_until_signal(name, start, args.port, args.host))
    except OSError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(1)


Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def now() -> timestamp_pb2.Timestamp:
    """The current time as a Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


async def invalid(context: Context, message: str) -> NoReturn:
    """Abort the call with INVALID_ARGUMENT."""
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("unreachable: abort raises")
