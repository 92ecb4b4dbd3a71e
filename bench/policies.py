"""The policy scenario of SPEC section 9: a second bridge with auth and rate limits on every call.

Its config adds, for every method, an API key (``x-api-key``) that must be present and a token
bucket keyed by it that never runs dry in a bench run (a million a second, a million at once),
so the scenario measures what checking both costs, not refusals. A JWT variant (HS256, a token
made with PyJWT, a bucket per subject) runs beside it. Before measuring, each policy bridge must
refuse a call without credentials and answer one with them like the plain bridge does.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt

from bench.processes import Answer, BenchError, Service, post, start_bridge

KEY_HEADER: Final = "x-api-key"
RATE_LIMITS: Final = """\
rate_limits:
  - {{match: "*", key: {key}, rate: 1000000/s, burst: 1000000}}
"""
REDIS_RATE_LIMITS: Final = """\
rate_limits:
  store: {store}
  rules: [{{match: "*", key: {key}, rate: 1000000/s, burst: 1000000}}]
"""
API_KEY_POLICY: Final = """\
auth:
  api_keys: {{header: x-api-key, keys: "bench={api_key}"}}
  rules:
    - {{match: "*", require: api_key}}
"""
JWT_POLICY: Final = """\
auth:
  jwt: {{algorithms: [HS256], secret: "{secret}"}}
  rules:
    - {{match: "*", require: jwt}}
"""
TOKEN_SECONDS: Final = 3600  # longer than any bench run


@dataclass(frozen=True)
class Policy:
    """One policy bridge's config and the header that lets wrk through it."""

    name: str  # the scenario row: rest_unary_<name>_c<N>
    config: str  # top-level YAML added to the bench bridge's config
    headers: dict[str, str]  # what every request carries
    describe: str


def api_key_policy(store: str | None = None) -> Policy:
    """API key required on every method plus a rate limit keyed by that key, its buckets in
    memory or, with ``store``, in that Redis (SPEC 10: one round trip a request)."""
    key = secrets.token_hex(16)
    auth = API_KEY_POLICY.format(api_key=key)
    describe = "auth api_key + rate_limits key api_key"
    if store is None:
        return Policy("policies", auth + RATE_LIMITS.format(key="api_key"), {KEY_HEADER: key},
                      describe)  # fmt: skip
    limits = REDIS_RATE_LIMITS.format(store=store, key="api_key")
    return Policy("policies_redis", auth + limits, {KEY_HEADER: key}, describe + " in Redis")


def jwt_policy() -> Policy:
    """An HS256 JWT required on every method plus a rate limit keyed by its subject."""
    secret = secrets.token_hex(32)
    now = int(time.time())
    token = jwt.encode({"sub": "bench", "iat": now, "exp": now + TOKEN_SECONDS}, secret,
                       algorithm="HS256")  # fmt: skip
    return Policy(
        "jwt",
        JWT_POLICY.format(secret=secret) + RATE_LIMITS.format(key="subject"),
        {"authorization": f"Bearer {token}"},
        "auth jwt HS256 + rate_limits key subject",
    )


def start(policy: Policy, workdir: Path, backend_port: int, workers: int) -> Service:
    """Start a bridge with the policy's config in front of the backend."""
    return start_bridge(workdir, backend_port, workers, f"bridge-{policy.name}", policy.config)


def check(policy: Policy, url: str, body: bytes, plain: Answer) -> None:
    """BenchError unless the policy bridge refuses a bare call and answers like the plain one.

    Without this a bridge that ignored the policies would pass the scenario for free.
    """
    json_type = {"content-type": "application/json"}
    bare = post(url, body, json_type)
    if bare.status != 401:
        raise BenchError(f"the {policy.name} bridge answered a call without credentials "
                         f"{bare.status}, not 401: {bare.body[:200]!r}")  # fmt: skip
    allowed = post(url, body, {**json_type, **policy.headers})
    if allowed.status != 200 or json.loads(allowed.body) != json.loads(plain.body):
        raise BenchError(f"the {policy.name} bridge answered {allowed.status} "
                         f"{allowed.body[:200]!r}; the plain bridge "
                         f"{plain.body[:200]!r}")  # fmt: skip
    if "ratelimit-limit" not in allowed.headers:
        raise BenchError(f"the {policy.name} bridge's answer has no RateLimit-Limit header: "
                         "its rate limit is not applied")  # fmt: skip
