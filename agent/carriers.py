"""How inference requests reach one agent: a carrier is one live connection to it.

Three kinds, one choice (`connect`):
- `DataPortCarrier`: a blocking socket to the agent's data port, read by its own thread;
  for the agent's request threads forwarding to a next hop (a thread per hop is cheap and
  wakes once per frame; docs/agent.md, "Measured").
- `AsyncDataPortCarrier`: the same port from an asyncio loop (the controller's router,
  AgentClient), never blocking the loop.
- `GrpcCarrier`: a gRPC Infer stream, for an agent without a data port, one that refuses
  it, or one that does not answer on it within DATA_PORT_CONNECT_TIMEOUT_S.

A carrier numbers nothing and remembers nothing: senders (nexthops.NextHop, stream.
InferStream) pick request ids, keep their waiters in an `Outstanding`, and get every
answer through `on_answer` (the data port's reader thread, or the loop) and the end of the
connection through `on_lost`, once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable
from typing import Generic, Literal, Protocol, TypeVar

import grpc
from layerfleet.agent import answers, codecs, dataport, transport, wire
from layerfleet.agent.answers import Answer
from layerfleet.agent.errors import Cancelled, StatusError, Unavailable
from layerfleet.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
# A TCP connect takes milliseconds on a LAN or to a VM; a firewall that drops the data port
# silently should cost the first request this long, not the full timeout, before gRPC.
DATA_PORT_CONNECT_TIMEOUT_S = 2.0

Kind = Literal["dataport", "grpc"]
OnAnswer = Callable[[Answer], None]
OnLost = Callable[[StatusError], None]


class Carrier(Protocol):
    address: str
    kind: Kind

    @property
    def alive(self) -> bool: ...
    def send(self, request_id: int, deployment: str, stage: int,
             arrays: codecs.Tensors, timeout_s: float) -> None: ...
    def cancel(self, request_id: int) -> None: ...
    def close(self) -> None: ...


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def unreachable(address: str, details: object) -> Unavailable:
    return Unavailable(f"next hop {address} unavailable: {details}")


def lost(address: str, reason: str | None) -> Unavailable:
    why = f": {reason}" if reason else ""
    return Unavailable(f"next hop {address} closed its connection{why}")


def request(request_id: int, deployment: str, stage: int,
            timeout_s: float) -> agent_pb2.InferRequest:
    return agent_pb2.InferRequest(request_id=request_id, deployment=deployment, stage=stage,
                                  timeout_s=timeout_s)


W = TypeVar("W")


class Outstanding(Generic[W]):
    """Requests sent on one carrier and not answered yet, by their request id on it."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, W] = {}
        self._lock = threading.Lock()

    def add(self, waiter: W) -> int:
        with self._lock:
            request_id = next(self._ids)
            self._waiting[request_id] = waiter
            return request_id

    def pop(self, request_id: int) -> W | None:
        with self._lock:
            return self._waiting.pop(request_id, None)

    def drain(self) -> list[W]:
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
            return waiting

    def __len__(self) -> int:
        return len(self._waiting)


# -- choosing ---------------------------------------------------------------------------


