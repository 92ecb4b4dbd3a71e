"""A new user's own multi-file package and service, registered through protos.include."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory

from bridge.registry.compiler import compile_protos

COMMON = """
syntax = "proto3";
package acme.shop.v1;
import "google/protobuf/timestamp.proto";
message Money { string currency = 1; int64 units = 2; }
message Audit { google.protobuf.Timestamp at = 1; string by = 2; }
"""

ORDERS = """
syntax = "proto3";
package acme.shop.v1;
import "google/api/annotations.proto";
import "acme/shop/v1/common.proto";

enum State { STATE_UNSPECIFIED = 0; OPEN = 1; SHIPPED = 2; }
message Order { string name = 1; Money total = 2; State state = 3; Audit audit = 4;
                repeated string items = 5; }
message GetOrderRequest { string name = 1; }
message ListOrdersRequest { string shop = 1; State state = 2; int32 limit = 3; }
message ListOrdersResponse { repeated Order orders = 1; }
message ShipOrderRequest { string name = 1; string carrier = 2; }

service OrderService {
  rpc GetOrder(GetOrderRequest) returns (Order) {
    option (google.api.http) = { get: "/v1/{name=shops/*/orders/*}" };
  }
  rpc ListOrders(ListOrdersRequest) returns (ListOrdersResponse) {
    option (google.api.http) = { get: "/v1/shops/{shop}/orders" };
  }
  rpc ShipOrder(ShipOrderRequest) returns (Order) {
    option (google.api.http) = { post: "/v1/{name=shops/*/orders/*}:ship" body: "*" };
  }
}
"""


def write_protos(root: Path) -> None:
    folder = root / "acme" / "shop" / "v1"
    folder.mkdir(parents=True)
    (folder / "common.proto").write_text(textwrap.dedent(COMMON))
    (folder / "orders.proto").write_text(textwrap.dedent(ORDERS))


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[tuple[Path, int]]:
    """The user's protos on disk and a real grpc.aio OrderService built from them."""
    root = tmp_path / "proto"
    write_protos(root)
    files = await compile_protos(["acme/shop/v1/orders.proto"], [root])
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.AddSerializedFile(f.SerializeToString())

    def cls(name: str):  # type: ignore[no-untyped-def]
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"acme.shop.v1.{name}"))

    Order, ListResponse = cls("Order"), cls("ListOrdersResponse")

    def order(name: str, state: int = 1) -> object:
        o = Order(name=name, state=state, items=["book"])
        o.total.currency, o.total.units = "EUR", 12_000_000_000
        o.audit.by = "tests"
        o.audit.at.FromSeconds(1_700_000_000)
        return o

    async def get_order(request, context):  # type: ignore[no-untyped-def]
        if not request.name.startswith("shops/acme/"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no order {request.name}")
        return order(request.name)

    async def list_orders(request, context):  # type: ignore[no-untyped-def]
        return ListResponse(
            orders=[
                order(f"shops/{request.shop}/orders/{i}", request.state)
                for i in range(request.limit or 2)
            ]
        )

    async def ship_order(request, context):  # type: ignore[no-untyped-def]
        return order(request.name, state=2)

    def handler(fn, req):  # type: ignore[no-untyped-def]
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=cls(req).FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "acme.shop.v1.OrderService",
                {
                    "GetOrder": handler(get_order, "GetOrderRequest"),
                    "ListOrders": handler(list_orders, "ListOrdersRequest"),
                    "ShipOrder": handler(ship_order, "ShipOrderRequest"),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield root, port
    await server.stop(None)


def shop_config(root: Path, port: int) -> str:
    return f"""
protos:
  include: [{root}]
upstreams:
  shop: {{targets: ["127.0.0.1:{port}"], timeout: 2s}}
services:
  acme.shop.*: shop
"""


async def test_own_package_is_served(start_bridge, shop):
    root, port = shop
    bridge = await start_bridge(shop_config(root, port))

    status, body, _ = await bridge.json("GET", "/v1/shops/acme/orders/7")
    assert status == 200, body
    assert body["name"] == "shops/acme/orders/7"
    assert body["total"] == {"currency": "EUR", "units": "12000000000"}
    assert body["state"] == "OPEN"
    assert body["audit"]["at"] == "2023-11-14T22:13:20Z"

    status, body, _ = await bridge.json("GET", "/v1/shops/north/orders?state=SHIPPED&limit=3")
    assert status == 200, body
    assert [o["name"] for o in body["orders"]] == [f"shops/north/orders/{i}" for i in range(3)]
    assert {o["state"] for o in body["orders"]} == {"SHIPPED"}

    status, body, _ = await bridge.json(
        "POST", "/v1/shops/acme/orders/7:ship", json={"carrier": "ups"}
    )
    assert status == 200, body
    assert body["state"] == "SHIPPED"

    status, body, _ = await bridge.json("GET", "/v1/shops/other/orders/1")
    assert status == 404 and body["code"] == 5 and "shops/other/orders/1" in body["message"]

    status, body, _ = await bridge.json(
        "POST", "/acme.shop.v1.OrderService/GetOrder", json={"name": "shops/acme/orders/1"}
    )
    assert status == 200 and body["items"] == ["book"]

    status, body, _ = await bridge.json("GET", "/v1/shops/acme/orders?limit=x")
    assert status == 400 and body["code"] == 3 and "limit" in body["message"]
