"""Run-time registrations: hot swap, replacement, removal, persistence, concurrent registrations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml

from bridge.app import start
from bridge.config import load_settings
from bridge.registry.store import FileStore, Registration
from tests.conftest import Bridge, StartBridge, demo_config
from tests.teams import TOKEN, TeamServer, admin, admin_config, register

SLOW_V1: Final = """\
syntax = "proto3";
package acme.slow.v1;
import "google/api/annotations.proto";
message WaitRequest { string id = 1; int32 ms = 2; }
message WaitReply { string id = 1; }
service Slow {
  rpc Wait(WaitRequest) returns (WaitReply) {
    option (google.api.http) = { get: "/v1/waits/{id}" };
  }
}
"""

# The same package changed: the route renamed, a field added to the reply, a method added.
SLOW_V2: Final = """\
syntax = "proto3";
package acme.slow.v1;
import "google/api/annotations.proto";
message WaitRequest { string id = 1; int32 ms = 2; }
message WaitReply { string id = 1; int32 version = 2; }
message PingRequest {}
message PingReply { string pong = 1; }
service Slow {
  rpc Wait(WaitRequest) returns (WaitReply) {
    option (google.api.http) = { get: "/v2/waits/{id}" };
  }
  rpc Ping(PingRequest) returns (PingReply) {
    option (google.api.http) = { get: "/v2/ping" };
  }
}
"""

SLOW_FILE: Final = "acme/slow/v1/slow.proto"


@pytest.fixture
async def team(tmp_path: Path) -> AsyncIterator[TeamServer]:
    server = await TeamServer(tmp_path / "team").start()
    yield server
    await server.stop()


async def test_calls_in_flight_finish_on_their_snapshot_while_a_replacement_goes_live(
    start_bridge: StartBridge, team: TeamServer
):
    started = asyncio.Event()

    async def wait(request: Any, context: Any) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(request.ms / 1000)
        return {"id": request.id, "version": 2}

    async def ping(request: Any, context: Any) -> dict[str, Any]:
        return {"pong": "v2"}

    # The backend already runs the new version (a superset of the old).
    await team.deploy(
        {SLOW_FILE: SLOW_V2}, {"acme.slow.v1.Slow/Wait": wait, "acme.slow.v1.Slow/Ping": ping}
    )
    bridge = await start_bridge(admin_config())
    assert (await register(bridge, "slow", {SLOW_FILE: SLOW_V1}, team.target))[0] == 201

    in_flight = asyncio.create_task(bridge.json("GET", "/v1/waits/a?ms=1000"))
    await asyncio.wait_for(started.wait(), 5)
    status, reply = await register(bridge, "slow", {SLOW_FILE: SLOW_V2}, team.target)
    assert status == 200, reply
    assert not in_flight.done(), "the replacement must not wait for calls in flight"
    assert {"method": "acme.slow.v1.Slow/Ping", "verb": "GET", "path": "/v2/ping"} in reply[
        "routes"
    ]

    status, body, _ = await bridge.json("GET", "/v2/ping")
    assert (status, body) == (200, {"pong": "v2"})
    status, body, _ = await bridge.json("GET", "/v2/waits/b?ms=0")
    assert (status, body) == (200, {"id": "b", "version": 2})
    status, body, _ = await bridge.json("GET", "/v1/waits/c?ms=0")
    assert (status, body["code"]) == (404, 5), body

    # The call in flight ends normally, rendered with the message types it started with.
    status, body, _ = await in_flight
    assert (status, body) == (200, {"id": "a"})


async def test_the_same_package_can_be_registered_again_with_other_content(
    start_bridge: StartBridge, team: TeamServer
):
    async def wait(request: Any, context: Any) -> dict[str, Any]:
        return {"id": request.id, "version": 2}

    await team.deploy({SLOW_FILE: SLOW_V2}, {"acme.slow.v1.Slow/Wait": wait})
    bridge = await start_bridge(admin_config())
    assert (await register(bridge, "slow-a", {SLOW_FILE: SLOW_V1}, team.target))[0] == 201
    assert (await admin(bridge, "DELETE", "/admin/protos/slow-a"))[0] == 200
    status, reply = await register(bridge, "slow-b", {SLOW_FILE: SLOW_V2}, team.target)
    assert status == 201, reply
    status, body, _ = await bridge.json("GET", "/v2/waits/x")
    assert (status, body) == (200, {"id": "x", "version": 2})
    status, body, _ = await bridge.json("GET", "/v1/waits/x")
    assert status == 404, body


def item_service(team_name: str) -> str:
    return f"""\
