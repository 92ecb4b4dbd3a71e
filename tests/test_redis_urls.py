"""A store's connection settings in its URL (SPEC 10), against real redis-servers: a password
(``redis://:secret@host:port/0``), TLS (``rediss://...?ssl_ca_certs=ca.pem``, the certificates
made here for 127.0.0.1) and a database number. Every store of a bridge (rate limits, cache,
registrations) uses the Redis the URL names; a wrong password or an unknown certificate is an
unreachable store (the bridge serves on from its own memory), never a crash; and the password
is in no log line, at any level, and not in /readyz.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.shared.buckets import PREFIX as BUCKETS
from bridge.shared.cache import PREFIX as CACHE
from bridge.shared.link import RedisLink, shown
from bridge.shared.registrations import REGISTRATIONS
from tests.conftest import PROTOS, Bridge, StartBridge, demo_config
from tests.instances import instances
from tests.redis_server import RedisServer, Tls
from tests.test_workers import PROTO

SECRET = "pa55-Redis-s3cret"
TOKEN = "admin-token"
BURST = 4
ECHO = "demo.echo.v1.EchoService/Echo"
# A registration of its own: a service the demo protos lack, so the echo backend answers 501.
OTHER = PROTO.replace("demo.echo.v1", "demo.other.v1").replace("/v2/echo/", "/v3/other/")
ROUTED = 501


def certificates(folder: Path) -> Tls:
    """A new CA, and a server certificate for 127.0.0.1 it signs, written into ``folder``."""
    folder.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {folder.name}")])

    def signed(builder: x509.CertificateBuilder) -> x509.Certificate:
        return (
            builder.issuer_name(ca_name)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(ca_key, hashes.SHA256())
        )

    ca = signed(
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .public_key(ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
    )
    server = signed(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .public_key(key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    tls = Tls(cert=folder / "cert.pem", key=folder / "key.pem", ca=folder / "ca.pem")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


async def running(server: RedisServer) -> AsyncIterator[RedisServer]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def with_password() -> AsyncIterator[RedisServer]:
    async for server in running(RedisServer(password=SECRET)):
        yield server


@pytest.fixture
async def with_tls(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async for server in running(RedisServer(tls=certificates(tmp_path / "tls"))):
        yield server


@pytest.fixture
async def plain() -> AsyncIterator[RedisServer]:
    async for server in running(RedisServer()):
        yield server


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG (the bridge's, redis-py's, aiohttp's, asyncio's)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def config(store: str, echo: int) -> dict[str, Any]:
    """Every store of the bridge on ``store``: rate limits, cache, registrations."""
    return demo_config(
        echo_port=echo,
        services={"demo.*": "echo"},  # users too: only echo is called
        admin={"token": TOKEN},
        protos={"include": [str(PROTOS)], "store": store},
        rate_limits={
            "store": store,
            "rules": [{"match": ECHO, "key": "ip", "rate": "0.01/s", "burst": BURST}],
        },
        cache={
            "store": store,
            "rules": [{"match": "demo.echo.v1.EchoService/GetStats", "ttl": "30s"}],
        },
    )


async def echoes(bridges: list[Bridge], count: int) -> int:
    """``count`` rate-limited calls, round robin over ``bridges``: how many passed."""
    passed = 0
    for i in range(count):
        async with bridges[i % len(bridges)].request("GET", f"/v1/echo/m{i}") as resp:
            assert resp.status in (200, 429), await resp.text()
            passed += resp.status == 200
    return passed


async def register(bridge: Bridge) -> tuple[int, Any]:
    body = {"name": "other", "files": {"other/other.proto": OTHER}, "upstream": "echo"}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    status, answer, _ = await bridge.json("POST", "/admin/protos", json=body, headers=headers)
    return status, answer


async def store_detail(bridge: Bridge) -> tuple[str, dict[str, Any]]:
    """/readyz's one store: how it names it, and what it says of it (the secret in neither)."""
    status, body, _ = await bridge.json("GET", "/readyz")
    assert status == 200
    assert SECRET not in json.dumps(body)
    [(name, detail)] = body["stores"].items()
    return name, detail


async def keys(server: RedisServer, pattern: str, db: int = 0) -> list[bytes]:
    client = server.client(db)
    try:
        return sorted([key async for key in client.scan_iter(match=pattern)])
    finally:
        await client.aclose()


