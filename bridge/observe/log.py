"""The access log (one JSON line per call, logger ``bridge.access``) and the audit log (one JSON
line per admin change, logger ``bridge.audit``), both through `logging`.

A line holds no secret by construction: the route is the matched template (never the raw URL,
which may carry ``?access_token=``), the subject is the verified principal's, and the admin is
named "admin" with its peer address (the admin token is its only identity).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from bridge.errors import NAME_BY_CODE

ACCESS: Final = logging.getLogger("bridge.access")
AUDIT: Final = logging.getLogger("bridge.audit")


def access(
    *,
    request_id: str,
    subject: str | None,
    transport: str,
    method: str | None,
    route: str | None,
    http_status: int | None,
    grpc_code: int | None,
    started: float,
    bytes_in: int,
    bytes_out: int,
) -> None:
    """Log one call; ``started`` is its `time.perf_counter` at the start."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return  # a disabled log costs one check, not a line
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    _emit(
        ACCESS,
        _line(
            {
                "time": _now(),
                "request_id": request_id,
                "subject": subject,
                "transport": transport,
                "method": method,
                "route": route,
                "http_status": http_status,
                "grpc_code": None if grpc_code is None else NAME_BY_CODE.get(grpc_code, grpc_code),
                "duration_ms": duration_ms,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
            }
        ),
    )


def audit(action: str, registration: str, peer: str | None, **what: Any) -> None:
    """Log one admin change (``register``, ``remove``, ``refresh``) by the admin at ``peer``."""
    fields = {"time": _now(), "who": "admin", "peer": peer, "action": action,
              "registration": registration, **what}  # fmt: skip
    _emit(AUDIT, _line(fields))


def to_stderr() -> None:
    """Send both logs to stderr as bare JSON lines (``bridge serve``), unless already handled.

    They do not propagate to the root logger, whose format would prefix each line with a time
    and a level and make it no longer JSON.
    """
    for logger in (ACCESS, AUDIT):
        if logger.handlers:
            continue
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _emit(logger: logging.Logger, line: str) -> None:
    """``logger.info(line)`` without `logging`'s search for the caller's file and line, a
    third of a line's cost and meaningless here (the line says where it comes from)."""
    if logger.isEnabledFor(logging.INFO):
        logger.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, line, (), None))


_second: tuple[int, str] = (0, "")  # the last second formatted: most lines share it


def _now() -> str:
    """The time in UTC to the millisecond, ``2026-12-02T02:23:15.046Z``."""
    global _second
    now = time.time()
    second = int(now)
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


def _line(fields: dict[str, Any]) -> str:
    return orjson.dumps(fields).decode()
