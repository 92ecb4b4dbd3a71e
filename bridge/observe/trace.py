"""W3C Trace Context (https://www.w3.org/TR/trace-context/): every backend call carries a trace.

A client's valid ``traceparent`` (and its ``tracestate``) is forwarded unchanged: the bridge
records no spans of its own (there is no exporter), and a parent id the bridge invented but never
reported would leave the backend's span hanging from a span no collector ever sees. When the
client sent none, or one the spec says to ignore (malformed, version ``ff``, an all-zero id), the
bridge starts a trace: a new trace id and parent id, sampled (``00-<32 hex>-<16 hex>-01``), and
drops any ``tracestate`` (it belonged to no valid trace). Aggregate children share their
parent request's metadata, so they share its trace.
"""

from __future__ import annotations

import random
import re
from typing import Final

from bridge.upstream.metadata import Metadata

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

# version-traceid-parentid-flags; a later version may append "-..." fields after the four.
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE: Final = "0" * 32
_ZERO_PARENT: Final = "0" * 16


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a traceparent the spec says to honour (section 3.2)."""
    m = _TRACEPARENT.match(value)
    if m is None:
        return False
    version, trace_id, parent_id = m[1], m[2], m[3]
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return False
    if version == "00":
        return len(value) == 55  # version 00 has exactly four fields
    return len(value) == 55 or value[55] == "-"  # a later version: more fields, dash-separated


def new_traceparent() -> str:
    """A new sampled trace: random trace id and parent id (never all zeros).

    Pseudo-random is what the spec asks for (section 3.2.2.3), a syscall per request is not;
    `random` reseeds in a forked worker, so workers never share ids.
    """
    trace_id = f"{random.getrandbits(128):032x}"
    parent_id = f"{random.getrandbits(64):016x}"
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:  # 2**-64 odds, but the spec forbids
        return new_traceparent()
    return f"00-{trace_id}-{parent_id}-01"


def traced(metadata: Metadata) -> Metadata:
    """``metadata`` with exactly one valid ``traceparent``: the last the client gave, if valid,
    else a new trace (its ``tracestate`` dropped with the invalid one)."""
    given = [v for k, v in metadata if k == TRACEPARENT]
    if len(given) == 1 and isinstance(given[0], str) and valid_traceparent(given[0]):
        return metadata  # the common traced case costs one scan, no copy
    last = given[-1] if given else None
    keep = isinstance(last, str) and valid_traceparent(last)
    out = [(k, v) for k, v in metadata if k != TRACEPARENT and (keep or k != TRACESTATE)]
    out.append((TRACEPARENT, last if keep and isinstance(last, str) else new_traceparent()))
    return out