syntax = "proto3";
package acme.{team_name}.v1;
import "google/api/annotations.proto";
message Req {{ string id = 1; }}
message Rep {{ string id = 1; string team = 2; }}
service Api {{
  rpc Get(Req) returns (Rep) {{
    option (google.api.http) = {{ get: "/{team_name}/items/{{id}}" }};
  }}
  rpc Put(Req) returns (Rep) {{
    option (google.api.http) = {{ put: "/{team_name}/items/{{id}}" body: "*" }};
  }}
}}
"""


async def deploy_teams(
    server: TeamServer,
    names: list[str],
    more_files: dict[str, str] | None = None,
    more_handlers: dict[str, Any] | None = None,
) -> dict[str, dict[str, str]]:
    """Serve acme.<name>.v1.Api for every name (and more) from one server; return their files."""
    files = {name: {f"acme/{name}/v1/api.proto": item_service(name)} for name in names}

    def answer(name: str):  # type: ignore[no-untyped-def]
        async def handler(request: Any, context: Any) -> dict[str, Any]:
            return {"id": request.id, "team": name}

        return handler

    handlers = {f"acme.{n}.v1.Api/{m}": answer(n) for n in names for m in ("Get", "Put")}
    all_files = {k: v for f in files.values() for k, v in f.items()}
    await server.deploy({**all_files, **(more_files or {})}, {**handlers, **(more_handlers or {})})
    return files


async def test_removal_takes_the_routes_away(
    start_bridge: StartBridge, team: TeamServer, tmp_path: Path
):
    files = await deploy_teams(team, ["red", "blue"])
    bridge = await start_bridge(admin_config(tmp_path / "store"))
    for name in ("red", "blue"):
        assert (await register(bridge, name, files[name], team.target))[0] == 201
    assert (await bridge.json("GET", "/red/items/1"))[0] == 200

    assert await admin(bridge, "DELETE", "/admin/protos/red") == (
        200,
        {"name": "red", "removed": True},
    )
    for verb, path in [
        ("GET", "/red/items/1"),
        ("PUT", "/red/items/1"),
        ("POST", "/acme.red.v1.Api/Get"),
    ]:
        status, body, _ = await bridge.json(verb, path, json={})
        assert (status, body["code"]) == (404, 5), (verb, path, body)
    status, body, _ = await bridge.json("GET", "/blue/items/2")
    assert (status, body) == (200, {"id": "2", "team": "blue"})

    _, listing = await admin(bridge, "GET", "/admin/protos")
    assert [p["name"] for p in listing["protos"]] == ["blue"]
    _, table = await admin(bridge, "GET", "/admin/routes")
    assert not [r for r in table["routes"] if r["source"] == "red"]
    assert (await admin(bridge, "GET", "/admin/protos/red"))[0] == 404
    assert not (tmp_path / "store" / "red.json").exists()
    status, body = await admin(bridge, "DELETE", "/admin/protos/red")
    assert (status, body["code"]) == (404, 5)


@contextlib.asynccontextmanager
async def serving(config: dict[str, Any], path: Path) -> AsyncIterator[Bridge]:
    """One bridge process's life, from start to a clean stop: a restart is two of these."""
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    runner, port = await start(settings, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Bridge(f"http://127.0.0.1:{port}", settings, session)
    finally:
        await runner.cleanup()


MONEY: Final = """\
syntax = "proto3";
package acme.money.v1;
message Money { string currency = 1; int64 units = 2; }
"""

WALLET: Final = """\
syntax = "proto3";
package acme.wallet.v1;
import "google/api/annotations.proto";
import "acme/money/v1/money.proto";
message GetWalletRequest { string id = 1; }
message Wallet { string id = 1; acme.money.v1.Money balance = 2; }
service WalletService {
  rpc GetWallet(GetWalletRequest) returns (Wallet) {
    option (google.api.http) = { get: "/v1/wallets/{id}" };
  }
}
"""


async def test_registrations_persist_and_are_live_after_a_restart(
    team: TeamServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    async def get_wallet(request: Any, context: Any) -> dict[str, Any]:
        return {"id": request.id, "balance": {"currency": "EUR", "units": "5"}}

    wallet_files = {"acme/money/v1/money.proto": MONEY, "acme/wallet/v1/wallet.proto": WALLET}
    colors = await deploy_teams(
        team, ["green"], wallet_files, {"acme.wallet.v1.WalletService/GetWallet": get_wallet}
    )
    store = tmp_path / "store"
    config = admin_config(store, upstreams={"team": {"targets": [team.target]}})

    async with serving(config, tmp_path / "first.yaml") as bridge:
        # 'alpha' imports a file only 'zeta' uploaded: it must come back after it, not first.
        assert (await register(bridge, "zeta", {"acme/money/v1/money.proto": MONEY}, team.target))[
            0
        ] == 201
        alpha = {"acme/wallet/v1/wallet.proto": WALLET}
        assert (await register(bridge, "alpha", alpha, upstream="team"))[0] == 201
        assert (await register(bridge, "green", colors["green"], team.target))[0] == 201
        assert (await bridge.json("GET", "/v1/wallets/w1"))[0] == 200

    assert sorted(os.listdir(store)) == ["alpha.json", "green.json", "zeta.json"]  # no temp files
    stored = json.loads((store / "alpha.json").read_text())
    assert stored == {"name": "alpha", "files": alpha, "upstream": "team"}

    (store / "broken.json").write_text('{"name": "broken", "files": {')
    (store / "wrong.json").write_text('{"name": "wrong", "files": ["not", "a", "map"]}')
    (store / "bad-proto.json").write_text(
        json.dumps(
            {
                "name": "bad-proto",
                "targets": [team.target],
                "files": {"acme/bad/v1/bad.proto": 'syntax = "proto3";\nmessage {\n'},
            }
        )
    )

    with caplog.at_level(logging.ERROR, logger="bridge.registry"):
        async with serving(config, tmp_path / "second.yaml") as bridge:
            status, body, _ = await bridge.json("GET", "/v1/wallets/w2")
            assert (status, body) == (
                200,
                {"id": "w2", "balance": {"currency": "EUR", "units": "5"}},
            )
            status, body, _ = await bridge.json("GET", "/green/items/g")
            assert (status, body) == (200, {"id": "g", "team": "green"})
            _, listing = await admin(bridge, "GET", "/admin/protos")
            assert [p["name"] for p in listing["protos"]] == ["alpha", "green", "zeta"]
    reported = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("broken.json", "wrong.json", "bad-proto"):
        assert name in reported, reported


async def test_a_file_that_others_import_is_not_taken_away(
    start_bridge: StartBridge, tmp_path: Path
):
    bridge = await start_bridge(admin_config(tmp_path / "store"))
    target = "127.0.0.1:1"
    assert (await register(bridge, "money", {"acme/money/v1/money.proto": MONEY}, target))[0] == 201
    wallet = {"acme/wallet/v1/wallet.proto": WALLET}
    assert (await register(bridge, "wallet", wallet, target))[0] == 201

    # The wallet's stored sources lack money.proto: without it, it would not survive a restart.
    cash = {"acme/money/v1/cash.proto": MONEY.replace("Money", "Cash")}
    for status, body in [
        await admin(bridge, "DELETE", "/admin/protos/money"),
        await register(bridge, "money", cash, target),
    ]:
        assert (status, body.get("code")) == (400, 9), body
        assert "'wallet'" in body["message"] and "'money'" in body["message"], body
    assert (await bridge.json("GET", "/v1/wallets/w"))[0] == 503  # still routed (no backend)

    assert (await admin(bridge, "DELETE", "/admin/protos/wallet"))[0] == 200
    assert (await admin(bridge, "DELETE", "/admin/protos/money"))[0] == 200


def test_the_store_writes_then_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = FileStore(tmp_path / "store")
    first = Registration("team", {"a.proto": 'syntax = "proto3";\n'}, targets=("127.0.0.1:1",))
    store.save(first)
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        renames.append((src, str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    second = Registration("team", {"a.proto": 'syntax = "proto2";\n'}, targets=("127.0.0.1:1",))
    store.save(second)
    [(src, dst)] = renames
    assert Path(src).parent == store.folder and dst == str(store.folder / "team.json")
    assert list(store.listing().registrations) == [second]

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        store.save(first)
    assert list(store.listing().registrations) == [second]  # the previous version is intact
    assert os.listdir(store.folder) == ["team.json"]  # and no half-written file is left


async def test_twenty_racing_registrations_with_live_traffic(
    start_bridge: StartBridge, echo_server: int, team: TeamServer, tmp_path: Path
):
    names = [f"t{i:02}" for i in range(20)]
    files = await deploy_teams(team, names)
    config = demo_config(
        1, echo_server, admin={"token": TOKEN}, protos={"store": str(tmp_path / "s")}
    )
    config["protos"]["include"] = demo_config()["protos"]["include"]
    bridge = await start_bridge(config)
    done = asyncio.Event()
    traffic: list[int] = []
    half_built: list[dict[str, int]] = []

    async def keep_calling() -> None:
        while not done.is_set():
            status, body, _ = await bridge.json("GET", "/v1/echo/live")
            traffic.append(status if body.get("message") == "live" else -status)

    async def keep_looking() -> None:
        # A registration's routes appear all together or not at all.
        while not done.is_set():
            _, table = await admin(bridge, "GET", "/admin/routes")
            counts = {n: sum(r["source"] == n for r in table["routes"]) for n in names}
            if any(c not in (0, 4) for c in counts.values()):
                half_built.append(counts)

    watchers = [asyncio.create_task(keep_calling()) for _ in range(4)]
    watchers.append(asyncio.create_task(keep_looking()))
    results = await asyncio.gather(*(register(bridge, n, files[n], team.target) for n in names))
    await asyncio.sleep(0.05)
    done.set()
    await asyncio.gather(*watchers)

    assert [status for status, _ in results] == [201] * 20, results
    assert traffic and set(traffic) == {200}, f"{len(traffic)} calls, statuses {set(traffic)}"
    assert half_built == []
    _, listing = await admin(bridge, "GET", "/admin/protos")
    assert [p["name"] for p in listing["protos"]] == names
    for name in names:
        status, body, _ = await bridge.json("PUT", f"/{name}/items/9", json={})
        assert (status, body) == (200, {"id": "9", "team": name})
    assert sorted(os.listdir(tmp_path / "s")) == [f"{n}.json" for n in names]
