"""Helpers for run-time registration tests: a team's own gRPC service and admin API calls.

A team's service is built in the test from .proto sources written in the test: the sources are
compiled with the bridge's own compiler, and a grpc.aio server answers their methods through a
generic handler. What the server serves (and offers through server reflection) can be swapped
while it runs, the way a team deploys a new version behind a stable address.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_reflection.v1alpha.reflection import aio as reflection_aio

from bridge.registry.compiler import compile_protos
from tests.conftest import Bridge

TOKEN: Final = "admin-s3cret"
AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}

# A unary handler: the request message in, the response as a JSON-shaped dict out.
Handler = Callable[[Message, grpc.aio.ServicerContext], Awaitable[dict[str, Any]]]


async def compile_files(files: Mapping[str, str], root: Path) -> descriptor_pb2.FileDescriptorSet:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return await compile_protos(sorted(files), [root])


class _Dispatch(grpc.GenericRpcHandler):
    """Looks methods up in the server's current deployment, call by call."""

    def __init__(self, team: TeamServer) -> None:
        self.team = team

    def service(self, handler_call_details):  # type: ignore[no-untyped-def]
        return self.team.methods.get(handler_call_details.method)


class _Reflection(reflection_pb2_grpc.ServerReflectionServicer):
    """Server reflection of whatever the team server currently deploys."""

    def __init__(self, team: TeamServer) -> None:
        self.team = team

    async def ServerReflectionInfo(self, request_iterator, context):  # type: ignore[no-untyped-def]
        servicer = reflection_aio.ReflectionServicer(self.team.services, pool=self.team.pool)
        async for response in servicer.ServerReflectionInfo(request_iterator, context):
            yield response


class TeamServer:
    """A team's grpc.aio server on 127.0.0.1, serving protos compiled in the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([_Dispatch(self)])
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(_Reflection(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.methods: dict[str, grpc.RpcMethodHandler] = {}
        self.services: tuple[str, ...] = ()
        self.pool = descriptor_pool.DescriptorPool()
        self._deployments = 0

    async def start(self) -> TeamServer:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(None)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def deploy(self, files: Mapping[str, str], handlers: Mapping[str, Handler]) -> None:
        """Serve ``handlers`` ("pkg.Service/Method" -> handler) for the services in ``files``."""
        self._deployments += 1
        compiled = await compile_files(files, self.root / f"v{self._deployments}")
        pool = descriptor_pool.DescriptorPool()
        for file in compiled.file:
            pool.AddSerializedFile(file.SerializeToString())
        self.methods = {f"/{name}": _unary(pool, name, fn) for name, fn in handlers.items()}
        self.services = tuple(sorted({name.split("/")[0] for name in handlers}))
        self.pool = pool


def _unary(pool: descriptor_pool.DescriptorPool, name: str, fn: Handler) -> grpc.RpcMethodHandler:
    method = pool.FindMethodByName(name.replace("/", "."))
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)

    async def call(message: Message, context: grpc.aio.ServicerContext) -> Message:
        return json_format.ParseDict(await fn(message, context), response())

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=request.FromString,
        response_serializer=lambda m: m.SerializeToString(),
    )


def admin_config(store: Path | None = None, **extra: Any) -> dict[str, Any]:
    """A bridge with the admin API on and no preloaded protos."""
    config: dict[str, Any] = {"admin": {"token": TOKEN}, "protos": {"include": []}}
    if store is not None:
        config["protos"]["store"] = str(store)
    config.update(extra)
    return config


async def admin(
    bridge: Bridge, verb: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    """Call the admin API with the token; return (status, JSON body)."""
    kwargs.setdefault("headers", AUTH)
    if body is not None:
        kwargs["json"] = body
    status, reply, _ = await bridge.json(verb, path, **kwargs)
    return status, reply


async def register(
    bridge: Bridge,
    name: str,
    files: Mapping[str, str],
    target: str | None = None,
    upstream: str | None = None,
) -> tuple[int, Any]:
    body: dict[str, Any] = {"name": name, "files": dict(files)}
    if upstream:
        body["upstream"] = upstream
    else:
        body["targets"] = [target]
    return await admin(bridge, "POST", "/admin/protos", body)


PING_FILE: Final = "acme/ping/v1/ping.proto"
PING: Final = """\
syntax = "proto3";
package acme.ping.v1;
import "google/api/annotations.proto";
message PingRequest { string id = 1; }
message PingReply { string id = 1; }
service Ping {
  rpc Get(PingRequest) returns (PingReply) {
    option (google.api.http) = { get: "/ping/{id}" };
  }
}
"""


async def ping(request: Message, context: grpc.aio.ServicerContext) -> dict[str, Any]:
    return {"id": request.id}  # type: ignore[attr-defined]


async def registry_state(bridge: Bridge, store: Path | None = None) -> tuple[Any, ...]:
    """What the registry serves and keeps: the listing, the route table, the stored files."""
    listing = await admin(bridge, "GET", "/admin/protos")
    routes = await admin(bridge, "GET", "/admin/routes")
    stored = None
    if store is not None and store.is_dir():
        stored = sorted((p.name, p.read_bytes()) for p in store.iterdir())
    return listing, routes, stored
