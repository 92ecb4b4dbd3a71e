"""Active health checking: a grpc.health.v1 ``Watch`` stream per target, off the request path.

The backend pushes its serving status whenever it changes, so a target leaves the rotation
(and comes back) as soon as the backend says so, with no polling. The watch asks about the
whole server (service ""), which is what a server going down for maintenance flips. A target
whose server offers no health service (UNIMPLEMENTED) stays in: it answered, and the
breaker still guards it. A target that cannot be reached is out until its watch restarts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import grpc
from grpc_health.v1 import health_pb2

from bridge.upstream.balancer import Target

log = logging.getLogger("bridge.upstream")

WATCH: Final = "/grpc.health.v1.Health/Watch"
# A broken watch is opened again after this, so a backend closing it at once is not hammered.
RESTART_DELAY: Final = 0.5
_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_REQUEST: Final = health_pb2.HealthCheckRequest(service="")


async def watch(target: Target, upstream: str) -> None:
    """Keep ``target.healthy`` up to date until cancelled."""
    stub = target.channel.unary_stream(
        WATCH,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    while True:
        try:
            # wait_for_ready: a target that is down is watched again as soon as it is back.
            async for reply in stub(_REQUEST, wait_for_ready=True):
                _set(target, upstream, reply.status == _SERVING)
            _set(target, upstream, False)  # the server ended the watch: it is going away
        except grpc.aio.AioRpcError as exc:
            _set(target, upstream, exc.code() == grpc.StatusCode.UNIMPLEMENTED)
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return
        await asyncio.sleep(RESTART_DELAY)


def _set(target: Target, upstream: str, healthy: bool) -> None:
    if healthy != target.healthy:
        state = "back in the rotation" if healthy else "out of the rotation (not serving)"
        log.warning("upstream %s: target %s %s", upstream, target.address, state)
    target.healthy = healthy
