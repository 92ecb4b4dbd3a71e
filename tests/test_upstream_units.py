"""Unit tests of upstream/: the breaker's states, backoff bounds, the balancer's choice, and what
counts as a call that never reached a backend."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from bridge.config import ConfigError, UpstreamSettings, settings_from_dict
from bridge.config.sections import RetrySettings
from bridge.upstream.balancer import Balancer, Target
from bridge.upstream.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from bridge.upstream.retry import JITTER, RetryPolicy, never_reached


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_breaker_opens_after_consecutive_failures_only(clock: Clock) -> None:
    breaker = Breaker(3, 10.0, clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # a success in between starts the count again
    breaker.failed()
    breaker.failed()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failed()
    assert breaker.state == OPEN and not breaker.allow() and not breaker.available()


def test_after_reset_one_trial_call_closes_the_circuit(clock: Clock) -> None:
    breaker = Breaker(1, 10.0, clock)
    breaker.failed()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.available()
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow() and not breaker.available()  # one trial at a time
    breaker.succeeded()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_a_failed_trial_reopens_for_another_reset(clock: Clock) -> None:
    breaker = Breaker(5, 10.0, clock)
    for _ in range(5):
        breaker.failed()
    clock.now += 10
    assert breaker.allow()
    breaker.failed()  # one failure is enough while half-open
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 10
    assert breaker.allow()


def test_an_abandoned_trial_frees_the_slot(clock: Clock) -> None:
    breaker = Breaker(1, 1.0, clock)
    breaker.failed()
    clock.now += 1
    assert breaker.allow()
    breaker.abandoned()
    assert breaker.allow() and breaker.state == HALF_OPEN


@pytest.mark.parametrize("retry", [1, 2, 3, 5])
def test_backoff_doubles_and_jitters_within_half_either_way(retry: int) -> None:
    policy = RetryPolicy(3, frozenset({grpc.StatusCode.UNAVAILABLE}), 0.05)
    rand = random.Random(retry)
    nominal = 0.05 * 2 ** (retry - 1)
    delays = [policy.delay(retry, rand) for _ in range(500)]
    assert all(nominal * (1 - JITTER) <= d <= nominal * (1 + JITTER) for d in delays)
    assert max(delays) - min(delays) > nominal * 0.8  # spread, not one value


def test_retry_policy_from_settings() -> None:
    assert RetryPolicy.of(None) is None
    policy = RetryPolicy.of(RetrySettings(attempts=4, on=["aborted", "UNAVAILABLE"]))
    assert policy == RetryPolicy(
        4, frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE}), 0.05
    )


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        pytest.param(
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Failed to connect to remote host: Connection refused",
            True,
            id="refused-at-pick",
        ),
        pytest.param(
            grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)", False, id="reset-mid"
        ),
        pytest.param(
            grpc.StatusCode.UNAVAILABLE,
            "Stream removed (recvmsg:Connection reset by peer (104))",
            False,
            id="reset-after-send",
        ),
        pytest.param(grpc.StatusCode.UNAVAILABLE, "backend says so", False, id="backend-status"),
        pytest.param(
            grpc.StatusCode.DEADLINE_EXCEEDED, "failed to connect to all addresses", False, id="dl"
        ),
        pytest.param(grpc.StatusCode.UNAVAILABLE, None, False, id="no-details"),
    ],
)
def test_never_reached_is_only_a_failed_pick(
    code: grpc.StatusCode, details: str | None, expected: bool
) -> None:
    assert never_reached(code, details) is expected


class FakeChannel:
    """Only the connectivity state, which is all the balancer reads of a channel."""

    def __init__(self) -> None:
        self.state = grpc.ChannelConnectivity.READY

    def get_state(self) -> grpc.ChannelConnectivity:
        return self.state


def targets(count: int, clock: Clock | None = None) -> list[Target]:
    made = []
    for i in range(count):
        breaker = Breaker(1, 5.0, clock) if clock else None
        made.append(Target(f"t{i}", FakeChannel(), breaker))  # type: ignore[arg-type]
    return made


def picks(balancer: Balancer, count: int) -> list[str | None]:
    return [t.address if (t := balancer.pick()) else None for _ in range(count)]


def test_round_robin_over_every_target() -> None:
    assert picks(Balancer(targets(3)), 7) == ["t0", "t1", "t2", "t0", "t1", "t2", "t0"]


def test_unhealthy_and_open_targets_leave_the_rotation(clock: Clock) -> None:
    pool = targets(3, clock)
    balancer = Balancer(pool)
    pool[0].healthy = False
    pool[2].failed()
    assert picks(balancer, 4) == ["t1"] * 4
    pool[0].healthy = True
    assert set(picks(balancer, 4)) == {"t0", "t1"}


def test_every_target_out_picks_none_and_says_why(clock: Clock) -> None:
    pool = targets(3, clock)
    balancer = Balancer(pool)
    pool[0].healthy = False
    pool[1].failed()
    pool[2].failed()
    assert balancer.pick() is None
    assert balancer.out() == "1 not serving, 2 with an open circuit"
    clock.now += 5  # reset passed: one trial call goes to each broken target
    assert picks(balancer, 3) == ["t1", "t2", None]


def test_a_retry_avoids_the_target_that_failed_unless_it_is_the_only_one() -> None:
    pool = targets(2)
    balancer = Balancer(pool)
    assert [balancer.pick(avoid=pool[0]) for _ in range(3)] == [pool[1]] * 3
    pool[1].healthy = False
    assert balancer.pick(avoid=pool[0]) is pool[0]


def test_a_target_gRPC_cannot_connect_to_is_skipped_but_not_given_up() -> None:
    pool = targets(2)
    balancer = Balancer(pool)
    pool[0].channel.state = grpc.ChannelConnectivity.TRANSIENT_FAILURE  # type: ignore[attr-defined]
    assert picks(balancer, 3) == ["t1"] * 3
    pool[1].healthy = False
    assert picks(balancer, 2) == ["t0", "t0"]  # nothing better: gRPC may have reconnected


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"retries": {"attempts": 0}}, "must be more than zero"),
        ({"retries": {"on": ["NOPE"]}}, "is not a gRPC status code"),
        ({"retries": {"on": ["OK"]}}, "OK is not a failure"),
        ({"retries": {"backoff": "0s"}}, "must be more than zero"),
        ({"retries": {"tries": 3}}, "unknown key"),
        ({"circuit_breaker": {"failures": -1}}, "must be more than zero"),
        ({"circuit_breaker": {"reset": "soon"}}, "is not a duration"),
        ({"health_check": "yes"}, "expected true or false"),
    ],
)
def test_upstream_resilience_keys_are_validated(config: dict, problem: str) -> None:
    data = {"upstreams": {"u": {"targets": ["h:1"], **config}}}
    with pytest.raises(ConfigError, match=problem):
        settings_from_dict(data, Path("bridge.yaml"))


def test_upstream_resilience_defaults() -> None:
    settings = UpstreamSettings(name="u", targets=("h:1",), retries={}, circuit_breaker={})
    assert settings.retries is not None and settings.circuit_breaker is not None
    assert (settings.retries.attempts, settings.retries.on, settings.retries.backoff) == (
        3,
        ("UNAVAILABLE",),
        0.05,
    )
    assert (settings.circuit_breaker.failures, settings.circuit_breaker.reset) == (5, 10.0)
    assert UpstreamSettings(name="u", targets=("h:1",)).health_check is False


@pytest.mark.parametrize(
    ("method", "safe"),
    [
        ("demo.users.v1.UserService/GetUser", True),  # get rule
        ("demo.echo.v1.EchoService/Echo", True),  # post rule with an additional get binding
        ("demo.users.v1.UserService/CreateUser", False),  # post
        ("demo.users.v1.UserService/DeleteUser", False),  # delete: not a get
        ("demo.echo.v1.EchoService/ResetStats", False),  # no rule at all
    ],
)
def test_a_method_is_safe_with_a_get_rule(demo_protos, method: str, safe: bool) -> None:
    from bridge.registry.snapshot import JsonShape, build_snapshot

    snapshot = build_snapshot([demo_protos], lambda service: "u", JsonShape())
    assert snapshot.methods[method].safe is safe


@pytest.mark.parametrize(
    ("level", "safe"),
    [("NO_SIDE_EFFECTS", True), ("IDEMPOTENT", True), ("IDEMPOTENCY_UNKNOWN", False)],
)
def test_a_method_is_safe_by_its_idempotency_level(level: str, safe: bool) -> None:
    from google.protobuf import descriptor_pb2

    from bridge.registry.snapshot import _safe

    proto = descriptor_pb2.MethodDescriptorProto(name="M")
    proto.options.idempotency_level = descriptor_pb2.MethodOptions.IdempotencyLevel.Value(level)
    assert _safe(proto) is safe
