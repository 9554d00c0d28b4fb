"""One persistent connection to one agent, shared by many concurrent requests.

Used for every hop: by an agent forwarding to its next stage, by the controller's router,
and by AgentClient. Each call gets a fresh local request id (ids from different upstream
senders would collide); answers are matched back by it.

The connection is the agent's data port (dataport.py) when it offers one
(DeviceInfo.data_port) and the caller allows it, otherwise a gRPC Infer stream; both carry
the same requests and answers. If the connection breaks, every request waiting on it
fails with UNAVAILABLE naming the address, and the next call connects afresh (and asks
again which way to go: a restarted agent may have moved its data port).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np
from layerfleet.agent import dataport, transport, wire
from layerfleet.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0
# A TCP connect takes milliseconds on a LAN or to a VM; a firewall that drops the data port
# silently should cost the first request this long, not the full timeout, before gRPC.
DATA_PORT_CONNECT_TIMEOUT_S = 2.0


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


def unreachable(address: str, details: object) -> HopError:
    return HopError(grpc.StatusCode.UNAVAILABLE, f"next hop {address} unavailable: {details}")


def data_port_lost(address: str, reason: str | None) -> HopError:
    why = f": {reason}" if reason else ""
    return HopError(grpc.StatusCode.UNAVAILABLE,
                    f"next hop {address} closed its data port connection{why}")


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def status_code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


def answer_result(answer: agent_pb2.InferResponse, arrays: dict[str, np.ndarray]
                  ) -> Reply | HopError:
    """What an agent's answer means for the waiting request."""
    if answer.status_code:
        return HopError(status_code(answer.status_code), answer.status_message)
    return Reply(arrays, list(answer.hops), answer.exited_at_stage)


class _Carrier(Protocol):
    """One live connection: sends requests; answers reach InferStream._deliver."""

    kind: str

    @property
    def alive(self) -> bool: ...
    def send(self, request_id: int, deployment: str, stage: int,
             arrays: Mapping[str, np.ndarray]) -> None: ...
    def cancel(self, request_id: int) -> None: ...
    async def writable(self) -> None: ...
    async def close(self) -> None: ...


