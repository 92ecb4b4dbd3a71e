"""Discover an upstream's services through gRPC server reflection (grpc.reflection.v1alpha)."""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2

from bridge.registry.snapshot import ProtoSet

_INFO: Final = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# Infrastructure every server may offer; not part of the API the bridge exposes.
_SKIPPED: Final = ("grpc.reflection.", "grpc.health.")


class ReflectionError(Exception):
    """The upstream could not be asked, or answered with an error."""


async def discover(channel: grpc.aio.Channel, upstream: str, timeout: float = 5.0) -> ProtoSet:
    """The upstream's services and every file they need, as a weak proto set."""
    call = channel.stream_stream(
        _INFO,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(timeout=timeout)
    try:
        services = await _ask(call, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = [s.name for s in services.list_services_response.service
                 if not s.name.startswith(_SKIPPED)]  # fmt: skip
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        exposed: set[str] = set()
        for name in names:
            request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
            found = _files(await _ask(call, request))
            exposed.add(found[0].name)
            await _collect(call, found, files)
        await call.done_writing()
    except grpc.aio.AioRpcError as exc:
        raise ReflectionError(f"{exc.code().name}: {exc.details()}") from None
    except DecodeError as exc:
        raise ReflectionError(f"a file descriptor it sent cannot be read: {exc}") from None
    finally:
        call.cancel()
    return ProtoSet(
        f"reflection:{upstream}", _ordered(files), frozenset(exposed), upstream, weak=True
    )


async def _ask(call: grpc.aio.StreamStreamCall, request: reflection_pb2.ServerReflectionRequest):  # type: ignore[no-untyped-def]
    await call.write(request)
    response = await call.read()
    if response is grpc.aio.EOF:
        raise ReflectionError("the reflection stream ended early")
    if response.HasField("error_response"):
        raise ReflectionError(response.error_response.error_message)
    return response


def _files(
    response: reflection_pb2.ServerReflectionResponse,
) -> list[descriptor_pb2.FileDescriptorProto]:
    raw = response.file_descriptor_response.file_descriptor_proto
    return [descriptor_pb2.FileDescriptorProto.FromString(data) for data in raw]


async def _collect(
    call: grpc.aio.StreamStreamCall,
    found: list[descriptor_pb2.FileDescriptorProto],
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> None:
    """Add files and, asking by file name, every dependency the server did not send along."""
    pending = list(found)
    while pending:
        file = pending.pop()
        if file.name in files:
            continue
        files[file.name] = file
        for dependency in file.dependency:
            if dependency not in files:
                request = reflection_pb2.ServerReflectionRequest(file_by_filename=dependency)
                pending.extend(_files(await _ask(call, request)))


def _ordered(
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> descriptor_pb2.FileDescriptorSet:
    """The files with every dependency before its dependents, as a pool must receive them."""
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    done: set[str] = set()
    # A depth-first walk with its own stack: a server may send a dependency chain of any length.
    for root in sorted(files):
        stack = [(root, iter(files[root].dependency))] if root not in done else []
        done.add(root)
        while stack:
            name, dependencies = stack[-1]
            dependency = next(dependencies, None)
            if dependency is None:
                stack.pop()
                ordered.append(files[name])
            elif dependency in files and dependency not in done:
                done.add(dependency)
                stack.append((dependency, iter(files[dependency].dependency)))
    return descriptor_pb2.FileDescriptorSet(file=ordered)
