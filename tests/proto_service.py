"""A backend for the test-only protos in tests/protos, and a bridge in front of it.

The protos are compiled once per session with the bridge's own compiler; a grpc.aio server
answers their methods through a generic handler with functions the test module defines (unary
ones return a message, server-streaming ones are async generators), so a test can check exactly
what the backend received. The bridge compiles the same folder from its ``protos.include``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from bridge.registry import ProtoSet, load_includes
from tests.conftest import Bridge, StartBridge

TEST_PROTOS: Final = Path(__file__).resolve().parent / "protos"
PACKAGE: Final = "fidelity.v1"

Handler = Callable[[Message, grpc.aio.ServicerContext], Any]


@pytest.fixture(scope="session")
def fidelity_pool() -> descriptor_pool.DescriptorPool:
    """The pool of tests/protos, compiled once for the session."""
    compiled: ProtoSet = asyncio.run(load_includes((TEST_PROTOS,)))
    pool = descriptor_pool.DescriptorPool()
    for file in compiled.files.file:
        pool.AddSerializedFile(file.SerializeToString())
    return pool


def message_class(pool: descriptor_pool.DescriptorPool, name: str) -> type[Message]:
    """The class of a message in ``fidelity.v1`` (or of a fully qualified name)."""
    full = name if "." in name else f"{PACKAGE}.{name}"
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full))


class _Methods(grpc.GenericRpcHandler):
    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = handlers

    def service(self, handler_call_details):  # type: ignore[no-untyped-def]
        return self.handlers.get(handler_call_details.method)


async def serve(
    pool: descriptor_pool.DescriptorPool, handlers: Mapping[str, Handler]
) -> tuple[grpc.aio.Server, int]:
    """Start a server for ``handlers`` ("Service/Method" in fidelity.v1 -> function)."""
    methods = {}
    for name, fn in handlers.items():
        method = pool.FindMethodByName(f"{PACKAGE}.{name.replace('/', '.')}")
        request = message_factory.GetMessageClass(method.input_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        methods[f"/{PACKAGE}.{name}"] = make(
            fn,
            request_deserializer=request.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_Methods(methods)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def bridge_config(port: int, **extra: Any) -> dict[str, Any]:
    """A bridge that serves tests/protos from the backend on ``port``."""
    return {
        "protos": {"include": [str(TEST_PROTOS)]},
        "upstreams": {"own": {"targets": [f"127.0.0.1:{port}"], "timeout": "5s"}},
        "services": {f"{PACKAGE}.*": "own"},
        **extra,
    }


async def bridge_for(
    start_bridge: StartBridge,
    pool: descriptor_pool.DescriptorPool,
    handlers: Mapping[str, Handler],
    **extra: Any,
) -> AsyncIterator[Bridge]:
    """A fixture body: the backend for ``handlers`` and a bridge in front of it."""
    server, port = await serve(pool, handlers)
    try:
        yield await start_bridge(bridge_config(port, **extra), preload=False)
    finally:
        await server.stop(None)
