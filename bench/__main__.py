"""``python -m bench``: the benchmarks of SPEC section 9, on loopback, in a few minutes.

Starts the bench backend (``services.bench``) and a bridge in front of it, then measures:
direct gRPC unary calls (h2load) against REST through the bridge (wrk) at 16 connections with
a small and a 16 KiB message and at 1 connection, alternated over a few rounds; server
streaming over 1 and 100 WebSockets against the same streams made directly; and thousands of
idle WebSockets held. The pair at 16 connections has rivals in its rounds: a second bridge
with auth and rate limits on (their cost against the 15% budget; a third keeps its buckets in
a redis-server the bench starts, priced against the in-memory one), Envoy's gRPC-JSON
transcoder where Envoy is installed, a bridge whose cache answers every call (a hit's CPU
against a backend call's) and one serving an aggregate of three calls (its CPU against three
REST calls). Reference rows measure the same work without the bridge
(a naive hop, the grpc.aio client alone); a last row times the metrics step alone, in-process.
Prints a table and writes a list of scenario objects to bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from bench import envoy, load, metrics_cost, report, rivals
from bench.processes import BenchError, Service, start_backend, start_bridge
from bench.scenarios import CONCURRENCY, Plan, Result, Scenarios, not_measured

T = TypeVar("T")
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
FD_MARGIN = 256  # descriptors the bench needs besides the idle sockets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short runs (for a test)")
    parser.add_argument("--workers", type=int, default=1, help="passed to `bridge serve`")
    parser.add_argument("--duration", type=int, help="seconds per load-tool run (5; quick 2)")
    parser.add_argument("--rounds", type=int, help="alternated runs per unary pair (3; quick 1)")
    parser.add_argument(
        "--stream-messages", type=int, help="messages per streaming scenario (50000; quick 5000)"
    )
    parser.add_argument("--idle", type=int, help="idle WebSockets to hold (5000; quick 1000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results.json path")
    args = parser.parse_args(argv)
    if any(n is not None and n < 1 for n in (args.workers, args.duration, args.rounds)):
        parser.error("--workers, --duration and --rounds must be at least 1")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        duration=args.duration or (2 if quick else 5),
        rounds=args.rounds or (1 if quick else 3),
        stream_messages=max(100, args.stream_messages or (5_000 if quick else 50_000)),
        idle_sockets=args.idle or (1_000 if quick else 5_000),
        hold_seconds=1.0 if quick else 3.0,
        workers=args.workers,
        metrics_calls=20_000 if quick else 50_000,
    )


def raise_open_files(needed: int) -> tuple[int, str | None]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the bridge, a child, inherits it).

    Returns how many idle sockets fit, and a note when that is fewer than asked.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft >= needed + FD_MARGIN:
        return needed, None
    fits = max(0, soft - FD_MARGIN)
    return fits, f"open files limit {soft}: only {fits} of {needed} sockets attempted"


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run the WebSocket client on uvloop when it is installed, like the bridge."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_scenarios(
    s: Scenarios, plan: Plan, services: Sequence[Service], fd_room: tuple[int, str | None]
) -> list[Result]:
    """Every scenario in order; a failed one is recorded and the rest still run."""
    wanted, limit_note = fd_room
    c = CONCURRENCY
    steps: list[tuple[list[str], Callable[[], list[Result]]]] = [
        (rivals.names(c), lambda: rivals.unary_with_rivals(s, c)),
        ([f"reference_naive_hop_c{c}"], lambda: [s.naive_hop(c)]),
        ([f"reference_grpc_aio_client_c{c}"], lambda: [s.grpc_client(c)]),
        (["direct_grpc_unary_c1", "rest_unary_c1"], lambda: s.unary_pair("small", 1)),
        (["reference_naive_hop_c1"], lambda: [s.naive_hop(1)]),
        (["reference_grpc_aio_client_c1"], lambda: [s.grpc_client(1)]),
        ([f"direct_grpc_unary_16k_c{c}", f"rest_unary_16k_c{c}"], lambda: s.unary_pair("16k", c)),
    ]  # fmt: skip
    for n, ws_name in ((1, "ws_stream_1_socket"), (100, "ws_stream_100_sockets")):
        steps.append(([f"direct_grpc_stream_{n}", ws_name], lambda n=n: _stream_pair(s, n)))  # type: ignore[misc]
    steps.append((["reference_grpc_aio_client_stream_100"], lambda: [s.grpc_client_streams(100)]))
    steps.append(([f"ws_idle_{plan.idle_sockets}"],
                  lambda: [_run_async(s.ws_idle(wanted, limit_note))]))  # fmt: skip
    steps.append(([metrics_cost.NAME], lambda: [metrics_cost.measure(plan.metrics_calls)]))
    results: list[Result] = []
    for names, step in steps:
        print(f"running {' + '.join(names)} ...", flush=True)
        try:
            for service in services:
                service.check_alive()
            results += step()
        except Exception as exc:  # one failed scenario is a result; the others still run
            error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            print(f"  failed: {error}", flush=True)
            results += [not_measured(n, error=error) for n in names]
    return results


def _stream_pair(s: Scenarios, sockets: int) -> list[Result]:
    base = s.direct_stream(sockets)
    return [base, _run_async(s.ws_stream(sockets, base))]


def _envoy_version() -> str:
    """Which Envoy the Envoy row runs, or that there is none."""
    binary, _ = envoy.locate()
    return f"envoy {envoy.version(binary)}" if binary else "no envoy"


def _on_sigterm(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    load.need_tools()
    facts = report.machine_facts(f"{load.tool_versions()}, {_envoy_version()}", args.workers)
    report.print_machine(facts)
    started = time.monotonic()
    fd_room = raise_open_files(plan.idle_sockets)  # before the bridge starts: it inherits it
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp:
        workdir = Path(tmp)
        backend = start_backend(workdir)
        try:
            bridge = start_bridge(workdir, backend.port, args.workers)
            try:
                scenarios = Scenarios(bridge, backend, workdir, plan)
                print(f"bridge pid {bridge.pid} on :{bridge.port}, backend pid {backend.pid} "
                      f"on :{backend.port}; warming up ...", flush=True)  # fmt: skip
                scenarios.warm_up()
                results = run_scenarios(scenarios, plan, (bridge, backend), fd_room)
            finally:
                bridge.stop()
        finally:
            backend.stop()
    metrics_cost.against_rest(results)
    targets = report.check_targets(results)
    report.print_table(results)
    print("targets:")
    print("\n".join(targets))
    report.write_json(results, args.out)
    print(f"wrote {args.out} ({time.monotonic() - started:.0f} s)")
    return 1 if any("error" in r for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; the bridge and the backend were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