def secret_free(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, checked for the secret; the text, for what else a test looks for."""
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert SECRET not in text
    return caplog.text


async def test_a_password_protected_redis_serves_every_store_and_the_password_stays_hidden(
    with_password: RedisServer, start_bridge: StartBridge, echo_server: int,
    logged: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bridge = await start_bridge(config(with_password.url, echo_server))
    assert await echoes([bridge], BURST + 2) == BURST
    for expected in ("MISS", "HIT"):
        async with bridge.request("GET", "/v1/stats") as resp:
            assert (resp.status, resp.headers["X-Cache"]) == (200, expected)
    assert (await register(bridge))[0] == 201
    assert await keys(with_password, BUCKETS + "*")
    assert await keys(with_password, CACHE + "*")
    client = with_password.client()
    try:
        assert await client.hexists(REGISTRATIONS, "other")
    finally:
        await client.aclose()
    name, detail = await store_detail(bridge)
    assert name == detail["store"] == f"redis://***@127.0.0.1:{with_password.port}/0"
    assert detail["reachable"] is True
    assert "unreachable" not in secret_free(logged)


async def test_a_wrong_password_is_an_unreachable_store_said_once_without_the_password(
    with_password: RedisServer, start_bridge: StartBridge, echo_server: int,
    logged: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    wrong = with_password.url.replace(SECRET, "not-" + SECRET)  # what hides SECRET hides it
    bridge = await start_bridge(config(wrong, echo_server))
    assert await echoes([bridge], BURST + 2) == BURST  # this instance's own bucket
    for _ in range(2):
        async with bridge.request("GET", "/v1/stats") as resp:
            assert resp.status == 200
    status, refused = await register(bridge)
    assert status == 503 and SECRET not in json.dumps(refused)  # it could not be shared
    _, detail = await store_detail(bridge)
    assert detail["reachable"] is False
    assert "invalid username-password pair" in detail["error"], detail
    assert await keys(with_password, "*") == []
    text = secret_free(logged)
    assert text.count("is unreachable") == 1, text


async def test_tls_with_the_ca_in_the_url_shares_rate_limits_and_registrations(
    with_tls: RedisServer, start_bridge: StartBridge, echo_server: int
) -> None:
    assert with_tls.url.startswith("rediss://") and "ssl_ca_certs=" in with_tls.url
    bridges = [await start_bridge(config(with_tls.url, echo_server)) for _ in range(2)]
    assert await echoes(bridges, 2 * BURST) == BURST  # one bucket for both
    assert len(await keys(with_tls, BUCKETS + "*")) == 1
    assert (await register(bridges[0]))[0] == 201
    deadline = time.monotonic() + 1  # heard through pub/sub on a TLS connection of its own
    while (await bridges[1].json("GET", "/v3/other/hi"))[0] != ROUTED:
        assert time.monotonic() < deadline, "the registration did not reach the other bridge"
        await asyncio.sleep(0.02)
    name, detail = await store_detail(bridges[0])
    assert name == with_tls.url and detail["reachable"] is True


@pytest.mark.parametrize(
    ("ca", "error"), [("other", "certificate verify failed"), ("missing", "No such file")]
)
async def test_tls_with_a_ca_that_did_not_sign_or_is_missing_is_unreachable_not_a_crash(
    with_tls: RedisServer, start_bridge: StartBridge, echo_server: int, tmp_path: Path,
    logged: pytest.LogCaptureFixture, ca: str, error: str,
) -> None:  # fmt: skip
    ca_file = certificates(tmp_path / ca).ca if ca == "other" else tmp_path / "missing.pem"
    url = f"rediss://127.0.0.1:{with_tls.port}/0?ssl_ca_certs={ca_file}"
    bridge = await start_bridge(config(url, echo_server))
    assert await echoes([bridge], BURST + 2) == BURST
    async with bridge.request("GET", "/v1/stats") as resp:
        assert resp.status == 200
    _, detail = await store_detail(bridge)
    assert detail["reachable"] is False
    assert error in detail["error"], detail
    assert await keys(with_tls, "*") == []
    assert logged.text.count("is unreachable") == 1, logged.text


async def test_connections_opened_at_once_on_a_fresh_tls_link_all_connect(
    with_tls: RedisServer,
) -> None:
    """One SSL context for the pool: one per connection (redis-py's own way, ~60 ms of CPU
    each within the connect timeout) made four calls at once time out one of them."""
    link = RedisLink(with_tls.url)
    try:
        await asyncio.gather(*(link.client.incr("n") for _ in range(32)))
        assert int(await link.client.get("n")) == 32
    finally:
        await link.close()


async def test_the_database_number_is_where_the_keys_go(
    plain: RedisServer, start_bridge: StartBridge, echo_server: int
) -> None:
    url = f"redis://127.0.0.1:{plain.port}/3"
    bridge = await start_bridge(config(url, echo_server))
    assert await echoes([bridge], 2) == 2
    async with bridge.request("GET", "/v1/stats") as resp:
        assert resp.status == 200
    assert (await register(bridge))[0] == 201
    in_3 = await keys(plain, "bridge:*", db=3)
    assert {key.split(b":")[1] for key in in_3} == {b"rl", b"cache", b"protos"}, in_3
    assert await keys(plain, "*", db=0) == []


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:1/0",
        "redis://someone:hunter2@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=hunter2",  # redis-py takes it from the query too
        "rediss://127.0.0.1:1/0?ssl_ca_certs=/ca.pem&ssl_password=hunter2",  # the key file's
    ],
)
def test_a_password_anywhere_in_the_url_is_masked(url: str) -> None:
    assert "hunter2" not in shown(url)
    assert "127.0.0.1:1/0" in shown(url)


async def test_bridge_serve_on_a_password_protected_redis_never_prints_the_password(
    with_password: RedisServer, echo_server: int, tmp_path: Path
) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config(with_password.url, echo_server)))
    async with instances(path, 1) as [instance], aiohttp.ClientSession() as http:
        async with http.get(instance.url + "/readyz") as resp:
            body = await resp.text()
        assert SECRET not in body and '"reachable": true' in body, body
        for i in range(BURST + 1):
            async with http.get(f"{instance.url}/v1/echo/m{i}") as resp:
                assert resp.status == (200 if i < BURST else 429)
    assert await keys(with_password, BUCKETS + "*")
    text = "".join(instance.log)
    assert "RESOURCE_EXHAUSTED" in text  # the access log, among the rest
    assert SECRET not in text
