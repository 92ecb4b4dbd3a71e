"""gRPC response messages and statuses -> JSON, NDJSON lines and Server-Sent Events."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # noqa: F401  (registers the detail types)

from bridge.errors import BridgeError

STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"


@dataclass(frozen=True, eq=False)
class ResponsePlan:
    """How one route renders its response message as JSON; built once per route."""

    pool: DescriptorPool
    emit_unpopulated: bool = True
    use_proto_names: bool = False
    field: FieldDescriptor | None = None  # the rule's response_body field, if any

    def to_dict(self, message: Message) -> Any:
        """The proto3 JSON value of the message (or of its response_body field)."""
        if self.field is not None:
            return self._field_value(message, self.field)
        return self._message_dict(message)

    def to_json(self, message: Message) -> bytes:
        return dumps(self.to_dict(message))

    def _message_dict(self, message: Message, emit: bool | None = None) -> Any:
        return json_format.MessageToDict(
            message,
            always_print_fields_with_no_presence=self.emit_unpopulated if emit is None else emit,
            preserving_proto_field_name=self.use_proto_names,
            descriptor_pool=self.pool,
        )

    def _field_value(self, message: Message, field: FieldDescriptor) -> Any:
        if field.message_type is not None and not field.is_repeated:
            return self._message_dict(getattr(message, field.name))
        data = self._message_dict(message, emit=True)
        return data[field.name if self.use_proto_names else field.json_name]


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of what json_format made (str keys, no NaN: it writes "NaN")."""
    return orjson.dumps(value)


def ndjson_line(key: str, value: Any) -> bytes:
    """One NDJSON line: ``{"result": ...}`` or ``{"error": ...}``."""
    return dumps({key: value}) + b"\n"


def sse_event(value: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event carrying a JSON value."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + dumps(value) + b"\n\n"


def status_details(raw: bytes | None, pool: DescriptorPool | None) -> list[dict[str, Any]]:
    """The details of a ``grpc-status-details-bin`` trailer, each as Any JSON with ``@type``."""
    if not raw:
        return []
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return []
    return [any_to_json(detail, pool) for detail in status.details]


def any_to_json(detail: any_pb2.Any, pool: DescriptorPool | None) -> dict[str, Any]:
    """An Any as JSON, resolved in the snapshot's pool, then the bundled types; else opaque."""
    for candidate in (pool, None):
        try:
            return json_format.MessageToDict(detail, descriptor_pool=candidate)
        except (TypeError, KeyError, json_format.Error):
            continue
    return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


def error_from_status(
    code: int,
    message: str,
    trailers: Sequence[tuple[str, str | bytes]] | None,
    pool: DescriptorPool | None,
) -> BridgeError:
    """A BridgeError for a backend status, with its google.rpc.Status details decoded."""
    raw = None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            raw = value
    return BridgeError(code, message, status_details(raw, pool))
