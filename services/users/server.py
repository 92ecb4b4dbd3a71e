"""The UserService gRPC server, for tests (in-process, port 0) and ``python -m services.users``."""

from __future__ import annotations

from typing import Final

import grpc

from services.serving import add_health, bind_and_start, new_server
from services.users.servicer import UserServicer

from demo.users.v1 import users_pb2, users_pb2_grpc

DEFAULT_PORT: Final = 50051
SERVICE_NAME: Final = users_pb2.DESCRIPTOR.services_by_name["UserService"].full_name


async def start(port: int = 0, host: str = "127.0.0.1") -> tuple[grpc.aio.Server, int]:
    """Start a UserService server with a freshly seeded store; return it and its port."""
    server = new_server()
    users_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(), server)
    await add_health(server, [SERVICE_NAME])
    return server, await bind_and_start(server, host, port)
