"""One persistent connection from an asyncio program to one agent, shared by many
concurrent requests (the controller's router, AgentClient, benchmarks).

Each call gets a fresh request id on the current carrier (carriers.py chooses the agent's
data port or gRPC); answers are matched back by it. If the connection breaks, every request
waiting on it fails with UNAVAILABLE naming the address, and the next call connects afresh
(and asks again which way to go: a restarted agent may have moved its data port).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import grpc
import numpy as np
from layerfleet.agent import carriers, transport, wire
from layerfleet.agent.answers import Answer, Failure, Outputs, decoded
from layerfleet.agent.carriers import Carrier, Outstanding
from layerfleet.agent.errors import DeadlineExceeded, StatusError

# What a request may take end to end when its caller does not say (every hop honours it).
DEFAULT_TIMEOUT_S = 30.0


class InferStream:
    def __init__(self, address: str, *, chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
                 channel: grpc.aio.Channel | None = None, use_data_port: bool = True) -> None:
        self.address = address
        self.chunk_bytes = chunk_bytes   # gRPC only: the data port sends tensors whole
        self.use_data_port = use_data_port
        self._channel = channel
        self._own_channel = channel is None
        self._carrier: Carrier | None = None
        self._waiting: Outstanding[asyncio.Future[Outputs]] = Outstanding()
        self._connecting: asyncio.Future[Carrier] | None = None

    @property
    def outstanding(self) -> int:
        return len(self._waiting)

    @property
    def carrier(self) -> str:
        """'dataport', 'grpc', or '' before the first request."""
        return self._carrier.kind if self._carrier is not None else ""

    async def infer(self, deployment: str, stage: int, arrays: Mapping[str, np.ndarray], *,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> Outputs:
        """The answer (StatusError for a failure). Past `timeout_s` the request is
        DEADLINE_EXCEEDED here and at every hop it reached."""
        deadline = time.monotonic() + timeout_s
        try:
            return await asyncio.wait_for(self._infer(deployment, stage, arrays, deadline),
                                          timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"{deployment} stage {stage} via {self.address}: no answer "
                                   f"within {timeout_s:g} s") from None

    async def _infer(self, deployment: str, stage: int, arrays: Mapping[str, np.ndarray],
                     deadline: float) -> Outputs:
        carrier, waiting = await self._ready()
        writable = getattr(carrier, "writable", None)
        if writable is not None:
            await writable()
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        request_id = waiting.add(future)
        try:
            carrier.send(request_id, deployment, stage, arrays,
                         max(deadline - time.monotonic(), 1e-3))
        except BaseException:
            waiting.pop(request_id)
            raise
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (a hedged twin won, or the deadline): the hop drops it.
            if waiting.pop(request_id) is not None and carrier.alive:
                carrier.cancel(request_id)
            raise

    # -- connecting ----------------------------------------------------------------------

    async def _ready(self) -> tuple[Carrier, Outstanding[asyncio.Future[Outputs]]]:
        if self._carrier is not None and self._carrier.alive:
            return self._carrier, self._waiting
        if self._connecting is None:   # concurrent first calls share one connect
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        assert self._carrier is not None
        return self._carrier, self._waiting

    async def _connect(self) -> Carrier:
        if self._channel is None:
            self._channel = transport.channel(self.address)
        # Each carrier gets its own waiters, so one that ends fails only what it carried.
        waiting: Outstanding[asyncio.Future[Outputs]] = Outstanding()
        carrier = await carriers.connect(
            self.address, self._channel, use_data_port=self.use_data_port, blocking=False,
            on_answer=lambda answer: _deliver(waiting, answer),
            on_lost=lambda error: _fail(waiting, error), chunk_bytes=self.chunk_bytes)
        self._carrier, self._waiting = carrier, waiting
        return carrier

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
            self._connecting = None
        if self._carrier is not None:
            self._carrier.close()
            self._carrier = None
        if self._own_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None


def _deliver(waiting: Outstanding[asyncio.Future[Outputs]], answer: Answer) -> None:
    future = waiting.pop(answer.request_id)
    if future is None or future.done():
        return   # cancelled meanwhile
    result = decoded(answer)
    if isinstance(result, Failure):
        future.set_exception(result.error())
    else:
        future.set_result(result)


def _fail(waiting: Outstanding[asyncio.Future[Outputs]], error: StatusError) -> None:
    for future in waiting.drain():
        if not future.done():
            future.set_exception(error)
