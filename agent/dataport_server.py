"""The agent's data-port listener: one thread per connection, each connection a Session.

A connection's thread reads request frames (dataport.py) and runs each request's stage
itself, then goes on reading; answers go back on the connection they came in on (sent by
whichever thread finished the request, under the connection's lock). Before it runs a
request the thread reads whatever else has already arrived, so a cancel sent while the
request waited (a hedged twin answered elsewhere) drops it before it runs. A frame whose
tensors cannot be read is answered with its status and the connection carries on; a peer
that does not speak the protocol is disconnected.

Limits, so that no sender can take the agent down:
- backpressure from the blocking sockets: a sender that stops reading its answers stalls
  the thread that answers it, which stops reading new requests; one that reads nothing for
  SEND_TIMEOUT_S is disconnected;
- a frame that stops arriving halfway for STALL_S, or a connection idle for IDLE_S, is
  disconnected and its memory released; frames are reserved in the agent's Budget;
- at most `max_connections` connections: past it the longest-idle one is closed if it has
  been idle EVICT_IDLE_S, else the new sender is told BUSY (and falls back to gRPC), as it
  is when no thread can be started for it. The listener itself never dies of it.

Shutdown mirrors the gRPC server's: stop accepting connections, finish what each sender had
sent before draining began, refuse what comes after with UNAVAILABLE, give it all the grace
period, then close.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import socket
import ssl
import struct
import termios
import threading
import time

from layerfleet.agent import codecs, dataport, transport
from layerfleet.agent.answers import Answer, Failure, Raw, header
from layerfleet.agent.budget import Budget
from layerfleet.agent.errors import StatusError, Unavailable
from layerfleet.agent.pipeline import Pipeline
from layerfleet.agent.session import Session
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 30
STALL_S = 10.0
IDLE_S = 300.0
EVICT_IDLE_S = 5.0
MAX_CONNECTIONS = 128     # a thread each; a fleet needs a handful (upstream stages, router)
ACCEPT_FAILURES_UNHEALTHY = 20   # failed accepts in a row (0.1 s apart) before health says so
# What one connection reads ahead of the request it runs, to see cancels early: a few
# frames, so that a sender that stops reading its answers still stops us reading soon.
READ_AHEAD_FRAMES = 16
READ_AHEAD_BYTES = 4 << 20


def _available(sock: socket.socket) -> int:
    """Bytes waiting in the kernel for this socket (FIONREAD)."""
    waiting = bytearray(4)
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)
    except (OSError, ValueError):   # closed meanwhile
        return 0
    return int(struct.unpack("i", waiting)[0])


def _seconds(value: float) -> bytes:
    return struct.pack("ll", int(value), int(value % 1 * 1e6))


class Upstream:
    """One sender's connection, served by its own thread."""

    def __init__(self, sock: socket.socket, pipeline: Pipeline, budget: Budget,
                 max_payload_bytes: int) -> None:
        self.sock = sock
        self.peer = "{}:{}".format(*sock.getpeername()[:2])
        self.budget = budget
        self.session = Session(pipeline, self.send, budget=budget, inline=True)
        self._reader = dataport.FrameReader(agent_pb2.InferRequest,
                                            max_payload_bytes=max_payload_bytes, budget=budget)
        self._queue: collections.deque[tuple[dataport.Frame[agent_pb2.InferRequest], bool]] \
            = collections.deque()
        self._queued_bytes = 0
        self._send_lock = threading.Lock()
        self._broken = False       # an answer could not be sent: the connection is done
        self._count_lock = threading.Lock()
        self.received = 0          # bytes read so far
        self.reading = False       # between a read and the last of its frames queued
        self.drain_from: int | None = None   # bytes after this were sent once draining began
        self.last_active = time.monotonic()

    @property
    def idle(self) -> bool:
        return not self.session.busy and not self._queue and not self._reader.mid_frame

    def send(self, answer: Answer) -> None:
        with self._send_lock:
            if self._broken:
                return
            try:
                if isinstance(answer, Raw):
                    dataport.send_raw_frame(self.sock, answer.header, answer.payload)
                else:
                    dataport.send_frame(self.sock, header(answer),
                                        None if isinstance(answer, Failure) else answer.outputs)
            except OSError as exc:   # gone, or not reading its answers: drop it
                self._broken = True
                log.warning("data port: cannot answer %s (%s); hanging up", self.peer, exc)
                self.hang_up()

    def serve(self) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _seconds(STALL_S))
            self.sock.sendall(dataport.PREFACE)
            while True:
                if self._queue:
                    self._receive(wait=False)   # cancels that came in meanwhile
                    if self._queue:
                        self._run(*self._pop())
                elif not self._receive(wait=True):
                    return
        except dataport.DataProtocolError as exc:
            log.warning("data port: %s sent %s; hanging up", self.peer, exc)
        except OSError:
            pass   # closed
        finally:
            self.session.close()   # nobody is left to answer
            for frame, _ in self._queue:
                self._give_back(frame)
            self._queue.clear()
            self._reader.abandon()
            self.hang_up()
            self.sock.close()

    def _receive(self, *, wait: bool) -> bool:
        """Read what the socket has (waiting for it if `wait`) and queue its frames;
        False when the sender has closed, was stalled or idle too long."""
        if not wait and (len(self._queue) >= READ_AHEAD_FRAMES or not _available(self.sock)
                         or self._queued_bytes > READ_AHEAD_BYTES):
            return True
        buffer = self._reader.get_buffer()
        with self._count_lock:
            before, mark = self.received, self.drain_from
        if mark is not None and before < mark:
            buffer = buffer[:mark - before]   # what was sent before draining, alone
        try:
            n = self.sock.recv_into(buffer)
        except (BlockingIOError, ssl.SSLWantReadError):   # SO_RCVTIMEO: nothing for STALL_S
            if self._reader.mid_frame:
                log.warning("data port: %s stopped sending halfway through a frame for "
                            "%.0f s; hanging up", self.peer, STALL_S)
                return False
            idle_too_long = time.monotonic() - self.last_active > IDLE_S
            return self.session.busy or not idle_too_long
        if not n:
            return False
        self.last_active = time.monotonic()
        with self._count_lock:
            self.received += n
            self.reading = True
            mark = self.drain_from   # draining may have begun during the read
        late = mark is not None and before >= mark
        try:
            for frame in self._reader.buffer_updated(n):
                if frame.message.cancel:
                    self._cancel(frame.message.request_id)
                else:
                    self._queue.append((frame, late))
                    self._queued_bytes += frame.held_bytes
        finally:
            self.reading = False
        return True

    def _pop(self) -> tuple[dataport.Frame[agent_pb2.InferRequest], bool]:
        frame, late = self._queue.popleft()
        self._queued_bytes -= frame.held_bytes
        return frame, late

    def _cancel(self, request_id: int) -> None:
        for i, (frame, _) in enumerate(self._queue):
            if frame.message.request_id == request_id:   # read but not run: never runs
                del self._queue[i]
                self._queued_bytes -= frame.held_bytes
                self._give_back(frame)
                return
        self.session.cancel(request_id)

    def _run(self, frame: dataport.Frame[agent_pb2.InferRequest], late: bool) -> None:
        m = frame.message
        if frame.error is not None:
            self._give_back(frame)
            self.session.refuse(m.request_id, StatusError(*frame.error))
        elif late:
            self._give_back(frame)
            self.session.refuse(m.request_id, Unavailable("agent is shutting down"))
        else:
            self.session.submit(m.request_id, m.deployment, m.stage, frame.arrays,
                                timeout_s=m.timeout_s, held_bytes=frame.held_bytes,
                                encoded=codecs.encoded_headers(m.tensors))

    def _give_back(self, frame: dataport.Frame[agent_pb2.InferRequest]) -> None:
        if frame.held_bytes:
            self.budget.give(frame.held_bytes)
            frame.held_bytes = 0

    def start_draining(self) -> None:
        """Requests already sent (read, or waiting in the kernel) still run; later ones
        are refused."""
        with self._count_lock:
            self.drain_from = self.received + _available(self.sock)

    @property
    def drained(self) -> bool:
        with self._count_lock:
            read_all = self.drain_from is None or self.received >= self.drain_from
            return read_all and not self.reading and not self._queue and not self.session.busy

    def hang_up(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class DataPortServer:
    def __init__(self, pipeline: Pipeline, budget: Budget, *,
                 max_payload_bytes: int = dataport.DEFAULT_MAX_PAYLOAD_BYTES,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.pipeline = pipeline
        self.budget = budget
        self.max_payload_bytes = max_payload_bytes
        self.max_connections = max_connections
        self.port = 0
        self.draining = False
        self.refused = 0    # connections told BUSY
        self._accept_failures = 0   # in a row
        self._most = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._upstreams: set[Upstream] = set()
        self._threads: set[threading.Thread] = set()
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
        self._acceptor = threading.Thread(target=self._accept, args=(listener,),
                                          name="data port", daemon=True)
        self._acceptor.start()
        return self.port

    @property
    def healthy(self) -> bool:
        """Still accepting connections (health and the watchdog report it)."""
        return (self._acceptor is not None and self._acceptor.is_alive()
                and self._accept_failures < ACCEPT_FAILURES_UNHEALTHY)

    def most_connections(self) -> int:
        """The most connections open at once since the last call (main.py gives memory
        back after a storm of them)."""
        with self._lock:
            most, self._most = self._most, len(self._upstreams)
            return most

    @property
    def connections(self) -> list[Upstream]:
        with self._lock:
            return list(self._upstreams)

    def _accept(self, listener: socket.socket) -> None:
        context = transport.data_port_server_ssl()
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self._listener is None:
                    return   # closed: stopping
                self._accept_failures += 1   # e.g. EMFILE: keep trying, and say so
                if self._accept_failures in (1, ACCEPT_FAILURES_UNHEALTHY) or \
                        self._accept_failures % 600 == 0:
                    log.warning("data port: accept failed %d times in a row (%s)",
                                self._accept_failures, exc)
                time.sleep(0.1)
                continue
            self._accept_failures = 0
            try:
                self._admit(sock, context)
            except Exception:   # whatever one connection does, the listener carries on
                log.exception("data port: dropping a connection")
                sock.close()

    def _admit(self, sock: socket.socket, context: object) -> None:
        try:
            if context is not None:
                sock = context.wrap_socket(sock, server_side=True)  # type: ignore[attr-defined]
            dataport.tune(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _seconds(SEND_TIMEOUT_S))
            upstream = Upstream(sock, self.pipeline, self.budget, self.max_payload_bytes)
        except OSError as exc:
            log.warning("data port: dropping a connection: %s", exc)
            sock.close()
            return
        if not self._make_room():
            self._refuse(upstream, f"{self.max_connections} connections already")
            return
        thread = threading.Thread(target=self._serve, args=(upstream,),
                                  name=f"data port {upstream.peer}", daemon=True)
        with self._lock:
            self._upstreams.add(upstream)
            self._threads.add(thread)
            self._most = max(self._most, len(self._upstreams))
        try:
            thread.start()
        except RuntimeError as exc:   # no thread to be had (TasksMax, memory)
            with self._lock:
                self._upstreams.discard(upstream)
                self._threads.discard(thread)
            self._refuse(upstream, f"no thread to serve it ({exc})")

    def _make_room(self) -> bool:
        """Room for one more connection: at the limit, close the longest-idle one if it
        has been idle EVICT_IDLE_S."""
        with self._lock:
            if len(self._upstreams) < self.max_connections:
                return True
            idle = [u for u in self._upstreams if u.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda u: u.last_active)
        if time.monotonic() - oldest.last_active < EVICT_IDLE_S:
            return False
        log.info("data port: closing %s, idle %.0f s, to make room", oldest.peer,
                 time.monotonic() - oldest.last_active)
        oldest.hang_up()
        return True

    def _refuse(self, upstream: Upstream, why: str) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 100 == 0:   # a storm logs a line, not a flood
            log.warning("data port: refusing %s: %s (it falls back to gRPC; %d refused so "
                        "far)", upstream.peer, why, self.refused)
        try:
            upstream.sock.sendall(dataport.BUSY)
        except OSError:
            pass
        upstream.hang_up()
        upstream.sock.close()

    def _serve(self, upstream: Upstream) -> None:
        try:
            upstream.serve()
        finally:
            with self._lock:
                self._upstreams.discard(upstream)
                self._threads.discard(threading.current_thread())

    async def stop(self, grace_s: float) -> None:
        if self._listener is None:
            return
        listener, self._listener = self._listener, None
        try:
            listener.shutdown(socket.SHUT_RDWR)   # wakes the accept thread
        except OSError:
            pass
        listener.close()
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
        with self._lock:
            threads = list(self._threads)
        if self._acceptor is not None:
            threads.append(self._acceptor)
        await asyncio.to_thread(_join_all, threads, 5.0)


def _join_all(threads: list[threading.Thread], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
