"""The WebSocket frames of SPEC section 4: parsing client frames, encoding bridge frames."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

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
    problem: str | None = None  # why the call cannot take this frame; the call's status says it


class FrameError(BridgeError):
    """A frame that cannot be tied to a call; answered with an ``error`` frame."""

    def __init__(self, message: str) -> None:
        super().__init__(INVALID_ARGUMENT, message)


def parse(text: str) -> Frame:
    """A client frame; FrameError when it is not JSON, not an object, or has no usable id.

    A name repeated inside one of the frame's values (its ``message``, say) is the call's
    problem, not the frame's: the frame still names its call, which ends INVALID_ARGUMENT.
    """
    problem = None
    try:
        data = json_text.loads(text)
    except json_text.JsonError as exc:
        data = _repeat_inside(text)
        if data is None:
            raise FrameError(f"frame is not JSON: {exc}") from None
        problem = f"frame is not valid JSON: {exc}"
    if not isinstance(data, dict):
        raise FrameError("frame must be a JSON object")
    call_id = data.get("id")
    if isinstance(call_id, bool) or not isinstance(call_id, str | int):
        # orjson reads an integer past 64 bits as a float, so say where integers end.
        raise FrameError('frame has no "id" (a string, or an integer of at most 64 bits)')
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
        problem=problem,
    )


def _repeat_inside(text: str) -> dict[str, Any] | None:
    """The frame json_text refused when its own names are unique (a value repeats one)."""
    try:
        data = orjson.loads(text)  # malformed JSON fails here too; repeated names do not
        # Nested objects become lists of pairs as well; only the outermost one's names count.
        members = json.loads(text, object_pairs_hook=lambda pairs: pairs)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or len(data) != len(members):
        return None
    return data


def error(code: int, message: str) -> bytes:
    return dumps({"error": {"code": code, "message": message}})


def status(call_id: CallId, error: BridgeError | None, trailers: dict[str, str] | None) -> bytes:
    """The one ``status`` frame that ends a call (OK when ``error`` is None)."""
    body = {"code": 0, "message": "", "details": []} if error is None else error.to_status()
    frame: dict[str, Any] = {"id": call_id, "status": body}
    if trailers:
        frame["trailers"] = trailers
    return dumps(frame)