async def data_port_of(address: str, channel: grpc.aio.Channel) -> int:
    """The data port the agent at `address` announces (0: none); Unavailable if it does not
    answer Describe."""
    try:
        info = await agent_pb2_grpc.AgentStub(channel).Describe(
            agent_pb2.DescribeRequest(), timeout=CONNECT_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise unreachable(address, exc.details()) from None
    return info.data_port


async def connect(address: str, channel: grpc.aio.Channel, *, use_data_port: bool,
                  blocking: bool, on_answer: OnAnswer, on_lost: OnLost,
                  chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES) -> Carrier:
    """The one place that decides how inference reaches an agent: its data port when it
    announces one and the caller may use it (blocking: a socket for request threads;
    else asyncio), else gRPC Infer on `channel`. A data port that refuses, is busy or does
    not answer in DATA_PORT_CONNECT_TIMEOUT_S falls back to gRPC. Raises Unavailable when
    the agent cannot be reached at all. Runs on the loop that owns `channel`."""
    port = await data_port_of(address, channel) if use_data_port else 0
    if port:
        try:
            if blocking:
                return await asyncio.to_thread(DataPortCarrier.open, address, port,
                                               on_answer, on_lost)
            return await AsyncDataPortCarrier.open(address, port, on_answer, on_lost)
        except (OSError, TimeoutError, dataport.DataProtocolError) as exc:
            log.warning("data port of %s (%d) refused: %s; using gRPC", address, port, exc)
    return GrpcCarrier(address, channel, on_answer, on_lost, chunk_bytes)


# -- the data port, blocking ------------------------------------------------------------


class DataPortCarrier:
    """A blocking socket to an agent's data port: written under a lock by any thread, read
    by its own thread ("answers from HOST:PORT")."""

    kind: Kind = "dataport"

    def __init__(self, address: str, sock: socket.socket, on_answer: OnAnswer,
                 on_lost: OnLost) -> None:
        self.address = address
        self._sock = sock
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._send_lock = threading.Lock()
        self._alive = True
        self._reader = threading.Thread(target=self._read, name=f"answers from {address}",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def open(cls, address: str, port: int, on_answer: OnAnswer,
             on_lost: OnLost) -> DataPortCarrier:
        """Connect and exchange prefaces (so a busy or foreign port fails here, where the
        caller can still fall back to gRPC)."""
        host = host_of(address)
        sock = socket.create_connection((host, port), timeout=DATA_PORT_CONNECT_TIMEOUT_S)
        try:
            context = transport.data_port_client_ssl()
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host)
            dataport.tune(sock)
            sock.sendall(dataport.PREFACE)
            dataport.expect_preface(dataport.recv_exactly(sock, len(dataport.PREFACE)))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return cls(address, sock, on_answer, on_lost)

    @property
    def alive(self) -> bool:
        return self._alive

    def set_send_stall(self, seconds: float) -> None:
        """Give the connection up when a send makes no progress for `seconds` (a stalled
        peer whose buffers are full), instead of blocking the sending thread for good."""
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                              struct.pack("ll", int(seconds), int(seconds % 1 * 1e6)))

    def send(self, request_id: int, deployment: str, stage: int,
             arrays: codecs.Tensors, timeout_s: float) -> None:
        try:
            with self._send_lock:
                dataport.send_frame(self._sock, request(request_id, deployment, stage,
                                                        timeout_s), arrays)
        except OSError as exc:
            self._hang_up()   # a frame may be half-written: the connection is done
            raise unreachable(self.address, exc) from None

    def cancel(self, request_id: int) -> None:
        if not self._alive:
            return
        try:
            with self._send_lock:
                dataport.send_frame(self._sock, agent_pb2.InferRequest(request_id=request_id,
                                                                       cancel=True))
        except OSError:
            self._hang_up()

    def _read(self) -> None:
        # Answers are passed upstream as they came (answers.relay): no tensors decoded.
        reader = dataport.FrameReader(agent_pb2.InferResponse, raw=True, preface=b"")
        reason = None
        try:
            while n := self._sock.recv_into(reader.get_buffer()):
                for frame in reader.buffer_updated(n):
                    self._on_answer(answers.from_frame(frame))
        except (OSError, dataport.DataProtocolError) as exc:
            reason = str(exc)
        self._hang_up()
        self._on_lost(lost(self.address, reason))

    def _hang_up(self) -> None:
        self._alive = False
        try:
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes the reader thread
        except OSError:
            pass

    def close(self) -> None:
        self._hang_up()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)
        self._sock.close()


# -- the data port, asyncio -------------------------------------------------------------


