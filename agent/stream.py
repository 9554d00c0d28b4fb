"""One persistent Infer stream to one agent, shared by many concurrent requests.

Used for every hop: by an agent forwarding to its next stage, by the controller's router,
and by AgentClient. Each call gets a fresh local request id (ids from different upstream
senders would collide); responses are matched back by it. If the stream breaks, every
request waiting on it fails with UNAVAILABLE naming the address, and the next call dials
a new stream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import numpy as np
from layerfleet.agent import transport, wire
from layerfleet.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)


class HopError(Exception):
    """A request that failed at or beyond this hop: a gRPC status code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Reply:
    outputs: dict[str, np.ndarray]
    hops: list[agent_pb2.HopTiming]
    exited_at_stage: int


def status_code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


class InferStream:
    def __init__(self, address: str, *, chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
                 channel: grpc.aio.Channel | None = None) -> None:
        self.address = address
        self.chunk_bytes = chunk_bytes
        self._channel = channel
        self._own_channel = channel is None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._outbox: asyncio.Queue[agent_pb2.InferRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._call: grpc.aio.StreamStreamCall | None = None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def _ensure_stream(self) -> asyncio.Queue[agent_pb2.InferRequest | None]:
        if self._outbox is not None and self._reader is not None and not self._reader.done():
            return self._outbox
        if self._channel is None:
            self._channel = transport.channel(self.address)
        outbox: asyncio.Queue[agent_pb2.InferRequest | None] = asyncio.Queue()

        async def send():
            while (message := await outbox.get()) is not None:
                yield message

        self._call = agent_pb2_grpc.AgentStub(self._channel).Infer(send())
        self._outbox = outbox
        self._reader = asyncio.create_task(self._read(self._call))
        return outbox

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        assembler = wire.Assembler()
        try:
            async for message in call:
                done = assembler.add(message)
                if done is None:
                    continue
                last, arrays = done
                future = self._pending.pop(message.request_id, None)
                if future is None or future.done():
                    continue  # cancelled meanwhile
                if last.status_code:
                    future.set_exception(HopError(status_code(last.status_code),
                                                  last.status_message))
                else:
                    future.set_result(Reply(arrays, list(last.hops), last.exited_at_stage))
            error = HopError(grpc.StatusCode.UNAVAILABLE,
                             f"next hop {self.address} closed the stream")
        except grpc.aio.AioRpcError as exc:
            error = HopError(grpc.StatusCode.UNAVAILABLE,
                             f"next hop {self.address} unavailable: {exc.details()}")
        except asyncio.CancelledError:
            error = HopError(grpc.StatusCode.CANCELLED, f"stream to {self.address} closed")
        except Exception as exc:  # a malformed response must not hang its requests
            log.exception("bad response from %s", self.address)
            error = HopError(grpc.StatusCode.INTERNAL, f"bad response from {self.address}: {exc}")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        self._outbox = None

    async def infer(self, deployment: str, stage: int, arrays: Mapping[str, np.ndarray]
                    ) -> Reply:
        outbox = self._ensure_stream()
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        for message in wire.requests(request_id, deployment, stage, arrays, self.chunk_bytes):
            outbox.put_nowait(message)
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (a hedged twin won): tell the hop to drop the work.
            if self._pending.pop(request_id, None) is not None and self._outbox is outbox:
                outbox.put_nowait(agent_pb2.InferRequest(request_id=request_id, cancel=True))
            raise

    async def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._call is not None:
            self._call.cancel()
        if self._own_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None
