"""gRPC server reflection as a second source of services: at start and on refresh."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import StartBridge, demo_config
from tests.teams import TOKEN, TeamServer, admin, admin_config

INVENTORY_V1: Final = """\
syntax = "proto3";
package acme.inv.v1;
import "google/api/annotations.proto";
message StockRequest { string sku = 1; int32 amount = 2; }
message Stock { string sku = 1; int32 count = 2; }
service Inventory {
  rpc GetStock(StockRequest) returns (Stock) {
    option (google.api.http) = { get: "/v1/stock/{sku}" };
  }
}
"""

# Deployed later: a new method on Inventory and a second service in another file.
INVENTORY_V2: Final = INVENTORY_V1.replace(
    """\
    option (google.api.http) = { get: "/v1/stock/{sku}" };
  }
""",
    """\
    option (google.api.http) = { get: "/v1/stock/{sku}" };
  }
  rpc Restock(StockRequest) returns (Stock) {
    option (google.api.http) = { post: "/v1/restock/{sku}" body: "*" };
  }
""",
)

AUDIT: Final = """\
syntax = "proto3";
package acme.inv.v1;
import "google/api/annotations.proto";
import "acme/inv/v1/inventory.proto";
service Audit {
  rpc Last(StockRequest) returns (Stock) {
    option (google.api.http) = { get: "/v1/audit/{sku}" };
  }
}
"""

INVENTORY: Final = "acme/inv/v1/inventory.proto"


async def get_stock(request: Any, context: Any) -> dict[str, Any]:
    return {"sku": request.sku, "count": 7}


async def restock(request: Any, context: Any) -> dict[str, Any]:
    return {"sku": request.sku, "count": 7 + request.amount}


@pytest.fixture
async def team(tmp_path: Path) -> AsyncIterator[TeamServer]:
    server = await TeamServer(tmp_path / "team").start()
    yield server
    await server.stop()


def reflected(target: str) -> dict[str, Any]:
    return {"targets": [target], "timeout": "5s", "reflection": True}


async def test_the_echo_example_is_discovered_at_start(start_bridge: StartBridge, echo_server: int):
    bridge = await start_bridge(
        admin_config(upstreams={"echo": reflected(f"127.0.0.1:{echo_server}")})
    )
    status, body, _ = await bridge.json("POST", "/v1/echo", json={"message": "hi"})
    assert (status, body["message"]) == (200, "hi"), body
    status, body, _ = await bridge.json("GET", "/v1/echo/hey")
    assert (status, body["message"]) == (200, "hey"), body

    _, table = await admin(bridge, "GET", "/admin/routes")
    services = {r["method"].split("/")[0] for r in table["routes"]}
    assert services == {"demo.echo.v1.EchoService"}  # not grpc.health / grpc.reflection
    assert {(r["source"], r["upstream"]) for r in table["routes"]} == {("reflection:echo", "echo")}
    assert {
        "method": "demo.echo.v1.EchoService/Echo",
        "verb": "GET",
        "path": "/v1/echo/{message}",
        "kind": "unary",
        "upstream": "echo",
        "source": "reflection:echo",
    } in table["routes"]


async def test_reflection_alongside_the_same_included_protos(
    start_bridge: StartBridge, echo_server: int
):
    config = demo_config(1, echo_server, admin={"token": TOKEN})
    config["upstreams"]["echo"]["reflection"] = True
    bridge = await start_bridge(config)
    status, body, _ = await bridge.json("GET", "/v1/echo/both")
    assert (status, body["message"]) == (200, "both"), body
    status, body = await admin(bridge, "POST", "/admin/upstreams/echo/refresh")
    assert (status, body["upstream"]) == (200, "echo"), body
    _, table = await admin(bridge, "GET", "/admin/routes")
    echo = {r["source"] for r in table["routes"] if r["method"].startswith("demo.echo.")}
    assert echo == {"include"}  # discovery yields to the protos the config names
    assert (await bridge.json("GET", "/v1/echo/again"))[0] == 200


async def test_refresh_discovers_what_the_upstream_serves_now(
    start_bridge: StartBridge, team: TeamServer
):
    await team.deploy({INVENTORY: INVENTORY_V1}, {"acme.inv.v1.Inventory/GetStock": get_stock})
    bridge = await start_bridge(admin_config(upstreams={"inv": reflected(team.target)}))
    status, body, _ = await bridge.json("GET", "/v1/stock/apple")
    assert (status, body) == (200, {"sku": "apple", "count": 7})

    await team.deploy(
        {INVENTORY: INVENTORY_V2, "acme/inv/v1/audit.proto": AUDIT},
        {
            "acme.inv.v1.Inventory/GetStock": get_stock,
            "acme.inv.v1.Inventory/Restock": restock,
            "acme.inv.v1.Audit/Last": get_stock,
        },
    )
    status, body, _ = await bridge.json("POST", "/v1/restock/apple", json={"amount": 3})
    assert status == 404, "nothing changes before the refresh"

    status, body = await admin(bridge, "POST", "/admin/upstreams/inv/refresh")
    assert (status, body) == (
        200,
        {"upstream": "inv", "services": ["acme.inv.v1.Audit", "acme.inv.v1.Inventory"]},
    )
    status, body, _ = await bridge.json("POST", "/v1/restock/apple", json={"amount": 3})
    assert (status, body) == (200, {"sku": "apple", "count": 10})
    status, body, _ = await bridge.json("GET", "/v1/audit/pear")
    assert (status, body) == (200, {"sku": "pear", "count": 7})

    # The service is withdrawn again: a refresh takes its routes away.
    await team.deploy({INVENTORY: INVENTORY_V1}, {"acme.inv.v1.Inventory/GetStock": get_stock})
    status, body = await admin(bridge, "POST", "/admin/upstreams/inv/refresh")
    assert (status, body["services"]) == (200, ["acme.inv.v1.Inventory"])
    assert (await bridge.json("GET", "/v1/audit/pear"))[0] == 404
    assert (await bridge.json("POST", "/v1/restock/apple", json={}))[0] == 404
    assert (await bridge.json("GET", "/v1/stock/fig"))[0] == 200


async def test_refresh_errors(
    start_bridge: StartBridge, echo_server: int, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="bridge.registry"):
        bridge = await start_bridge(
            admin_config(
                upstreams={
                    "down": reflected("127.0.0.1:1"),
                    "plain": {"targets": [f"127.0.0.1:{echo_server}"]},
                }
            )
        )
    assert "reflection of upstream 'down' failed" in caplog.text  # reported; the bridge serves
    assert (await bridge.json("GET", "/healthz"))[0] == 200

    status, body = await admin(bridge, "POST", "/admin/upstreams/down/refresh")
    assert (status, body["code"]) == (503, 14), body
    status, body = await admin(bridge, "POST", "/admin/upstreams/plain/refresh")
    assert (status, body["code"]) == (400, 3) and "reflection" in body["message"], body
    status, body = await admin(bridge, "POST", "/admin/upstreams/nope/refresh")
    assert (status, body["code"]) == (404, 5), body