class InferStream:
    def __init__(self, address: str, *, chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
                 channel: grpc.aio.Channel | None = None, use_data_port: bool = True) -> None:
        self.address = address
        self.chunk_bytes = chunk_bytes   # gRPC only: the data port sends tensors whole
        self.use_data_port = use_data_port
        self._channel = channel
        self._own_channel = channel is None
        self._ids = itertools.count(1)
        # request id -> (its answer, the connection it went out on)
        self._pending: dict[int, tuple[asyncio.Future[Reply], _Carrier]] = {}
        self._carrier: _Carrier | None = None
        self._connecting: asyncio.Future[_Carrier] | None = None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    @property
    def carrier(self) -> str:
        """'dataport', 'grpc', or '' before the first request."""
        return self._carrier.kind if self._carrier is not None else ""

    async def infer(self, deployment: str, stage: int, arrays: Mapping[str, np.ndarray]
                    ) -> Reply:
        carrier = await self._ready()
        await carrier.writable()
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, carrier)
        try:
            carrier.send(request_id, deployment, stage, arrays)
        except BaseException:
            self._pending.pop(request_id, None)
            raise
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (a hedged twin won): tell the hop to drop the work.
            if self._pending.pop(request_id, None) is not None and carrier.alive:
                carrier.cancel(request_id)
            raise

    # -- connecting ----------------------------------------------------------------------

    async def _ready(self) -> _Carrier:
        if self._carrier is not None and self._carrier.alive:
            return self._carrier
        if self._connecting is None:   # concurrent first calls share one connect
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            self._carrier = await asyncio.shield(connecting)
            return self._carrier
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _connect(self) -> _Carrier:
        if self._channel is None:
            self._channel = transport.channel(self.address)
        if self.use_data_port:
            try:
                info = await agent_pb2_grpc.AgentStub(self._channel).Describe(
                    agent_pb2.DescribeRequest(), timeout=CONNECT_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                raise unreachable(self.address, exc.details()) from None
            if info.data_port:
                try:
                    return await _DataPortCarrier.open(self, host_of(self.address),
                                                       info.data_port)
                except OSError as exc:
                    log.warning("data port of %s (%d) refused: %s; using gRPC", self.address,
                                info.data_port, exc)
        return _GrpcCarrier(self, self._channel)

    # -- answers -------------------------------------------------------------------------

    def _deliver(self, request_id: int, result: Reply | HopError) -> None:
        future, _ = self._pending.pop(request_id, (None, None))
        if future is None or future.done():
            return  # cancelled meanwhile
        if isinstance(result, HopError):
            future.set_exception(result)
        else:
            future.set_result(result)

    def _lost(self, carrier: _Carrier, error: HopError) -> None:
        """A connection ended: fail the requests it carried (a replacement may already be
        carrying newer ones)."""
        if self._carrier is carrier:
            self._carrier = None
        lost = [rid for rid, (_, via) in self._pending.items() if via is carrier]
        for request_id in lost:
            future, _ = self._pending.pop(request_id)
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
            if not self._connecting.cancelled() and self._connecting.exception() is None:
                await self._connecting.result().close()
            self._connecting = None
        if self._carrier is not None:
            await self._carrier.close()
            self._carrier = None
        if self._own_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None


class _DataPortCarrier:
    """Requests over the agent's data port."""

    kind = "dataport"

    def __init__(self, stream: InferStream) -> None:
        self._stream = stream
        self._conn: dataport.DataConnection[agent_pb2.InferResponse] = dataport.DataConnection(
            agent_pb2.InferResponse, self._on_frame, self._on_lost)

    @classmethod
    async def open(cls, stream: InferStream, host: str, port: int) -> _DataPortCarrier:
        carrier = cls(stream)
        await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            lambda: carrier._conn, host, port, ssl=transport.data_port_client_ssl()),
            DATA_PORT_CONNECT_TIMEOUT_S)
        return carrier

    @property
    def alive(self) -> bool:
        return not self._conn.closed

    def send(self, request_id: int, deployment: str, stage: int,
             arrays: Mapping[str, np.ndarray]) -> None:
        self._conn.send(agent_pb2.InferRequest(request_id=request_id, deployment=deployment,
                                               stage=stage), arrays)

    def cancel(self, request_id: int) -> None:
        self._conn.send(agent_pb2.InferRequest(request_id=request_id, cancel=True))

    async def writable(self) -> None:
        await self._conn.writable()

    def _on_frame(self, frame: dataport.Frame[agent_pb2.InferResponse]) -> None:
        result = (HopError(*frame.error) if frame.error is not None
                  else answer_result(frame.message, frame.arrays))
        self._stream._deliver(frame.message.request_id, result)

    def _on_lost(self, reason: str | None) -> None:
        self._stream._lost(self, data_port_lost(self._stream.address, reason))

    async def close(self) -> None:
        self._conn.close()


class _GrpcCarrier:
    """Requests over a gRPC Infer stream (big tensors chunked, see wire.py)."""

    kind = "grpc"

    def __init__(self, stream: InferStream, channel: grpc.aio.Channel) -> None:
        self._stream = stream
        self._outbox: asyncio.Queue[agent_pb2.InferRequest | None] = asyncio.Queue()

        async def send() -> AsyncIterator[agent_pb2.InferRequest]:
            while (message := await self._outbox.get()) is not None:
                yield message

        self._call = agent_pb2_grpc.AgentStub(channel).Infer(send())
        self._reader = asyncio.create_task(self._read())

    @property
    def alive(self) -> bool:
        return not self._reader.done()

    def send(self, request_id: int, deployment: str, stage: int,
             arrays: Mapping[str, np.ndarray]) -> None:
        for message in wire.requests(request_id, deployment, stage, arrays,
                                     self._stream.chunk_bytes):
            self._outbox.put_nowait(message)

    def cancel(self, request_id: int) -> None:
        self._outbox.put_nowait(agent_pb2.InferRequest(request_id=request_id, cancel=True))

    async def writable(self) -> None:
        return None  # the outbox is unbounded; gRPC flow control paces what leaves it

    async def _read(self) -> None:
        address = self._stream.address
        assembler = wire.Assembler()
        try:
            async for message in self._call:
                done = assembler.add(message)
                if done is None:
                    continue
                last, arrays = done
                self._stream._deliver(message.request_id, answer_result(last, arrays))
            error = HopError(grpc.StatusCode.UNAVAILABLE, f"next hop {address} closed the stream")
        except grpc.aio.AioRpcError as exc:
            error = unreachable(address, exc.details())
        except asyncio.CancelledError:
            error = HopError(grpc.StatusCode.CANCELLED, f"stream to {address} closed")
        except Exception as exc:  # a malformed response must not hang its requests
            log.exception("bad response from %s", address)
            error = HopError(grpc.StatusCode.INTERNAL, f"bad response from {address}: {exc}")
        self._stream._lost(self, error)

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._call.cancel()
