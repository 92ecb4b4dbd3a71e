"""The unary pair at 16 connections with its rivals: the bridge with policies (its buckets in
memory, and in Redis), Envoy, and the bridges that cache and aggregate.

SPEC section 9 reads the bridge against Envoy's gRPC-JSON transcoder and prices auth and rate
limits (SPEC 10's Redis store against the in-memory one, too), a cache hit and an aggregate of
three calls against the plain bridge, all in the same rounds as the plain pair, so machine
drift hits every row alike. Each rival is started here, checked to answer the bench call like
the bridge does, warmed up, measured in the pair's rounds, and stopped. A rival that cannot run
gets a row that says why: ``skipped`` when it is not there (Envoy or redis-server not
installed, a config key this Bridge refuses), ``error`` when it is there and fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence

from bench import composition, envoy, load, policies, shared_store
from bench.processes import Answer, BenchError, Skipped, post
from bench.scenarios import SMALL, Meter, Result, Rival, Scenarios, not_measured

BODY = json.dumps({"message": SMALL}).encode()
JSON = {"content-type": "application/json"}
ENVOY_NOTE = "Envoy {version}, --concurrency {concurrency}"
# The rivals' rows, in order: rest_unary_<tag>_c<N>.
TAGS = ("policies", "jwt", "policies_redis", "envoy", "cached", "aggregate3")


def names(connections: int) -> list[str]:
    """The rows unary_with_rivals returns, in order."""
    return [f"direct_grpc_unary_c{connections}", f"rest_unary_c{connections}",
            *(f"rest_unary_{t}_c{connections}" for t in TAGS)]  # fmt: skip


def unary_with_rivals(s: Scenarios, connections: int) -> list[Result]:
    """The small unary pair with every rival that could be started, then their rows."""
    plain = post(s.bridge_url + load.REST_ECHO_PATH, BODY, JSON)
    if plain.status != 200:
        raise BenchError(f"the bridge answered the bench call {plain.status}: {plain.body[:200]!r}")
    redis: list[shared_store.RedisMeter] = []  # the Redis store's row's, with redis-server's CPU
    slots: list[Callable[[contextlib.ExitStack], Rival]] = [
        lambda stack: _policy_rival(s, stack, policies.api_key_policy(), plain),
        lambda stack: _policy_rival(s, stack, policies.jwt_policy(), plain),
        lambda stack: _redis_rival(s, stack, plain, redis),
        lambda stack: _envoy_rival(s, stack, plain),
        lambda stack: _composition_rival(s, stack, composition.cached(SMALL), plain),
        lambda stack: _composition_rival(s, stack, composition.aggregate(SMALL), plain),
    ]
    with contextlib.ExitStack() as stack:
        rivals: list[Rival] = []
        unmeasured: dict[str, Result] = {}
        for tag, slot in zip(TAGS, slots, strict=True):
            name = f"rest_unary_{tag}_c{connections}"
            try:
                rivals.append(slot(stack))
            except Skipped as why:
                print(f"  {name} skipped: {why}", flush=True)
                unmeasured[tag] = not_measured(name, skipped=str(why))
            except BenchError as exc:
                print(f"  {name} failed: {exc}", flush=True)
                unmeasured[tag] = not_measured(name, error=str(exc))
        _warm(s, rivals, connections)
        rows = s.unary_pair("small", connections, rivals)
        measured = iter(rows[2:])  # in TAGS order, without the unmeasured ones
        by_tag = {t: unmeasured.get(t) or next(measured) for t in TAGS}
        if redis:  # priced while its redis-server still runs
            shared_store.price(by_tag["policies_redis"], by_tag["policies"], redis[0])
    return rows[:2] + list(by_tag.values())


def _policy_rival(
    s: Scenarios, stack: contextlib.ExitStack, policy: policies.Policy, plain: Answer
) -> Rival:
    bridge = policies.start(policy, s.workdir, s.backend.port, s.plan.workers)
    stack.callback(bridge.stop)
    url = f"http://127.0.0.1:{bridge.port}{load.REST_ECHO_PATH}"
    policies.check(policy, url, BODY, plain)
    script = load.wrk_script(s.workdir, policy.name, {"message": SMALL}, policy.headers)
    return Rival(policy.name, url, script, Meter(bridge, s.backend),
                 measured=f"bridge with {policy.describe}", note=policy.describe,
                 against_plain=True, facts={"policy": policy.describe})  # fmt: skip


def _redis_rival(
    s: Scenarios, stack: contextlib.ExitStack, plain: Answer, meters: list[shared_store.RedisMeter]
) -> Rival:
    """The API-key policy with its buckets in a redis-server started here (SPEC 10)."""
    server, url = shared_store.start_redis(s.workdir)
    stack.callback(server.stop)
    rival = _policy_rival(s, stack, policies.api_key_policy(url), plain)
    shared_store.check(url)
    meter = shared_store.RedisMeter(rival.meter, server)
    meters.append(meter)
    return dataclasses.replace(rival, meter=meter)


def _composition_rival(
    s: Scenarios, stack: contextlib.ExitStack, comp: composition.Composition, plain: Answer
) -> Rival:
    bridge = composition.start(comp, s.workdir, s.backend.port, s.plan.workers)
    stack.callback(bridge.stop)
    url = f"http://127.0.0.1:{bridge.port}{comp.path}"
    comp.check(url, plain)
    body: dict[str, object] | None = None if comp.message is None else {"message": comp.message}
    script = load.wrk_script(s.workdir, comp.name, body)
    return Rival(comp.name, url, script, Meter(bridge, s.backend),
                 measured=f"bridge with {comp.describe}", note=comp.describe,
                 against_plain=comp.same_work, priced=comp.priced)  # fmt: skip


def _envoy_rival(s: Scenarios, stack: contextlib.ExitStack, plain: Answer) -> Rival:
    binary, missing = envoy.locate()
    if binary is None:
        raise Skipped(missing)
    version = envoy.version(binary)
    workers = s.plan.workers  # as many worker threads as the bridge has worker processes
    proxy = envoy.start(binary, s.workdir, s.backend.port, workers)
    stack.callback(proxy.stop)
    url = f"http://127.0.0.1:{proxy.port}{load.REST_ECHO_PATH}"
    answer = post(url, BODY, JSON)
    same = answer.status == 200 and json.loads(answer.body) == json.loads(plain.body)
    if not same or not answer.headers.get("content-type", "").startswith("application/json"):
        raise BenchError(f"Envoy answered {answer.status} {answer.headers.get('content-type')} "
                         f"{answer.body[:200]!r}, the bridge {plain.body[:200]!r}")  # fmt: skip
    facts = {"envoy_version": version, "envoy_concurrency": workers}
    measured = f"envoy {version} --concurrency {workers} (gRPC-JSON transcoder)"
    return Rival("envoy", url, s.scripts["small"], Meter(proxy, s.backend), measured=measured,
                 note=ENVOY_NOTE.format(version=version, concurrency=workers), yardstick=True,
                 facts=facts)  # fmt: skip


def _warm(s: Scenarios, rivals: Sequence[Rival], connections: int) -> None:
    """Unmeasured runs, as the bridge had in Scenarios.warm_up."""
    for rival in rivals:
        load.wrk(rival.url, rival.script, connections, s.plan.warmup)
