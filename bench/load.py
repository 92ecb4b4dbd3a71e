"""The HTTP load tools, each its own process: h2load (direct gRPC over h2c) and wrk (REST).

Each runner returns a `LoadRun`: successful requests, the seconds they took, and p50/p99
latency. h2load's per-request log (``--log-file``) gives the latencies; wrk's ``--latency``
distribution gives them for wrk.
"""

from __future__ import annotations  # noqa: I001  (services before demo.*)

import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import services  # noqa: F401  (puts the generated code on sys.path, so before demo.*)
from bench.processes import BenchError
from demo.bench.v1 import bench_pb2

GRPC_HEADERS: Final = ("content-type: application/grpc", "te: trailers")
ECHO_PATH: Final = "/demo.bench.v1.BenchService/Echo"
STREAM_PATH: Final = "/demo.bench.v1.BenchService/Stream"
REST_ECHO_PATH: Final = "/v1/bench/echo"
TOOL_SLACK_SECONDS: Final = 120  # how much longer than asked a tool may run before it is killed
_UNITS: Final[dict[str, float]] = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0,
                                   "h": 3_600_000.0}  # fmt: skip


@dataclass
class LoadRun:
    """What one load-tool run measured."""

    tool: str
    connections: int
    requests: int  # successful ones
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def need_tools() -> None:
    """Raise BenchError unless wrk and h2load are on PATH."""
    missing = [t for t in ("wrk", "h2load") if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: run `make bench-tools` "
                         "(apt-get install wrk nghttp2-client)")  # fmt: skip


def tool_versions() -> str:
    """One line naming the load tools' versions."""
    out = []
    for cmd in (["wrk", "--version"], ["h2load", "--version"]):
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        out.append((run.stdout or run.stderr).splitlines()[0].split(" Copyright")[0].strip())
    return ", ".join(out)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def grpc_frame(message: str, count: int = 0) -> bytes:
    """A Ping as a gRPC length-prefixed message (uncompressed), as it goes on the wire."""
    body = bench_pb2.Ping(message=message, count=count).SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _run(cmd: list[str], timeout: float) -> str:
    """Run a load tool to the end; its stdout, or BenchError with what it said."""
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{cmd[0]} ran over {timeout:.0f}s: {' '.join(cmd)}") from None
    if run.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({run.returncode}): "
                         f"{(run.stderr or run.stdout).strip()[-500:]}")  # fmt: skip
    return run.stdout


# --- h2load -----------------------------------------------------------------------------


def h2load(
    url: str,
    body: Path,
    connections: int,
    workdir: Path,
    *,
    duration: int = 0,
    requests: int = 0,
    response_bytes: int = 0,
) -> LoadRun:
    """POST body (a gRPC frame) over h2c, 1 stream per connection, for duration s or N calls.

    h2load cannot see grpc-status, so a run whose DATA bytes fall short of ``response_bytes``
    per call (the gRPC reply size expected) counts every call as an error.
    """
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to an existing log
    cmd = ["h2load", "-c", str(connections), "-m", "1", "-t", "1", "-d", str(body),
           "--log-file", str(log)]  # fmt: skip
    for header in GRPC_HEADERS:
        cmd += ["-H", header]
    cmd += ["-D", str(duration)] if duration else ["-n", str(requests)]
    out = _run([*cmd, url], timeout=duration + TOOL_SLACK_SECONDS)
    return parse_h2load(out, log.read_text(), connections, duration, response_bytes)


def parse_h2load(
    out: str, log: str, connections: int, duration: int = 0, response_bytes: int = 0
) -> LoadRun:
    """h2load's summary plus its per-request log (start µs, status, duration µs) -> LoadRun."""
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)  # fmt: skip
    data = re.search(r"traffic: .*\((\d+)\) data", out)
    if not counts or not data:
        raise BenchError(f"cannot read h2load's output:\n{out[-800:]}")
    done, succeeded = int(counts.group(3)), int(counts.group(4))
    rows = [line.split("\t") for line in log.splitlines() if line.strip()]
    ok = [r for r in rows if len(r) == 3 and r[1].startswith("2")]
    starts = [int(r[0]) for r in ok]
    ends = [int(r[0]) + int(r[2]) for r in ok]
    latencies = [int(r[2]) / 1000 for r in ok]
    seconds = _h2load_seconds(out, duration, starts, ends)
    run = LoadRun(
        "h2load",
        connections,
        succeeded,
        seconds,
        percentile(latencies, 50),
        percentile(latencies, 99),
        done - succeeded,
    )
    if response_bytes and int(data.group(1)) < succeeded * response_bytes:
        run.notes.append(f"only {data.group(1)} bytes of gRPC replies for {succeeded} calls")
        run.errors, run.requests = run.errors + succeeded, 0
    return run


def _h2load_seconds(out: str, duration: int, starts: list[int], ends: list[int]) -> float:
    """A timed run lasted ``duration``; a counted one, its log's first start to last end."""
    if duration:
        return float(duration)
    if starts:
        return (max(ends) - min(starts)) / 1e6
    finished = re.search(r"finished in ([\d.]+)(us|ms|s|m|h),", out)
    return _ms(finished.group(1), finished.group(2)) / 1000 if finished else 0.0


# --- wrk --------------------------------------------------------------------------------


def wrk_script(
    workdir: Path, name: str, body: dict[str, object] | None,
    headers: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """A wrk Lua script that POSTs body as JSON (or GETs, for None), with headers added."""
    if body is None:
        lines = ['wrk.method = "GET"']
    else:
        lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    for key, value in (headers or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9-]+", key):
            raise ValueError(f"not a header name for a wrk script: {key!r}")
        lines.append(f'wrk.headers["{key}"] = {_long_string(value)}')
    if body is not None:
        lines.append(f"wrk.body = {_long_string(json.dumps(body, separators=(',', ':')))}")
    path = workdir / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def _long_string(text: str) -> str:
    """text as a Lua long string, which takes it byte for byte."""
    if "]==]" in text:
        raise ValueError("a wrk script's strings cannot contain ]==]")
    return f"[==[{text}]==]"


def wrk(url: str, script: Path, connections: int, duration: int) -> LoadRun:
    """Drive url with wrk (HTTP/1.1 keep-alive, one thread) for duration seconds."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
           "--latency", "-s", str(script), url]  # fmt: skip
    return parse_wrk(_run(cmd, timeout=duration + TOOL_SLACK_SECONDS), connections)


def _ms(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def parse_wrk(out: str, connections: int) -> LoadRun:
    """wrk's ``--latency`` report -> LoadRun (non-2xx/3xx answers are errors, not requests)."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", out)
    if not total:
        raise BenchError(f"cannot read wrk's output:\n{out[-800:]}")
    pcts = {p: _ms(n, u) for p, n, u in
            re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)}  # fmt: skip
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(bad.group(1)) if bad else 0
    run = LoadRun("wrk", connections, int(total.group(1)) - non2xx,
                  _ms(total.group(2), total.group(3)) / 1000, pcts.get("50"), pcts.get("99"),
                  non2xx)  # fmt: skip
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        run.errors += sum(int(n) for n in sock.groups())
        run.notes.append(sock.group(0))
    return run
