"""The EchoService gRPC server, for tests (in-process, port 0) and ``python -m services.echo``."""

from __future__ import annotations

from typing import Final

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from services.echo.servicer import EchoServicer
from services.serving import add_health, bind_and_start, new_server

from demo.echo.v1 import echo_pb2, echo_pb2_grpc

DEFAULT_PORT: Final = 50052
SERVICE_NAME: Final = echo_pb2.DESCRIPTOR.services_by_name["EchoService"].full_name


async def start(port: int = 0, host: str = "127.0.0.1") -> tuple[grpc.aio.Server, int]:
    """Start an EchoService server with zeroed stats and reflection; return it and its port."""
    server = new_server()
    echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), server)
    await add_health(server, [SERVICE_NAME])
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return server, await bind_and_start(server, host, port)
