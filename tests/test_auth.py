"""Authentication over real HTTP and WebSocket (SPEC 6): a bridge with an `auth` config in front
of the example services, real tokens (tests/tokens.py), a JWKS file rotated while it runs."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
import pytest

from tests.conftest import Bridge, StartBridge, demo_config
from tests.tokens import (
    AUDIENCE,
    ISSUER,
    SECRET,
    Keys,
    claims,
    confusion,
    jwk,
    new_keys,
    relative,
    rs256,
    standard_jwks,
    write_jwks,
)
from tests.ws_client import connect, messages, status

ALICE_KEY: Final = "alice-key-0123456789"
ANONYMOUS_KEY: Final = "anonymous-key-9876543210"
ANONYMOUS: Final = "apikey-" + hashlib.sha256(ANONYMOUS_KEY.encode()).hexdigest()[:8]
ADMIN_TOKEN: Final = "admin-token-for-the-tests"
BOTH: Final = 'Bearer realm="bridge", ApiKey realm="bridge", header="x-api-key"'
INVALID: Final = 'Bearer realm="bridge", error="invalid_token"'
RULES: Final = [
    {"match": "demo.echo.v1.EchoService/Echo", "require": "any"},
    {"match": "demo.echo.v1.EchoService/Fail", "require": "jwt", "scopes": ["admin"]},
    {"match": "demo.echo.v1.EchoService/GetStats", "require": "api_key"},
    {"match": "demo.echo.v1.EchoService/Tick", "require": "none"},
]  # the rest (users, Sum, Chat...) match no rule: they need a credential of either kind


@pytest.fixture(scope="module")
def keys() -> Keys:
    return new_keys()


def auth_config(jwks: Path, rules: list[dict[str, Any]] = RULES) -> dict[str, Any]:
    return {
        "api_keys": {"header": "x-api-key", "keys": f"alice={ALICE_KEY},{ANONYMOUS_KEY}"},
        "jwt": {
            "issuer": ISSUER, "audience": [AUDIENCE], "secret": SECRET, "jwks_file": str(jwks),
            "algorithms": ["RS256", "ES256", "HS256"], "leeway": "0s",
        },
        "rules": rules,
    }  # fmt: skip


@pytest.fixture
async def bridge(start_bridge: StartBridge, users_server, echo_server, tmp_path, keys) -> Bridge:
    jwks = standard_jwks(tmp_path / "jwks.json", keys)
    config = demo_config(users_server, echo_server, auth=auth_config(jwks))
    return await start_bridge({**config, "admin": {"token": ADMIN_TOKEN}})


def key(value: str) -> dict[str, str]:
    return {"x-api-key": value}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def echo(bridge: Bridge, headers: dict[str, str]) -> tuple[int, Any, Any]:
    return await bridge.json("POST", "/v1/echo", json={"message": "hi"}, headers=headers)


# --- REST ------------------------------------------------------------------------------------


async def test_no_credential_is_401_with_a_challenge_for_each_kind(bridge):
    status_code, body, headers = await echo(bridge, {})
    assert (status_code, body["code"], headers["WWW-Authenticate"]) == (401, 16, BOTH)
    assert "needs an API key in the x-api-key header or a bearer token" in body["message"]


@pytest.mark.parametrize(
    ("headers", "subject"),
    [
        pytest.param(key(ALICE_KEY), "alice", id="api-key-with-subject"),
        pytest.param(key(ANONYMOUS_KEY), ANONYMOUS, id="api-key-without-subject"),
        pytest.param("rs256", "user-1", id="rs256"),
        pytest.param("es256", "user-1", id="es256"),
        pytest.param("hs256", "user-1", id="hs256"),
    ],
)
async def test_a_good_credential_reaches_the_backend_as_its_subject(bridge, keys, headers, subject):
    if isinstance(headers, str):
        token = {
            "rs256": lambda: rs256()(keys),
            "es256": lambda: jwt.encode(claims(), keys.ec, "ES256", headers={"kid": "e1"}),
            "hs256": lambda: jwt.encode(claims(), SECRET, "HS256"),
        }[headers]()
        headers = bearer(token)
    status_code, body, _ = await echo(bridge, headers)
    assert status_code == 200, body
    assert body["metadata"]["x-bridge-subject"] == subject


BAD_TOKENS: Final = [
    pytest.param(relative(exp=-60), "token expired", id="expired"),
    pytest.param(relative(nbf=60), "not valid yet", id="not-yet-valid"),
    pytest.param(rs256(claims(iss="https://evil.test")), "wrong issuer", id="wrong-issuer"),
    pytest.param(rs256(claims(aud="someone-else")), "wrong audience", id="wrong-audience"),
    pytest.param(lambda k: jwt.encode(claims(), k.other_rsa, "RS256", headers={"kid": "r1"}),
                 "bad signature", id="bad-signature"),
    pytest.param(lambda k: jwt.encode(claims(), None, "none"), "algorithm none is not allowed",
                 id="alg-none"),
    pytest.param(lambda k: jwt.encode(claims(), k.rsa, "PS256", headers={"kid": "r1"}),
                 "algorithm PS256 is not allowed", id="algorithm-not-listed"),
    pytest.param(confusion, "bad signature", id="hs256-signed-with-the-rsa-public-key"),
    pytest.param(rs256(kid="k2"), "unknown key id 'k2'", id="unknown-kid"),
    pytest.param(lambda k: "garbage", "malformed token", id="garbage"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "reason"), BAD_TOKENS)
async def test_a_bad_token_is_401_saying_why(bridge, keys, make, reason):
    token = make(keys)
    status_code, body, headers = await echo(bridge, bearer(token))
    assert (status_code, body["code"], reason in body["message"]) == (401, 16, True), body
    assert headers["WWW-Authenticate"].startswith(INVALID)
    assert token not in body["message"]


async def test_a_bad_api_key_is_401(bridge):
    status_code, body, headers = await echo(bridge, key("not-a-key-0123456789"))
    assert (status_code, body["message"]) == (401, "unknown API key in the x-api-key header")
    assert headers["WWW-Authenticate"] == BOTH


async def test_a_token_without_the_scope_is_403_and_with_it_passes(bridge, keys):
    status_code, body, _ = await bridge.json("GET", "/v1/fail/0", headers=bearer(rs256()(keys)))
    assert (status_code, body["code"], body["message"]) == (
        403, 7, "the credential lacks the scope 'admin'"
    )  # fmt: skip
    admin = bearer(rs256(claims(scope="read admin"))(keys))
    assert (await bridge.json("GET", "/v1/fail/0", headers=admin))[0] == 200
    assert (await bridge.json("GET", "/v1/fail/0", headers=key(ALICE_KEY)))[0] == 401


async def test_each_rule_takes_its_own_kind_and_unmatched_methods_need_one(bridge, keys):
    token = bearer(rs256()(keys))
    assert (await bridge.json("GET", "/v1/stats", headers=key(ALICE_KEY)))[0] == 200
    status_code, _, headers = await bridge.json("GET", "/v1/stats", headers=token)
    assert status_code == 401
    assert headers["WWW-Authenticate"] == 'ApiKey realm="bridge", header="x-api-key"'
    async with bridge.request("GET", "/v1/ticks?count=1") as resp:
        assert resp.status == 200  # require: none
    assert (await bridge.json("GET", "/v1/users/1"))[0] == 401  # matches no rule
    assert (await bridge.json("GET", "/v1/users/1", headers=token))[0] in (200, 404)


@pytest.mark.parametrize(
    "spoof",
    [
        pytest.param({"x-bridge-subject": "root"}, id="header"),
        pytest.param({"Grpc-Metadata-x-bridge-subject": "root"}, id="grpc-metadata-header"),
    ],
)
async def test_a_client_cannot_set_the_subject(start_bridge, users_server, echo_server, tmp_path,
                                               keys, spoof):  # fmt: skip
    jwks = standard_jwks(tmp_path / "jwks.json", keys)
    rules = [{"match": "demo.echo.v1.EchoService/Echo", "require": "none"}, *RULES]
    ports = (users_server, echo_server)
    open_echo = await start_bridge(demo_config(*ports, auth=auth_config(jwks, rules)))
    _, body, _ = await echo(open_echo, spoof)
    assert "x-bridge-subject" not in body["metadata"]
    _, body, _ = await echo(open_echo, {**spoof, **key(ALICE_KEY)})
    assert "x-bridge-subject" not in body["metadata"]  # an open method proves no one
    guarded = await start_bridge(demo_config(*ports, auth=auth_config(jwks)))
    _, body, _ = await echo(guarded, {**spoof, **key(ALICE_KEY)})
    assert body["metadata"]["x-bridge-subject"] == "alice"


async def test_a_rotated_jwks_file_is_used_while_the_bridge_runs(bridge, keys, tmp_path):
    old = rs256()(keys)
    new = jwt.encode(claims(sub="user-2"), keys.other_rsa, "RS256", headers={"kid": "r2"})
    assert (await echo(bridge, bearer(old)))[0] == 200
    assert (await echo(bridge, bearer(new)))[1]["message"] == "unknown key id 'r2'"
    write_jwks(tmp_path / "jwks.json", jwk(keys.other_rsa.public_key(), "r2"))
    deadline = time.monotonic() + 5
    while (await echo(bridge, bearer(new)))[0] != 200:
        assert time.monotonic() < deadline, "the new key was not picked up within 5 s"
        await asyncio.sleep(0.1)
    status_code, body, _ = await echo(bridge, bearer(old))
    assert (status_code, body["message"]) == (401, "unknown key id 'r1'")  # retired at once


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(key(ALICE_KEY), id="api-key"),
        pytest.param("token", id="end-user-jwt"),
        pytest.param("admin-scope-jwt", id="end-user-jwt-with-admin-scope"),
    ],
)
async def test_no_end_user_credential_opens_the_admin_api(bridge, keys, headers):
    if headers == "token":
        headers = bearer(rs256()(keys))
    elif headers == "admin-scope-jwt":
        headers = bearer(rs256(claims(scope="admin"))(keys))
    status_code, _, response_headers = await bridge.json("GET", "/admin/protos", headers=headers)
    assert status_code == 401
    assert response_headers["WWW-Authenticate"] == 'Bearer realm="bridge-admin"'
    assert (await bridge.json("GET", "/admin/protos", headers=bearer(ADMIN_TOKEN)))[0] == 200


# --- WebSocket -------------------------------------------------------------------------------

ECHO_MESSAGE: Final = {"message": "hi"}


async def test_ws_credentials_at_the_upgrade_header_and_query(bridge, keys):
    async with connect(bridge.url, headers=key(ALICE_KEY)) as ws:
        [reply] = messages(await ws.call(1, "Echo", ECHO_MESSAGE))
        assert reply["metadata"]["x-bridge-subject"] == "alice"
    token = rs256(claims(sub="browser-user"))(keys)
    async with connect(bridge.url, params={"access_token": token}) as ws:
        [reply] = messages(await ws.call(1, "Echo", ECHO_MESSAGE))
        assert reply["metadata"]["x-bridge-subject"] == "browser-user"


async def test_ws_an_api_key_in_the_upgrade_query_under_the_headers_name(bridge):
    async with connect(bridge.url, params=key(ALICE_KEY)) as ws:  # /ws?x-api-key=... (browsers)
        assert status(await ws.call("stats", "GetStats", {}))["code"] == 0  # require: api_key
        [reply] = messages(await ws.call(1, "Echo", ECHO_MESSAGE))
        assert reply["metadata"]["x-bridge-subject"] == "alice"
    # A header sent wins over the query, as for access_token.
    async with connect(bridge.url, headers=key(ANONYMOUS_KEY), params=key(ALICE_KEY)) as ws:
        [reply] = messages(await ws.call(1, "Echo", ECHO_MESSAGE))
        assert reply["metadata"]["x-bridge-subject"] == ANONYMOUS


async def test_rest_takes_no_api_key_from_the_query(bridge):
    status_code, body, _ = await bridge.json("GET", "/v1/stats", params=key(ALICE_KEY))
    assert (status_code, body["code"]) == (400, 3)  # an unknown parameter, never a credential
    assert "'x-api-key'" in body["message"] and ALICE_KEY not in body["message"]
    assert (await bridge.json("GET", "/v1/stats", headers=key(ALICE_KEY)))[0] == 200


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"headers": bearer("garbage")}, id="bad-bearer-header"),
        pytest.param({"params": {"access_token": "garbage"}}, id="bad-query-token"),
        pytest.param({"params": key("not-a-key-0123456789")}, id="bad-query-api-key"),
        pytest.param({"headers": key("not-a-key-0123456789")}, id="bad-api-key"),
    ],
)
async def test_ws_a_bad_credential_at_the_upgrade_is_401(bridge, credentials):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(bridge.url + "/ws", **credentials)
    assert caught.value.status == 401
    assert "WWW-Authenticate" in (caught.value.headers or {})


async def test_ws_each_call_is_checked_against_its_own_rule(bridge, keys):
    token = rs256(claims(scope="read"))(keys)
    async with connect(bridge.url, headers=bearer(token)) as ws:
        await ws.start("fail", "Fail", {"code": 0})  # needs the admin scope
        await ws.start("stats", "GetStats", {})  # needs an API key
        await ws.start("echo", "Echo", ECHO_MESSAGE)  # any credential
        denied = status(await ws.until_status("fail"))
        assert (denied["code"], denied["message"]) == (7, "the credential lacks the scope 'admin'")
        assert status(await ws.until_status("stats"))["code"] == 16
        assert status(await ws.until_status("echo"))["code"] == 0


async def test_ws_with_a_key_and_a_token_each_rule_takes_its_kind(bridge, keys):
    both = {**key(ALICE_KEY), **bearer(rs256()(keys))}
    async with connect(bridge.url, headers=both) as ws:
        assert status(await ws.call("stats", "GetStats", {}))["code"] == 0  # api_key: the key
        [reply] = messages(await ws.call("echo", "Echo", ECHO_MESSAGE))
        assert reply["metadata"]["x-bridge-subject"] == "user-1"  # any: the token wins


async def test_ws_without_credentials_only_open_methods_answer(bridge):
    async with connect(bridge.url) as ws:
        frames = await ws.call("echo", "Echo", ECHO_MESSAGE)
        assert status(frames)["code"] == 16 and "needs an API key" in status(frames)["message"]
        assert status(await ws.call("tick", "Tick", {"count": 1}))["code"] == 0


async def test_ws_frame_metadata_cannot_set_the_subject(bridge):
    async with connect(bridge.url, headers=key(ALICE_KEY)) as ws:
        frames = await ws.call(1, "Echo", ECHO_MESSAGE, metadata={"x-bridge-subject": "root"})
        [reply] = messages(frames)
        assert reply["metadata"]["x-bridge-subject"] == "alice"


async def test_ws_a_token_that_expires_mid_socket_stops_working(bridge, keys):
    expires = int(time.time()) + 2
    async with connect(bridge.url, headers=bearer(rs256(claims(exp=expires))(keys))) as ws:
        assert status(await ws.call(1, "Echo", ECHO_MESSAGE))["code"] == 0
        await asyncio.sleep(expires - time.time() + 0.1)
        late = status(await ws.call(2, "Echo", ECHO_MESSAGE))
        assert (late["code"], late["message"]) == (16, "token expired")
        assert status(await ws.call(3, "Tick", {"count": 1}))["code"] == 0  # open: still fine
