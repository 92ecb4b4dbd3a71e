"""BenchService: echoes as cheaply as grpc.aio allows, so benchmarks measure the bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import grpc

import services  # noqa: F401  (puts the generated code on sys.path)
from services.serving import add_health, bind_and_start

from demo.bench.v1 import bench_pb2, bench_pb2_grpc

DEFAULT_PORT: Final = 50053
SERVICE_NAME: Final = bench_pb2.DESCRIPTOR.services_by_name["BenchService"].full_name


class BenchServicer(bench_pb2_grpc.BenchServiceServicer):
    """Echo and Stream with no work beyond what gRPC itself does."""

    async def Echo(
        self, request: bench_pb2.Ping, context: grpc.aio.ServicerContext
    ) -> bench_pb2.Ping:
        return request

    async def Stream(
        self, request: bench_pb2.Ping, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bench_pb2.Ping]:
        for _ in range(request.count):
            yield request


async def start(port: int = 0, host: str = "127.0.0.1") -> tuple[grpc.aio.Server, int]:
    """Start a BenchService server; return it and its bound port."""
    server = grpc.aio.server()
    bench_pb2_grpc.add_BenchServiceServicer_to_server(BenchServicer(), server)
    await add_health(server, [SERVICE_NAME])
    return server, await bind_and_start(server, host, port)
