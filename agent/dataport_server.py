"""The agent's data-port listener: each connection is one sender's Session.

Requests arrive as data-port frames (dataport.py), run through the same Session as the gRPC
Infer stream, and their answers go back on the connection they came in on. A frame whose
tensors cannot be read is answered with its status and the connection carries on; a peer
that does not speak the protocol is disconnected.

Shutdown mirrors the gRPC server's: stop accepting connections, refuse new requests with
UNAVAILABLE, give the ones in flight the grace period, then close.
"""

from __future__ import annotations

import asyncio
import logging

from layerfleet.agent import dataport, transport
from layerfleet.agent.pipeline import Pipeline
from layerfleet.agent.session import Answer, Session
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)


class DataPortServer:
    def __init__(self, pipeline: Pipeline, *,
                 max_payload_bytes: int = dataport.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.pipeline = pipeline
        self.max_payload_bytes = max_payload_bytes
        self.port = 0
        self.draining = False
        self._server: asyncio.Server | None = None
        self._connections: dict[dataport.DataConnection[agent_pb2.InferRequest], Session] = {}

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, host.strip("[]") or None, port,
            ssl=transport.data_port_server_ssl())
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def connections(self) -> list[dataport.DataConnection[agent_pb2.InferRequest]]:
        return list(self._connections)

    def _connection(self) -> dataport.DataConnection[agent_pb2.InferRequest]:
        conn: dataport.DataConnection[agent_pb2.InferRequest]

        def send(answer: Answer) -> None:
            if not conn.closed:
                conn.send(answer.header(), answer.outputs)

        def on_frame(frame: dataport.Frame[agent_pb2.InferRequest]) -> None:
            m = frame.message
            if m.cancel:
                session.cancel(m.request_id)
            elif frame.error is not None:
                session.refuse(m.request_id, *frame.error)
            else:
                session.submit(m.request_id, m.deployment, m.stage, frame.arrays)

        def on_lost(reason: str | None) -> None:
            session.close()   # nobody is left to answer
            self._connections.pop(conn, None)

        conn = dataport.DataConnection(agent_pb2.InferRequest, on_frame, on_lost,
                                       max_payload_bytes=self.max_payload_bytes,
                                       pause_reading_when_full=True)
        session = Session(self.pipeline, send)
        self._connections[conn] = session
        return conn

    async def stop(self, grace_s: float) -> None:
        if self._server is None:
            return
        self._server.close()
        self.draining = True
        for session in self._connections.values():
            session.refusing = "agent is shutting down"
        busy = [s for s in self._connections.values() if s.busy]
        if busy:
            try:
                await asyncio.wait_for(asyncio.gather(*(s.drain() for s in busy)), grace_s)
            except TimeoutError:
                log.warning("data port: requests still running after %.1f s; dropping them",
                            grace_s)
        for conn in list(self._connections):
            conn.close()
        self._server = None

