"""The composition scenarios of SPEC section 7: a bridge that caches, and one that aggregates.

Each is a second bridge in front of the bench backend, a rival in the unary rounds at 16
connections, so it is read against the plain bridge of the same rounds. The cached bridge keeps
Echo's answers for an hour: wrk sends one request over and over, so after the first call every
call is a hit, and its CPU per request against the plain bridge's prices a hit against a
backend call. The aggregate bridge serves one GET route that makes three Echo calls with no
dependencies between them; its CPU per request is read against three REST calls through the
plain bridge. Before measuring, each must answer like the plain bridge does (a hit marked
``X-Cache: HIT``, an aggregate of three keys), or a bridge that ignored its config would pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.load import ECHO_PATH
from bench.processes import Answer, BenchError, Service, Skipped, get, post, start_bridge
from bridge.config import NOT_SUPPORTED

METHOD: Final = ECHO_PATH.lstrip("/")  # demo.bench.v1.BenchService/Echo
CACHE_CONFIG: Final = f"""\
cache:
  - {{match: "{METHOD}", ttl: 1h}}
"""
AGGREGATE_PATH: Final = "/bff/v1/bench/three"
AGGREGATE_CALLS: Final = ("a", "b", "c")  # no call names another: all three run at once


@dataclass(frozen=True)
class Composition:
    """One composition bridge: its config, how to check it, and what its row adds."""

    name: str  # the scenario row: rest_unary_<name>_c<N>
    config: str  # top-level YAML added to the bench bridge's config
    path: str  # what wrk requests
    message: str | None  # the JSON body wrk POSTs; None for a GET
    describe: str
    check: Callable[[str, Answer], None]  # (url, the plain bridge's answer) -> or BenchError
    priced: Callable[[dict[str, Any], dict[str, Any]], None]  # (row, plain row): adds keys
    same_work: bool  # does one request do what one plain request does (is the rate comparable)


def cached(message: str) -> Composition:
    """Echo cached for an hour: every measured call is a hit."""
    return Composition("cached", CACHE_CONFIG, ECHO_PATH, message,
                       f"cache {METHOD} ttl 1h, every call a hit", _check_hits(message),
                       _price_hit, same_work=True)  # fmt: skip


def aggregate(message: str) -> Composition:
    """One GET route fanning out to three independent Echo calls."""
    request = json.dumps({"message": message})  # JSON is YAML too
    calls = "".join(f'      {name}: {{method: "{METHOD}", request: {request}}}\n'
                    for name in AGGREGATE_CALLS)  # fmt: skip
    config = f"aggregates:\n  - route: GET {AGGREGATE_PATH}\n    calls:\n{calls}"
    return Composition("aggregate3", config, AGGREGATE_PATH, None,
                       f"aggregate GET {AGGREGATE_PATH}: {len(AGGREGATE_CALLS)} Echo calls",
                       _check_aggregate, _price_aggregate, same_work=False)  # fmt: skip


def start(composition: Composition, workdir: Path, backend_port: int, workers: int) -> Service:
    """Start a bridge with the composition's config; Skipped if this Bridge refuses the key."""
    try:
        return start_bridge(workdir, backend_port, workers, f"bridge-{composition.name}",
                            composition.config)  # fmt: skip
    except BenchError as exc:
        refused = refusal(str(exc))
        if refused is None:
            raise
        raise Skipped(refused) from None


def refusal(log: str) -> str | None:
    """The refusal of a key this Bridge does not support yet, from its start-up log, or None.

    The log's line is ``bridge: <file>.yaml: <key path>: not supported ...``.
    """
    for line in log.splitlines():
        if line.endswith(NOT_SUPPORTED):
            return line.split(".yaml: ", 1)[-1]
    return None


def _json(answer: Answer) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError:
        return None


def _check_hits(message: str) -> Callable[[str, Answer], None]:
    body = json.dumps({"message": message}).encode()

    def check(url: str, plain: Answer) -> None:
        first = post(url, body, {"content-type": "application/json"})
        second = post(url, body, {"content-type": "application/json"})
        for n, answer in enumerate((first, second), 1):
            if answer.status != 200 or _json(answer) != _json(plain):
                raise BenchError(f"the cached bridge answered call {n} {answer.status} "
                                 f"{answer.body[:200]!r}; the plain bridge "
                                 f"{plain.body[:200]!r}")  # fmt: skip
        marks = [a.headers.get("x-cache") for a in (first, second)]
        if marks[0] not in ("MISS", "HIT") or marks[1] != "HIT":
            raise BenchError(f"the cached bridge's X-Cache on two equal calls: {marks}, "
                             "not [MISS, HIT]: its cache is not applied")  # fmt: skip

    return check


def _check_aggregate(url: str, plain: Answer) -> None:
    answer = get(url)
    got = _json(answer)
    if answer.status != 200 or not isinstance(got, dict):
        raise BenchError(f"the aggregate answered {answer.status} {answer.body[:300]!r}")
    want = dict.fromkeys(AGGREGATE_CALLS, _json(plain))
    if got != want:
        raise BenchError(f"the aggregate answered {answer.body[:300]!r}, not {want}")


def _price_hit(row: dict[str, Any], plain: dict[str, Any]) -> None:
    cpu, plain_cpu = row["cpu_us_per_req"], plain["cpu_us_per_req"]
    row["plain_cpu_us_per_req"] = plain_cpu
    if cpu is not None and plain_cpu:
        row["cpu_ratio_to_plain"] = round(cpu / plain_cpu, 3)


def _price_aggregate(row: dict[str, Any], plain: dict[str, Any]) -> None:
    calls, cpu, plain_cpu = len(AGGREGATE_CALLS), row["cpu_us_per_req"], plain["cpu_us_per_req"]
    row.update(plain=plain["scenario"], calls_per_request=calls)
    if row["rps"] is not None:
        row["backend_calls_per_s"] = round(row["rps"] * calls, 1)
    if cpu is not None and plain_cpu:
        row["direct_rest_cpu_us"] = round(plain_cpu * calls, 1)
        row["cpu_ratio_to_direct_rest"] = round(cpu / (plain_cpu * calls), 3)
    row["notes"].append(f"1 request = {calls} Echo calls; ratio_to_direct counts requests")
