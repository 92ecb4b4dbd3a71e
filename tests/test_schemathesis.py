"""schemathesis against the live bridge and the example services: the document tells the truth.

Property-based requests generated from /openapi.json (a bounded number per operation, so the
run stays well under a minute): no answer is a 5xx, and every answer matches the status, content
type and schema the document declares for it. Raw bodies are fuzzed too: `EchoService/Upload`
is sent any bytes under any Content-Type, as its `*/*` request body says. Streaming operations
are left out: their bodies are NDJSON or SSE, which schemathesis does not read, and a stream may
run as long as its request asks (`Download`'s `lines`); they have their own functional tests
(tests/test_http_streaming.py, tests/test_http_body.py). So is `EchoService/Fail`, whose purpose
is to answer with the status code the request names, 5xx included (tests/test_http_errors.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from tests.conftest import demo_config  # noqa: E402

EXAMPLES = 15  # per operation: about 15 s in all
SKIPPED = {"demo.echo.v1.EchoService/Fail"}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def fuzz(url: str, document: dict[str, Any]) -> list[str]:
    """Run every unary operation; the failures, one line each (schemathesis' own messages)."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        grpc = operation.definition.raw.get("x-grpc", {})
        if grpc.get("kind", "unary") != "unary" or grpc.get("method") in SKIPPED:
            continue

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples every run: a failure is reproducible
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(base_url=url, checks=CHECKS, timeout=10)

        try:
            run()
        except Exception as error:  # one failing operation must not hide the others
            failures.append(f"{operation.label}: {str(error).strip().splitlines()[0]}")
    return failures


async def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    start_bridge, users_server, echo_server
):
    bridge = await start_bridge(demo_config(users_server, echo_server))
    status, document, _ = await bridge.json("GET", "/openapi.json")
    assert status == 200
    failures = await asyncio.to_thread(fuzz, bridge.url, document)
    assert failures == []
