"""An agent's connections to its next hops, used from the threads that run requests.

A link carries this agent's forwarded requests to one next-hop address and hands each
answer to the request's Ticket (pipeline.py). Two kinds:

- DataPortLink: a blocking socket to the next hop's data port, written under a lock by any
  request thread, read by its own thread. The normal case.
- GrpcLink: a gRPC Infer stream (stream.InferStream) on the agent's event loop, for a next
  hop without a data port (or that refuses it). Slower; requests cross into the loop.

A link that breaks fails every request it carried with UNAVAILABLE naming the address and
is then dead; the pipeline opens a fresh one for the next request (asking the hop again
where its data port is: a restarted agent may have moved it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc
import numpy as np
from layerfleet.agent import dataport, transport
from layerfleet.agent.stream import (
    CONNECT_TIMEOUT_S,
    DATA_PORT_CONNECT_TIMEOUT_S,
    HopError,
    InferStream,
    Reply,
    data_port_lost,
    host_of,
    status_code,
    unreachable,
)
from layerfleet.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from layerfleet.agent.pipeline import Ticket

log = logging.getLogger(__name__)


@dataclass
class Relayed:
    """A next hop's good answer as it came off its data port: parsed header, the header's
    bytes and the raw payload. Passed on upstream without decoding (pipeline.relay)."""

    message: agent_pb2.InferResponse
    header: bytes
    payload: np.ndarray | None


class Link(Protocol):
    address: str
    carrier: str   # 'dataport' or 'grpc'

    @property
    def alive(self) -> bool: ...
    @property
    def outstanding(self) -> int: ...
    def send(self, deployment: str, stage: int, arrays: Mapping[str, np.ndarray],
             ticket: Ticket) -> None: ...   # answers reach ticket.answered
    def cancel(self, handle: object) -> None: ...
    async def close(self) -> None: ...


def open_link(address: str, loop: asyncio.AbstractEventLoop, *, use_data_port: bool = True,
              chunk_bytes: int | None = None) -> Link:
    """Connect to a next hop: its data port when it announces one and we may use it,
    else gRPC. Raises HopError (UNAVAILABLE, naming the hop) when it cannot be reached."""
    if use_data_port:
        try:
            with transport.sync_channel(address) as channel:
                info = agent_pb2_grpc.AgentStub(channel).Describe(
                    agent_pb2.DescribeRequest(), timeout=CONNECT_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise unreachable(address, exc.details()) from None
        if info.data_port:
            try:
                return DataPortLink.connect(address, host_of(address), info.data_port)
            except OSError as exc:
                log.warning("data port of %s (%d) refused: %s; using gRPC", address,
                            info.data_port, exc)
    return GrpcLink(address, loop, chunk_bytes)


class DataPortLink:
    carrier = "dataport"

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address
        self._sock = sock
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Ticket] = {}
        self._alive = True
        threading.Thread(target=self._read, name=f"link {address}", daemon=True).start()

    @classmethod
    def connect(cls, address: str, host: str, port: int) -> DataPortLink:
        sock = socket.create_connection((host, port), timeout=DATA_PORT_CONNECT_TIMEOUT_S)
        sock.settimeout(None)
        context = transport.data_port_client_ssl()
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host)
        dataport.tune(sock)
        sock.sendall(dataport.PREFACE)
        return cls(address, sock)

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def send(self, deployment: str, stage: int, arrays: Mapping[str, np.ndarray],
             ticket: Ticket) -> None:
        request_id = next(self._ids)
        self._pending[request_id] = ticket
        ticket.sent(self, request_id)
        request = agent_pb2.InferRequest(request_id=request_id, deployment=deployment,
                                         stage=stage)
        try:
            with self._send_lock:
                dataport.send_frame(self._sock, request, arrays)
        except OSError as exc:
            self._pending.pop(request_id, None)
            self._hang_up()   # a frame may be half-written: the connection is done
            raise unreachable(self.address, exc) from None

    def cancel(self, handle: object) -> None:
        if self._pending.pop(handle, None) is None or not self._alive:  # type: ignore[arg-type]
            return
        try:
            with self._send_lock:
                dataport.send_frame(self._sock, agent_pb2.InferRequest(
                    request_id=handle, cancel=True))  # type: ignore[arg-type]
        except OSError:
            self._hang_up()

    def _read(self) -> None:
        # Answers are relayed upstream as they came (pipeline.relay): no tensors decoded.
        reader = dataport.FrameReader(agent_pb2.InferResponse, raw=True)
        reason = None
        try:
            while n := self._sock.recv_into(reader.get_buffer()):
                for frame in reader.buffer_updated(n):
                    ticket = self._pending.pop(frame.message.request_id, None)
                    if ticket is None:
                        continue
                    m = frame.message
                    ticket.answered(
                        HopError(*frame.error) if frame.error is not None
                        else HopError(status_code(m.status_code), m.status_message)
                        if m.status_code else Relayed(m, frame.header, frame.payload))
        except (OSError, dataport.DataProtocolError) as exc:
            reason = str(exc)
        self._alive = False
        self._hang_up()
        error = data_port_lost(self.address, reason)
        while self._pending:
            _, ticket = self._pending.popitem()
            ticket.answered(error)

    def _hang_up(self) -> None:
        self._alive = False
        try:
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes the reader thread
        except OSError:
            pass

    async def close(self) -> None:
        self._hang_up()
        self._sock.close()


class GrpcLink:
    """Requests to a hop without a data port, over gRPC Infer on the agent's event loop."""

    carrier = "grpc"

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop,
                 chunk_bytes: int | None) -> None:
        self.address = address
        self._loop = loop
        self._stream = InferStream(address, use_data_port=False,
                                   **({"chunk_bytes": chunk_bytes} if chunk_bytes else {}))
        self._calls: set[concurrent.futures.Future[Reply]] = set()

    @property
    def alive(self) -> bool:
        return True   # the stream reconnects by itself

    @property
    def outstanding(self) -> int:
        return len(self._calls)

    def send(self, deployment: str, stage: int, arrays: Mapping[str, np.ndarray],
             ticket: Ticket) -> None:
        call = asyncio.run_coroutine_threadsafe(self._stream.infer(deployment, stage, arrays),
                                                self._loop)
        self._calls.add(call)
        ticket.sent(self, call)

        def done(call: concurrent.futures.Future[Reply]) -> None:
            self._calls.discard(call)
            if call.cancelled():
                return
            exc = call.exception()
            result = call.result() if exc is None else exc if isinstance(exc, HopError) \
                else HopError(grpc.StatusCode.UNAVAILABLE, f"next hop {self.address}: {exc}")
            # Relaying may block on a slow sender: not on the event loop.
            self._loop.run_in_executor(None, ticket.answered, result)

        call.add_done_callback(done)

    def cancel(self, handle: object) -> None:
        handle.cancel()  # type: ignore[attr-defined]  # InferStream sends the hop a cancel

    async def close(self) -> None:
        await self._stream.close()
