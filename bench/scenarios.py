"""The scenarios of SPEC section 9, each measured side by side with its direct gRPC baseline.

Every scenario becomes one result object with the SPEC keys (``scenario``, ``rps``, ``p50_ms``,
``p99_ms``, ``cpu_us_per_req``, ``ratio_to_direct``) and extra keys. CPU per request is the
bridge's utime+stime over the run divided by the requests (messages, connections) served, the
number that does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from bench import load, ws
from bench.load import LoadRun
from bench.processes import (
    ROOT,
    BenchError,
    Service,
    cpu_seconds,
    open_files_limit,
    rss_mib,
    start_naive_hop,
)

T = TypeVar("T")
Result = dict[str, Any]
SMALL: Final = "hello"
LARGE: Final = "x" * 16384  # 16 KiB of ASCII text: 16,384 bytes in proto and in JSON alike
CONCURRENCY: Final = 16
DIRECT: Final = "direct"  # the keys of a unary pair's runs, beside its rivals' tags
PLAIN: Final = "plain"
WS_HANDSHAKES_AT_ONCE: Final = 200


@dataclass
class Plan:
    """How long and how much each scenario runs."""

    duration: int  # seconds per load-tool run
    stream_messages: int  # per streaming scenario, over all sockets
    idle_sockets: int
    hold_seconds: float
    rounds: int = 1  # alternated direct/bridge runs per unary pair
    warmup: int = 1
    workers: int = 1  # bridge processes, for the bridges a scenario starts itself
    metrics_calls: int = 50_000  # calls per repeat of the metrics step's measure


@dataclass
class Usage:
    """CPU seconds spent during one measured run."""

    bridge: float
    backend: float
    loadgen: float  # the load tool, or the bench's own WebSocket client


Rounds = list[tuple[LoadRun, Usage]]  # one load's measured runs, one per round


class Meter:
    """Reads the CPU time of the bridge, the backend and the load generator around a run."""

    def __init__(self, bridge: Service, backend: Service) -> None:
        self.bridge, self.backend = bridge, backend
        self._at: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float]:
        mine = resource.getrusage(resource.RUSAGE_SELF)
        tools = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished load tools only
        client = mine.ru_utime + mine.ru_stime + tools.ru_utime + tools.ru_stime
        return cpu_seconds(self.bridge.pid), cpu_seconds(self.backend.pid), client

    def start(self) -> None:
        self._at = self._now()

    def stop(self) -> Usage:
        now = self._now()
        return Usage(*(b - a for a, b in zip(self._at, now, strict=True)))

    def around(self, run: Callable[[], T]) -> tuple[T, Usage]:
        """Run and return its result with the CPU it cost each process."""
        self.start()
        result = run()
        return result, self.stop()


@dataclass(frozen=True)
class Rival:
    """Another way to the backend that a unary pair measures in its rounds, beside the bridge.

    Envoy's transcoder, or a second bridge with policies on: wrk drives it like the bridge and
    ``meter`` reads the CPU of the process behind ``url``.
    """

    tag: str  # the row is rest_unary_<tag>_c<N>
    url: str
    script: Path  # wrk's script: the bridge's body, plus any credentials
    meter: Meter
    measured: str  # whose CPU the row's cpu_us_per_req is
    note: str  # the first note on its row
    against_plain: bool = False  # also a ratio_to_plain (and cost_pct) against the bridge
    yardstick: bool = False  # the other REST rows get ratio_to_<tag>: their rate over its
    facts: dict[str, Any] = field(default_factory=dict)  # more keys for the row
    # Adds the rival's own reading of its row against the plain bridge's row of the rounds.
    priced: Callable[[Result, Result], None] | None = None


def _per(seconds: float, count: int) -> float | None:
    """Microseconds of CPU per item, one decimal."""
    return round(seconds * 1e6 / count, 1) if count > 0 else None


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Scenarios:
    """The scenario runs against one bridge and one backend, in a scratch folder."""

    def __init__(self, bridge: Service, backend: Service, workdir: Path, plan: Plan) -> None:
        self.bridge, self.backend, self.workdir, self.plan = bridge, backend, workdir, plan
        self.meter = Meter(bridge, backend)
        self.bridge_url = f"http://127.0.0.1:{bridge.port}"
        self.backend_url = f"http://127.0.0.1:{backend.port}"
        self.scripts = {
            "small": load.wrk_script(workdir, "small", {"message": SMALL}),
            "16k": load.wrk_script(workdir, "16k", {"message": LARGE}),
        }
        self.baselines: dict[str, Result] = {}  # the direct runs so far, by name

    # --- unary --------------------------------------------------------------------------

    def _grpc_body(self, name: str, message: str, count: int = 0) -> tuple[Path, int]:
        frame = load.grpc_frame(message, count)
        path = self.workdir / f"{name}.grpc"
        path.write_bytes(frame)
        return path, len(frame)

    def direct_unary(self, message: str, connections: int, duration: int) -> LoadRun:
        body, size = self._grpc_body("unary", message)
        url = self.backend_url + load.ECHO_PATH
        return load.h2load(url, body, connections, self.workdir, duration=duration,
                           response_bytes=size)  # fmt: skip

    def rest_unary(self, size: str, connections: int, duration: int) -> LoadRun:
        return load.wrk(self.bridge_url + load.REST_ECHO_PATH, self.scripts[size], connections,
                        duration)  # fmt: skip

    def warm_up(self) -> None:
        """Short unmeasured runs: connections, channels and caches settle before measuring."""
        w = self.plan.warmup
        self.direct_unary(SMALL, CONCURRENCY, w)
        self.rest_unary("small", CONCURRENCY, w)
        self.rest_unary("16k", CONCURRENCY, w)

    def unary_pair(self, size: str, connections: int, rivals: Sequence[Rival] = ()) -> list[Result]:
        """Direct gRPC runs alternated with the same load as REST through the bridge.

        The machine's speed drifts between runs (the direct rate alone varies by a third on
        a shared 2-CPU machine), so the pair runs ``plan.rounds`` times and the ratio is the
        median of the rounds' ratios; rates and CPU are totals over all rounds. Rivals (Envoy,
        the bridge with policies) take their turn in each round after the plain bridge, so
        all of them are read against the same direct runs; a rival whose run fails gets an
        error row and sits out the remaining rounds.
        """
        message = SMALL if size == "small" else LARGE
        tag = "" if size == "small" else "_16k"
        runs, failed = self._alternate(size, connections, rivals)
        base_name = f"direct_grpc_unary{tag}_c{connections}"
        base = _load_result(base_name, *_combined(runs[DIRECT]), bridge=False, ratio=1.0)
        self.baselines[base_name] = base
        out = _against(f"rest_unary{tag}_c{connections}", runs[PLAIN], runs[DIRECT], base)
        rows, measured = [base, out], {PLAIN: out}
        for rival in rivals:
            name = f"rest_unary_{rival.tag}{tag}_c{connections}"
            if rival.tag in failed:
                rows.append(not_measured(name, error=failed[rival.tag]))
                continue
            row = measured[rival.tag] = _against(name, runs[rival.tag], runs[DIRECT], base)
            row.update(rival.facts, measured=rival.measured)
            row["notes"].insert(0, rival.note)
            if rival.against_plain:
                _add_cost(row, runs[rival.tag], runs[PLAIN], out)
            if rival.priced:
                rival.priced(row, out)
            rows.append(row)
        for rival in (r for r in rivals if r.yardstick and r.tag in measured):
            for key, row in measured.items():
                if key != rival.tag:
                    row[f"ratio_to_{rival.tag}"] = _r(_median_ratio(runs[key], runs[rival.tag])[0])
        for row in rows:
            row.setdefault("message", _describe(message))
        return rows

    def _alternate(
        self, size: str, connections: int, rivals: Sequence[Rival]
    ) -> tuple[dict[str, Rounds], dict[str, str]]:
        """``plan.rounds`` rounds of: direct, the plain bridge, each rival that has not failed.

        The runs of each by its key (DIRECT, PLAIN, a rival's tag), and why rivals failed.
        """
        message, d = (SMALL if size == "small" else LARGE), self.plan.duration
        runs: dict[str, Rounds] = {DIRECT: [], PLAIN: [], **{r.tag: [] for r in rivals}}
        failed: dict[str, str] = {}
        for _ in range(self.plan.rounds):
            runs[DIRECT].append(
                self.meter.around(lambda: self.direct_unary(message, connections, d))
            )
            runs[PLAIN].append(self.meter.around(lambda: self.rest_unary(size, connections, d)))
            for rival in (r for r in rivals if r.tag not in failed):
                try:
                    runs[rival.tag].append(rival.meter.around(
                        lambda rival=rival: load.wrk(rival.url, rival.script, connections, d)  # type: ignore[misc]
                    ))  # fmt: skip
                except BenchError as exc:
                    failed[rival.tag] = str(exc)
        return runs, failed

    # --- WebSocket server streaming -----------------------------------------------------

    def direct_stream(self, sockets: int) -> Result:
        """h2load makes ``sockets`` Stream calls at once, one per HTTP/2 connection."""
        per = self.plan.stream_messages // sockets
        body, size = self._grpc_body(f"stream{sockets}", SMALL, per)
        url = self.backend_url + load.STREAM_PATH
        run, usage = self.meter.around(
            lambda: load.h2load(
                url, body, sockets, self.workdir, requests=sockets, response_bytes=per * size
            )
        )
        messages = run.requests * per
        result = _rate_result(f"direct_grpc_stream_{sockets}", messages, run.seconds, usage,
                              bridge=False, ratio=1.0)  # fmt: skip
        result.update(connections=sockets, errors=run.errors, tool="h2load", notes=run.notes)
        self.baselines[result["scenario"]] = result
        return result

    async def ws_stream(self, sockets: int, baseline: Result) -> Result:
        """The same Stream calls over ``sockets`` WebSockets through the bridge."""
        per = self.plan.stream_messages // sockets
        async with ws.client_session() as session:
            conns = await asyncio.gather(
                *(ws.connect(session, self.bridge_url + "/ws") for _ in range(sockets))
            )
            try:
                self.meter.start()
                run = await ws.stream(conns, per, SMALL)
                usage = self.meter.stop()
            finally:
                await asyncio.gather(*(c.close() for c in conns))
        name = "ws_stream_1_socket" if sockets == 1 else f"ws_stream_{sockets}_sockets"
        base_rate = baseline.get("messages_per_s") or 0
        result = _rate_result(name, run.messages, run.seconds, usage, bridge=True,
                              ratio=_r(run.rate / base_rate) if base_rate else None)  # fmt: skip
        result.update(
            connections=sockets,
            baseline=baseline["scenario"],
            tool="bench.ws",
            first_message_p50_ms=_r(load.percentile(run.first_message_ms, 50)),
        )
        return result

    # --- references: what the same work costs without the bridge -------------------------

    def naive_hop(self, connections: int) -> Result:
        """The naive hop of bench.reference under the load rest_unary_c<N> gets."""
        hop = start_naive_hop(self.workdir, self.backend.port)
        try:
            url = f"http://127.0.0.1:{hop.port}{load.REST_ECHO_PATH}"
            load.wrk(url, self.scripts["small"], connections, self.plan.warmup)
            run, usage = Meter(hop, self.backend).around(
                lambda: load.wrk(url, self.scripts["small"], connections, self.plan.duration)
            )
        finally:
            hop.stop()
        base = f"direct_grpc_unary_c{connections}"
        result = _load_result(f"reference_naive_hop_c{connections}", run, usage, bridge=True,
                              ratio=self._ratio(run.rps, base))  # fmt: skip
        result.update(baseline=base, measured="naive hop: aiohttp + json_format + grpc.aio")
        self._added_p50(result, run.p50_ms, base)
        return result

    def grpc_client(self, connections: int) -> Result:
        """The grpc.aio client alone making the Echo calls of direct_grpc_unary_c<N>."""
        base = f"direct_grpc_unary_c{connections}"
        result, out = self._reference_client(
            f"reference_grpc_aio_client_c{connections}", base,
            "--connections", str(connections), "--duration", str(self.plan.duration),
        )  # fmt: skip
        result.update(connections=connections, p50_ms=_r(out["p50_ms"]), p99_ms=_r(out["p99_ms"]))
        self._added_p50(result, out["p50_ms"], base)
        return result

    def grpc_client_streams(self, streams: int) -> Result:
        """The grpc.aio client alone receiving the Stream calls of direct_grpc_stream_<N>."""
        result, out = self._reference_client(
            f"reference_grpc_aio_client_stream_{streams}", f"direct_grpc_stream_{streams}",
            "--streams", str(streams), "--messages", str(self.plan.stream_messages),
        )  # fmt: skip
        result.update(connections=streams, unit="message", messages=out["count"],
                      messages_per_s=result["rps"])  # fmt: skip
        return result

    def _reference_client(self, name: str, base: str, *args: str) -> tuple[Result, dict[str, Any]]:
        """Run ``bench.reference client`` with args: its result row and its raw output."""
        cmd = [sys.executable, "-m", "bench.reference", "client",
               "--target", f"127.0.0.1:{self.backend.port}", *args]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                              timeout=self.plan.duration + load.TOOL_SLACK_SECONDS)  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"bench.reference client failed:\n{done.stderr[-800:]}")
        out: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        if not out["count"] or out["seconds"] <= 0:
            raise BenchError(f"bench.reference client made no calls: {out}")
        rps = out["count"] / out["seconds"]
        return {
            "scenario": name, "rps": _r(rps, 1), "p50_ms": None, "p99_ms": None,
            "cpu_us_per_req": _per(out["cpu_seconds"], out["count"]),
            "ratio_to_direct": self._ratio(rps, base), "baseline": base,
            "requests": out["count"], "seconds": _r(out["seconds"], 2),
            "measured": "the grpc.aio client process alone", "tool": "bench.reference",
        }, out  # fmt: skip

    def _added_p50(self, result: Result, p50_ms: float | None, baseline: str) -> None:
        direct_p50 = self.baselines.get(baseline, {}).get("p50_ms")
        if direct_p50 is not None and p50_ms is not None:
            result["added_p50_ms"] = _r(p50_ms - direct_p50)

    def _ratio(self, rps: float, baseline: str) -> float | None:
        base = self.baselines.get(baseline, {}).get("rps")
        return _r(rps / base) if base else None

    # --- idle WebSockets ----------------------------------------------------------------

    async def ws_idle(self, wanted: int, limit_note: str | None) -> Result:
        """Open ``wanted`` sockets, hold them, read the bridge's RSS, prove they work, close."""
        before = rss_mib(self.bridge.pid)
        async with ws.client_session() as session:
            self.meter.start()
            opened = await ws.open_idle(session, self.bridge_url + "/ws", wanted,
                                        WS_HANDSHAKES_AT_ONCE)  # fmt: skip
            usage = self.meter.stop()
            try:
                await asyncio.sleep(self.plan.hold_seconds)
                held = rss_mib(self.bridge.pid)
                alive = [s for s in opened.sockets if not s.ws.closed]
                sample = alive[:: max(1, len(alive) // 10)][:10]
                echoes = await asyncio.gather(*(s.echo(1) for s in sample), return_exceptions=True)
            finally:
                await ws.close_all(opened.sockets, WS_HANDSHAKES_AT_ONCE)
        n = len(opened.sockets)
        result: Result = {
            "scenario": f"ws_idle_{self.plan.idle_sockets}",
            "rps": _r(n / opened.seconds if opened.seconds else 0.0, 1),
            "p50_ms": _r(load.percentile(opened.handshake_ms, 50)),
            "p99_ms": _r(load.percentile(opened.handshake_ms, 99)),
            "cpu_us_per_req": _per(usage.bridge, n),
            "ratio_to_direct": None,
            "unit": "connection (rps: upgrades/s while opening; p50/p99: upgrade latency)",
            "connections": n, "connections_wanted": self.plan.idle_sockets,
            "connections_attempted": wanted, "connections_held": len(alive),
            "bridge_rss_mib": _r(held, 1), "bridge_rss_before_mib": _r(before, 1),
            "bridge_rss_per_connection_kib": _r((held - before) * 1024 / n, 1) if n else None,
            "bridge_open_files_limit": open_files_limit(self.bridge.pid),
            "echo_ok": f"{sum(e is True for e in echoes)}/{len(sample)}",
            "failures": dict(opened.failures),
            "loadgen_cpu_us_per_req": _per(usage.loadgen, n), "tool": "bench.ws",
        }  # fmt: skip
        notes = [f"{c} x {k}" for k, c in opened.failures.items()]
        if limit_note:
            notes.append(limit_note)
        result["notes"] = notes
        return result


def _combined(rounds: Rounds) -> tuple[LoadRun, Usage]:
    """Several runs of one load as one: totals, and the median of their percentiles."""
    runs = [run for run, _ in rounds]
    first = runs[0]

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    run = LoadRun(first.tool, first.connections, sum(r.requests for r in runs),
                  sum(r.seconds for r in runs), median([r.p50_ms for r in runs]),
                  median([r.p99_ms for r in runs]), sum(r.errors for r in runs),
                  [n for r in runs for n in r.notes])  # fmt: skip
    usages = [u for _, u in rounds]
    usage = Usage(sum(u.bridge for u in usages), sum(u.backend for u in usages),
                  sum(u.loadgen for u in usages))  # fmt: skip
    return run, usage


def _median_ratio(runs: Rounds, bases: Rounds) -> tuple[float | None, list[float]]:
    """The median of the rounds' rate ratios, and the ratios sorted."""
    ratios = sorted(r.rps / b.rps for (r, _), (b, _) in zip(runs, bases, strict=True) if b.rps)
    return (statistics.median(ratios) if ratios else None), ratios


def _against(
    name: str, runs: Rounds, direct: Rounds,
    base: Result,
) -> Result:  # fmt: skip
    """A row of REST runs read against the direct runs of the same rounds."""
    run, usage = _combined(runs)
    ratio, ratios = _median_ratio(runs, direct)
    out = _load_result(name, run, usage, bridge=True, ratio=_r(ratio))
    out.update(baseline=base["scenario"], baseline_rps=base["rps"],
               round_ratios=[_r(x) for x in ratios])  # fmt: skip
    if len(ratios) > 1:
        out["notes"].append(f"ratio {ratios[0]:.2f}-{ratios[-1]:.2f} over {len(ratios)} rounds")
    if base["p50_ms"] is not None and run.p50_ms is not None:
        out["added_p50_ms"] = _r(run.p50_ms - base["p50_ms"])
    if base["p99_ms"] is not None and run.p99_ms is not None:
        out["added_p99_ms"] = _r(run.p99_ms - base["p99_ms"])
    return out


def _add_cost(
    row: Result, runs: Rounds, plain: Rounds,
    plain_row: Result,
) -> None:  # fmt: skip
    """What the policies cost against the plain bridge of the same rounds: rate and CPU."""
    ratio, ratios = _median_ratio(runs, plain)
    row.update(plain=plain_row["scenario"], ratio_to_plain=_r(ratio),
               plain_round_ratios=[_r(x) for x in ratios])  # fmt: skip
    if ratio is not None:
        row["cost_pct"] = _r((1 - ratio) * 100, 1)
    cpu, plain_cpu = row["cpu_us_per_req"], plain_row["cpu_us_per_req"]
    if cpu is not None and plain_cpu:  # steadier than the rate on a busy machine
        row["added_cpu_us_per_req"] = _r(cpu - plain_cpu, 1)
        row["cpu_cost_pct"] = _r((cpu - plain_cpu) * 100 / plain_cpu, 1)


def not_measured(name: str, *, skipped: str | None = None, error: str | None = None) -> Result:
    """The row of a scenario that was not measured: skipped (and why) or failed."""
    row: Result = {"scenario": name, "rps": None, "p50_ms": None, "p99_ms": None,
                   "cpu_us_per_req": None, "ratio_to_direct": None}  # fmt: skip
    if skipped is not None:
        row["skipped"] = skipped
    if error is not None:
        row["error"] = error
    return row


def _describe(message: str) -> str:
    return f"{len(message)} bytes of text" if message != SMALL else f"text {message!r}"


def _load_result(
    name: str, run: LoadRun, usage: Usage, *, bridge: bool, ratio: float | None
) -> Result:
    """A result object for one wrk/h2load run."""
    n = run.requests
    return {
        "scenario": name, "rps": _r(run.rps, 1), "p50_ms": _r(run.p50_ms),
        "p99_ms": _r(run.p99_ms), "cpu_us_per_req": _per(usage.bridge, n) if bridge else None,
        "ratio_to_direct": ratio, "connections": run.connections, "requests": n,
        "seconds": _r(run.seconds, 2), "errors": run.errors,
        "backend_cpu_us_per_req": _per(usage.backend, n),
        "loadgen_cpu_us_per_req": _per(usage.loadgen, n), "tool": run.tool, "notes": run.notes,
    }  # fmt: skip


def _rate_result(
    name: str, messages: int, seconds: float, usage: Usage, *, bridge: bool, ratio: float | None
) -> Result:
    """A result object for streamed messages (rps is messages per second)."""
    rate = messages / seconds if seconds > 0 else 0.0
    return {
        "scenario": name, "rps": _r(rate, 1), "p50_ms": None, "p99_ms": None,
        "cpu_us_per_req": _per(usage.bridge, messages) if bridge else None,
        "ratio_to_direct": ratio, "unit": "message", "messages": messages,
        "messages_per_s": _r(rate, 1), "seconds": _r(seconds, 3),
        "backend_cpu_us_per_req": _per(usage.backend, messages),
        "loadgen_cpu_us_per_req": _per(usage.loadgen, messages),
    }  # fmt: skip
