"""What counting a call costs: the metrics step (`Observed`) timed alone, in processes of its own.

`bridge.observe.metrics.Observed` is the outermost step of every method's chain. For each call
it reads the clock twice, finds its label children (bound once per route, transport and code)
and adds to a Counter and a Histogram, each under prometheus-client's lock. That is all the
metrics cost on the request path: the other series are counted on rare events (refusals,
upstream errors, retries, cache lookups) or read when scraped.

The measure runs the step around an inner step that answers at once, and subtracts the same
loop calling the inner step alone: what is left is the step's own CPU time a call. Each is the
best of several interleaved repeats (timeit's rule: the least disturbed run). It runs in a
child process, once as one worker counts (in memory) and once as ``--workers N`` counts
(prometheus-client's multiprocess mode: every update goes to a memory-mapped file), so neither
the bench's own imports nor the other mode's environment are in the way.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Final

from bench.scenarios import Result, not_measured

NAME: Final = "metrics_cost_per_call"
_PLAIN: Final = "rest_unary_c16"


class _Method:
    """The parts of a method `Observed` reads: a unary method, as the bench's REST call."""

    full_name = "demo.bench.v1.BenchService/Echo"
    grpc_path = "/demo.bench.v1.BenchService/Echo"
    client_streaming = False
    server_streaming = False


class _Binding:
    method = _Method()
    route = "/v1/bench/echo"


class _Call:
    binding = _Binding()
    transport = "http"


async def _answer(call: Any) -> Any:
    return None  # a unary answer in hand: Observed counts the call when this returns


async def _bare(call: Any, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await _answer(call)
    return time.process_time() - start


async def _observed(step: Any, call: Any, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await step(call, _answer)
    return time.process_time() - start


async def _measure(calls: int, repeats: int) -> float:
    from bridge.observe.metrics import Observed  # imported here: after the mode's environment

    step, call = Observed(_Method()), _Call()  # type: ignore[arg-type]
    await _observed(step, call, 100)  # the label children are bound on the first call
    bare, observed = [], []
    for _ in range(repeats):
        bare.append(await _bare(call, calls))
        observed.append(await _observed(step, call, calls))
    return (min(observed) - min(bare)) * 1e6 / calls


def _child(mode: str, calls: int, repeats: int) -> float:
    """µs a call in a fresh process, in ``mode`` ("single" or "multiprocess")."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="bridge-bench-metrics-") as tmp:
        if mode == "multiprocess":
            env["PROMETHEUS_MULTIPROC_DIR"] = tmp
        code = f"import bench.metrics_cost as m; print(m.child({calls}, {repeats}))"
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"metrics measure ({mode}) failed: {run.stderr.strip()[-300:]}")
    return float(json.loads(run.stdout.strip().splitlines()[-1]))


def child(calls: int, repeats: int) -> str:
    """The child's answer: the µs a call, as JSON on stdout."""
    return json.dumps(round(asyncio.run(_measure(calls, repeats)), 3))


def measure(calls: int, repeats: int = 5) -> Result:
    """The row: µs of CPU the metrics step adds to a call, in both modes."""
    try:
        single = _child("single", calls, repeats)
        shared = _child("multiprocess", calls, repeats)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        return not_measured(NAME, error=str(exc))
    return {
        "scenario": NAME, "rps": round(1e6 / max(single, 0.01), 1),
        "p50_ms": None, "p99_ms": None, "cpu_us_per_req": single, "ratio_to_direct": None,
        "unit": "call", "multiprocess_cpu_us_per_req": shared, "calls": calls,
        "repeats": repeats, "measured": "the Observed step alone, in-process (rps: calls/s "
        "it alone could count on one core)",
    }  # fmt: skip


def against_rest(results: list[Result]) -> None:
    """Add what the step costs as a share of a REST call's bridge CPU, when both were measured."""
    by_name = {r["scenario"]: r for r in results}
    row, plain = by_name.get(NAME), by_name.get(_PLAIN)
    if row is None or plain is None or row.get("cpu_us_per_req") is None:
        return
    rest = plain.get("cpu_us_per_req")
    if rest:
        row["plain"] = _PLAIN
        row["share_of_rest_cpu_pct"] = round(row["cpu_us_per_req"] * 100 / rest, 2)