class AsyncDataPortCarrier:
    """An agent's data port from an asyncio loop: sends never block (the transport
    buffers; `writable()` waits above dataport.HIGH_WATER_BYTES)."""

    kind: Kind = "dataport"

    def __init__(self, address: str, on_answer: OnAnswer, on_lost: OnLost) -> None:
        self.address = address
        self._conn = dataport.DataConnection(
            agent_pb2.InferResponse, lambda frame: on_answer(answers.from_frame(frame)),
            lambda reason: on_lost(lost(address, reason)))

    @classmethod
    async def open(cls, address: str, port: int, on_answer: OnAnswer,
                   on_lost: OnLost) -> AsyncDataPortCarrier:
        carrier = cls(address, on_answer, on_lost)

        async def opened() -> None:
            await asyncio.get_running_loop().create_connection(
                lambda: carrier._conn, host_of(address), port,
                ssl=transport.data_port_client_ssl())
            await carrier._conn.greeted   # the agent's preface (or BUSY)

        try:
            await asyncio.wait_for(opened(), DATA_PORT_CONNECT_TIMEOUT_S)
        except BaseException:
            carrier.close()
            raise
        return carrier

    @property
    def alive(self) -> bool:
        return not self._conn.closed

    def send(self, request_id: int, deployment: str, stage: int,
             arrays: codecs.Tensors, timeout_s: float) -> None:
        self._conn.send(request(request_id, deployment, stage, timeout_s), arrays)

    def cancel(self, request_id: int) -> None:
        if self.alive:
            self._conn.send(agent_pb2.InferRequest(request_id=request_id, cancel=True))

    async def writable(self) -> None:
        await self._conn.writable()

    def close(self) -> None:
        self._conn.close()


# -- gRPC Infer -------------------------------------------------------------------------


class GrpcCarrier:
    """Requests over a gRPC Infer stream (big tensors chunked, wire.py). Call it on the
    loop that owns the channel; answers arrive on that loop."""

    kind: Kind = "grpc"

    def __init__(self, address: str, channel: grpc.aio.Channel, on_answer: OnAnswer,
                 on_lost: OnLost, chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES) -> None:
        self.address = address
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._chunk_bytes = chunk_bytes
        self._outbox: asyncio.Queue[agent_pb2.InferRequest | None] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[agent_pb2.InferRequest]:
            while (message := await self._outbox.get()) is not None:
                yield message

        self._call = agent_pb2_grpc.AgentStub(channel).Infer(outgoing())
        self._reader = asyncio.create_task(self._read(), name=f"answers from {address}")

    @property
    def alive(self) -> bool:
        return not self._reader.done()

    def send(self, request_id: int, deployment: str, stage: int,
             arrays: codecs.Tensors, timeout_s: float) -> None:
        for message in wire.requests(request_id, deployment, stage, arrays, self._chunk_bytes,
                                     timeout_s):
            self._outbox.put_nowait(message)

    def cancel(self, request_id: int) -> None:
        self._outbox.put_nowait(agent_pb2.InferRequest(request_id=request_id, cancel=True))

    async def writable(self) -> None:
        return None   # the outbox is unbounded; gRPC flow control paces what leaves it

    async def _read(self) -> None:
        assembler = wire.Assembler()
        try:
            async for message in self._call:
                done = assembler.add(message)
                if done is not None:
                    self._on_answer(answers.from_response(done.first, done.arrays))
            error: StatusError = Unavailable(f"next hop {self.address} closed the stream")
        except grpc.aio.AioRpcError as exc:
            error = unreachable(self.address, exc.details())
        except asyncio.CancelledError:
            error = Cancelled(f"stream to {self.address} closed")
        except Exception as exc:  # a malformed answer must not hang its requests
            log.exception("bad answer from %s", self.address)
            error = Unavailable(f"bad answer from {self.address}: {type(exc).__name__}")
        self._on_lost(error)

    def close(self) -> None:
        self._outbox.put_nowait(None)
        self._reader.cancel()
        self._call.cancel()
