"""The agent's data-port listener: one thread per connection, each connection a Session.

A connection's thread reads request frames (dataport.py) and runs each request's stage
itself, then goes on reading; answers go back on the connection they came in on (sent by
whichever thread finished the request, under the connection's lock). A frame whose tensors
cannot be read is answered with its status and the connection carries on; a peer that does
not speak the protocol is disconnected.

Backpressure comes from the blocking sockets: a sender that stops reading its answers
stalls the thread that answers it, and that thread stops reading new requests. A sender
that reads nothing for SEND_TIMEOUT_S is disconnected, so it cannot hold up answers to
others for long.

Shutdown mirrors the gRPC server's: stop accepting connections, finish what each sender had
sent before draining began, refuse what comes after with UNAVAILABLE, give it all the grace
period, then close.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
import threading

import grpc
from layerfleet.agent import dataport, transport
from layerfleet.agent.pipeline import Answer, Pipeline
from layerfleet.agent.session import Session
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 30
MAX_CONNECTIONS = 256   # a thread each; a fleet needs a handful (upstream stages, router)


class Upstream:
    """One sender's connection, served by its own thread."""

    def __init__(self, sock: socket.socket, pipeline: Pipeline, max_payload_bytes: int) -> None:
        self.sock = sock
        self.peer = "{}:{}".format(*sock.getpeername()[:2])
        self.session = Session(pipeline, self.send, inline=True)
        self._reader = dataport.FrameReader(agent_pb2.InferRequest,
                                            max_payload_bytes=max_payload_bytes)
        self._send_lock = threading.Lock()
        self._broken = False       # an answer could not be sent: the connection is done
        self._count_lock = threading.Lock()
        self.received = 0          # bytes read so far
        self.reading = False       # between a read and the last of its frames submitted
        self.drain_from: int | None = None   # bytes after this were sent once draining began

    def send(self, answer: Answer) -> None:
        with self._send_lock:
            if self._broken:
                return
            try:
                if answer.relayed is not None:
                    dataport.send_raw_frame(self.sock, *answer.relayed)
                else:
                    dataport.send_frame(self.sock, answer.header(), answer.outputs)
            except OSError as exc:   # gone, or not reading its answers: drop it
                self._broken = True
                log.warning("data port: cannot answer %s (%s); hanging up", self.peer, exc)
                self.hang_up()

    def serve(self) -> None:
        try:
            self.sock.sendall(dataport.PREFACE)
            while True:
                buffer = self._reader.get_buffer()
                with self._count_lock:
                    before, mark = self.received, self.drain_from
                if mark is not None and before < mark:
                    buffer = buffer[:mark - before]   # what was sent before draining, alone
                n = self.sock.recv_into(buffer)
                if not n:
                    return
                with self._count_lock:
                    self.received += n
                    self.reading = True
                    mark = self.drain_from   # draining may have begun during the read
                late = mark is not None and before >= mark
                try:
                    for frame in self._reader.buffer_updated(n):
                        self._request(frame, late)
                finally:
                    self.reading = False
        except dataport.DataProtocolError as exc:
            log.warning("data port: %s sent %s; hanging up", self.peer, exc)
        except OSError:
            pass   # closed
        finally:
            self.session.close()   # nobody is left to answer
            self.hang_up()
            self.sock.close()

    def _request(self, frame: dataport.Frame[agent_pb2.InferRequest], late: bool) -> None:
        m = frame.message
        if m.cancel:
            self.session.cancel(m.request_id)
        elif frame.error is not None:
            self.session.refuse(m.request_id, *frame.error)
        elif late:
            self.session.refuse(m.request_id, grpc.StatusCode.UNAVAILABLE,
                                "agent is shutting down")
        else:
            self.session.submit(m.request_id, m.deployment, m.stage, frame.arrays)

    def start_draining(self) -> None:
        """Requests already sent (read, or waiting in the kernel) still run; later ones
        are refused."""
        with self._count_lock:
            waiting = bytearray(4)
            try:
                fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, waiting)
            except (OSError, ValueError):   # closed meanwhile
                pass
            self.drain_from = self.received + struct.unpack("i", waiting)[0]

    @property
    def drained(self) -> bool:
        with self._count_lock:
            read_all = self.drain_from is None or self.received >= self.drain_from
            return read_all and not self.reading and not self.session.busy

    def hang_up(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class DataPortServer:
    def __init__(self, pipeline: Pipeline, *,
                 max_payload_bytes: int = dataport.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.pipeline = pipeline
        self.max_payload_bytes = max_payload_bytes
        self.port = 0
        self.draining = False
        self._listener: socket.socket | None = None
        self._upstreams: set[Upstream] = set()
        self._lock = threading.Lock()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); returns the port."""
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(listener,), name="data port",
                         daemon=True).start()
        return self.port

    @property
    def connections(self) -> list[Upstream]:
        with self._lock:
            return list(self._upstreams)

    def _accept(self, listener: socket.socket) -> None:
        context = transport.data_port_server_ssl()
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return   # closed: stopping
            try:
                if context is not None:
                    sock = context.wrap_socket(sock, server_side=True)
                dataport.tune(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                struct.pack("ll", SEND_TIMEOUT_S, 0))
                upstream = Upstream(sock, self.pipeline, self.max_payload_bytes)
            except OSError as exc:
                log.warning("data port: dropping a connection: %s", exc)
                sock.close()
                continue
            with self._lock:
                full = len(self._upstreams) >= MAX_CONNECTIONS
                if not full:
                    self._upstreams.add(upstream)
            if full:
                log.warning("data port: %d connections already; refusing %s", MAX_CONNECTIONS,
                            upstream.peer)
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(upstream,),
                             name=f"data port {upstream.peer}", daemon=True).start()

    def _serve(self, upstream: Upstream) -> None:
        try:
            upstream.serve()
        finally:
            with self._lock:
                self._upstreams.discard(upstream)

    async def stop(self, grace_s: float) -> None:
        if self._listener is None:
            return
        try:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accept thread
        except OSError:
            pass
        self._listener.close()
        self._listener = None
        self.draining = True
        upstreams = self.connections
        for upstream in upstreams:
            upstream.start_draining()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while not all(u.drained for u in upstreams):
            if loop.time() >= deadline:
                log.warning("data port: requests still running after %.1f s; dropping them",
                            grace_s)
                break
            await asyncio.sleep(0.01)
        for upstream in upstreams:
            upstream.hang_up()
