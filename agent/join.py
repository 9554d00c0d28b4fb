"""Dial the controller: join with a token, then heartbeat (for agents off its LAN).

A cloud controller cannot hear link-local mDNS, so an agent given --controller calls in.
It re-joins when the controller says it does not know this device (the controller was
reset), backs off while the controller is unreachable, and says clearly when the token is
refused (and keeps retrying slowly, so fixing the token on the controller is enough).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from layerfleet.agent import transport
from layerfleet.v1 import agent_pb2, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0


async def join_and_heartbeat(controller: str, token: str, address: str,
                             describe: Callable[[], agent_pb2.DeviceInfo],
                             sample: Callable[[], agent_pb2.TelemetrySample]) -> None:
    """Runs until cancelled."""
    backoff = 0.5
    async with transport.channel(controller) as channel:
        stub = fleet_pb2_grpc.FleetStub(channel)
        while True:
            try:
                info = describe()
                reply = await stub.Join(fleet_pb2.JoinRequest(token=token, device=info,
                                                              address=address), timeout=30)
                log.info("joined controller %s as %s", controller, reply.device_id)
                backoff = 0.5
                interval = reply.heartbeat_interval_s or 2.0
                while True:
                    await asyncio.sleep(interval)
                    beat = await stub.Heartbeat(fleet_pb2.HeartbeatRequest(
                        device_id=info.device_id, token=token, sample=sample()), timeout=10)
                    if not beat.known:
                        log.info("controller %s forgot this device; joining again", controller)
                        break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("controller %s refused the join token: %s", controller,
                              exc.details())
                    backoff = MAX_BACKOFF_S
                elif exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    log.error("controller %s: %s", controller, exc.details())
                    backoff = MAX_BACKOFF_S
                else:
                    log.warning("controller %s: %s; retrying in %.1f s", controller,
                                exc.details() or exc.code().name, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
