"""The OrderService gRPC server and its fixed orders, for tests and ``python -m services.shop``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

import grpc

from services.serving import Context, add_health, bind_and_start, new_server

from shop.v1 import orders_pb2, orders_pb2_grpc

DEFAULT_PORT: Final = 50053
SERVICE_NAME: Final = orders_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
ORDERS: Final = {
    "1001": orders_pb2.Order(id="1001", item="teapot", quantity=1, step=orders_pb2.STEP_SHIPPED),
    "1002": orders_pb2.Order(id="1002", item="cup", quantity=6, step=orders_pb2.STEP_PLACED),
}
JOURNEY: Final = (orders_pb2.STEP_PLACED, orders_pb2.STEP_SHIPPED, orders_pb2.STEP_DELIVERED)


class OrderServicer(orders_pb2_grpc.OrderServiceServicer):
    """demo.shop.v1.OrderService over ORDERS, which never change."""

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: Context
    ) -> orders_pb2.Order:
        return await _order(request.id, context)

    async def TrackOrder(
        self, request: orders_pb2.TrackOrderRequest, context: Context
    ) -> AsyncIterator[orders_pb2.TrackingEvent]:
        await _order(request.id, context)
        for index, step in enumerate(JOURNEY):
            if index and request.interval_ms > 0:
                await asyncio.sleep(request.interval_ms / 1000)
            yield orders_pb2.TrackingEvent(id=request.id, step=step)


async def _order(order_id: str, context: Context) -> orders_pb2.Order:
    if order_id not in ORDERS:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no order {order_id!r}")
    return ORDERS[order_id]


async def start(port: int = 0, host: str = "127.0.0.1") -> tuple[grpc.aio.Server, int]:
    """Start an OrderService server with health; return it and its port."""
    server = new_server()
    orders_pb2_grpc.add_OrderServiceServicer_to_server(OrderServicer(), server)
    await add_health(server, [SERVICE_NAME])
    return server, await bind_and_start(server, host, port)
