"""The WebSocket frames of SPEC section 4: parsing client frames, encoding bridge frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.errors import INVALID_ARGUMENT, BridgeError
from bridge.transcode import json_text
from bridge.transcode.response import dumps  # frames are compact UTF-8 JSON too

CallId = str | int


@dataclass(frozen=True)
class Frame:
    """One client frame about a call: a start (``method`` set) or a message, end or cancel."""

    id: CallId
    method: str | None = None
    message: Any = None
    has_message: bool = False
    metadata: Any = None
    timeout: Any = None
    end: bool = False
    cancel: bool = False


class FrameError(BridgeError):
    """A frame that cannot be tied to a call; answered with an ``error`` frame."""

    def __init__(self, message: str) -> None:
        super().__init__(INVALID_ARGUMENT, message)


def parse(text: str) -> Frame:
    """A client frame; FrameError when it is not JSON, not an object, or has no usable id."""
    try:
        data = json_text.loads(text)
    except json_text.JsonError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FrameError("frame must be a JSON object")
    call_id = data.get("id")
    if isinstance(call_id, bool) or not isinstance(call_id, str | int):
        raise FrameError('frame has no "id" (a string or an integer)')
    method = data.get("method")
    if method is not None and not isinstance(method, str):
        raise FrameError(f'call {call_id!r}: "method" must be a string like pkg.Service/Method')
    return Frame(
        id=call_id,
        method=method,
        message=data.get("message"),
        has_message="message" in data,
        metadata=data.get("metadata"),
        timeout=data.get("timeout"),
        end=data.get("end") is True,
        cancel=data.get("cancel") is True,
    )


def error(code: int, message: str) -> bytes:
    return dumps({"error": {"code": code, "message": message}})


def status(call_id: CallId, error: BridgeError | None, trailers: dict[str, str] | None) -> bytes:
    """The one ``status`` frame that ends a call (OK when ``error`` is None)."""
    body = {"code": 0, "message": "", "details": []} if error is None else error.to_status()
    frame: dict[str, Any] = {"id": call_id, "status": body}
    if trailers:
        frame["trailers"] = trailers
    return dumps(frame)
