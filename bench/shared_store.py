"""The Redis rate-limit store of SPEC section 10, priced against the in-memory one.

A third policy bridge runs the API-key policy of `bench.policies` with its token buckets in a
redis-server the bench starts on a free port (nothing written to disk), so each request adds
one EVALSHA round trip to the bucket check. Its row, ``rest_unary_policies_redis_c16``, is
measured in the same rounds as ``rest_unary_policies_c16``, the same policy with the buckets
in memory, and `price` adds what the round trip costs a request against that row: bridge CPU,
p50 latency and the rate ratio. The CPU column is the bridge's alone; redis-server's own over
the same measured runs is reported apart (``redis_cpu_us_per_req``, `RedisMeter`). Without
redis-server the row is skipped, saying why.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

import redis

from bench.processes import BenchError, Service, Skipped, cpu_seconds, free_port, spawn, wait_until
from bench.scenarios import Meter, Usage

MISSING: Final = "redis-server is not installed (make redis installs Debian's package)"


def start_redis(workdir: Path) -> tuple[Service, str]:
    """A redis-server on a free loopback port, and its URL; Skipped when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise Skipped(MISSING)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no"]  # fmt: skip
    service = spawn("redis-server", argv, workdir / "redis.log", port)
    wait_until(service, lambda: "Ready to accept connections" in service.log_tail(),
               "redis-server did not start")  # fmt: skip
    return service, f"redis://127.0.0.1:{port}/0"


def takes(url: str) -> int:
    """How many bucket takes (EVALSHA calls) redis-server has answered so far."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def check(url: str) -> None:
    """BenchError unless the policy bridge's checked calls took their tokens in Redis.

    Without this a bridge that kept its buckets in memory would pass for free.
    """
    if not takes(url):
        raise BenchError("the Redis policy bridge made no bucket take in Redis: its rate "
                         "limits' store is not used")  # fmt: skip


class RedisMeter(Meter):
    """The policy bridge's `Meter`, adding up redis-server's CPU over the same runs."""

    def __init__(self, meter: Meter, server: Service) -> None:
        super().__init__(meter.bridge, meter.backend)
        self.server = server
        self.redis_seconds = 0.0
        self._redis_at = 0.0

    def start(self) -> None:
        super().start()
        self._redis_at = cpu_seconds(self.server.pid)

    def stop(self) -> Usage:
        usage = super().stop()
        self.redis_seconds += cpu_seconds(self.server.pid) - self._redis_at
        return usage


def price(row: dict[str, Any], memory: dict[str, Any], meter: RedisMeter) -> None:
    """Add to the Redis row what its round trip costs a request against the memory row."""
    if row.get("rps") is None or not memory.get("rps"):
        return
    row["redis_cpu_us_per_req"] = round(meter.redis_seconds * 1e6 / row["requests"], 1)
    cpu = _minus(row["cpu_us_per_req"], memory["cpu_us_per_req"])
    p50 = _minus(row["p50_ms"], memory["p50_ms"], 3)
    ratio = round(row["rps"] / memory["rps"], 3)
    row.update(memory_store=memory["scenario"], redis_added_cpu_us_per_req=cpu,
               redis_added_p50_ms=p50, ratio_to_memory_store=ratio)  # fmt: skip
    row["notes"].append(f"Redis round trip vs {memory['scenario']}: {_signed(cpu, ' us CPU')}, "
                        f"{_signed(p50, ' ms p50', 3)}, {ratio:.2f}x its rate; redis-server "
                        f"{row['redis_cpu_us_per_req']} us a take")  # fmt: skip


def _minus(a: float | None, b: float | None, digits: int = 1) -> float | None:
    return None if a is None or b is None else round(a - b, digits)


def _signed(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:+.{digits}f}{unit}"
