"""Where this agent sends a request after its stage: the next hops, and failover between
replicas.

A `NextHop` is this agent's connection to one next-hop address: a carrier (carriers.py),
opened on first use, and the requests waiting on it. Connecting never holds a lock shared
with other addresses, and at most one connect per address is in flight; the request
threads that need it wait for that one, up to their deadline.

A `Ticket` is one forwarded request. It goes to one replica (BALANCED) or to hedge_k of them
at once (HEDGED), and is answered exactly once, with the first good answer. The failover
rules (failover.py) say which replica next: a copy that fails before answering (the hop
died, refused, was draining) goes again to a replica not tried yet, and a copy that has not
answered after a few of the hop's usual round trips (a stalled device) gets a twin on
another replica; whichever answers first wins and the others are cancelled. Past the
request's deadline it fails with DEADLINE_EXCEEDED and every copy is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from layerfleet.agent import answers, carriers, codecs, failover, transport, wire
from layerfleet.agent.answers import Answer, Failure, Outputs, Raw
from layerfleet.agent.carriers import Carrier, Outstanding
from layerfleet.agent.errors import DeadlineExceeded, StatusError, Unavailable
from layerfleet.agent.timers import Timer, Timers
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

# A next hop that takes no bytes for this long is stalled: the connection is given up.
SEND_STALL_S = 5.0


@dataclass(frozen=True, slots=True)
class Connection:
    """A live carrier to a next hop and the tickets waiting on it (a replacement carrier
    gets its own, so one that ends fails only what it carried)."""

    carrier: Carrier
    waiting: Outstanding[Ticket]


class NextHop:
    """This agent's connection to one next-hop address, and what failover knows of it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.connection: Connection | None = None
        self.failed_at = -1e9        # monotonic time of the last failure
        self.stalled_at = -1e9       # monotonic time a copy here last stalled
        self.round_trip_s = 0.0      # recent answers' round trip (EWMA)

    @property
    def outstanding(self) -> int:
        connection = self.connection
        return len(connection.waiting) if connection is not None else 0

    def replica(self) -> failover.Replica:
        return failover.Replica(self.address, self.outstanding, self.failed_at,
                                self.stalled_at, self.round_trip_s)

    def answered_in(self, seconds: float) -> None:
        self.round_trip_s = failover.round_trip(self.round_trip_s, seconds)
        self.stalled_at = -1e9


class NextHops:
    """Every next hop of this agent, by address (thread-safe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timers: Timers, *,
                 use_data_ports: bool = True, chunk_bytes: int | None = None,
                 workers: int = 4) -> None:
        self.loop = loop
        self.timers = timers
        self.use_data_ports = use_data_ports
        self.chunk_bytes = chunk_bytes or wire.DEFAULT_CHUNK_BYTES
        self._hops: dict[str, NextHop] = {}
        self._connecting: dict[str, concurrent.futures.Future[Connection]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._lock = threading.Lock()   # held for dictionary updates only, never for I/O
        # Retries and speculative twins are sent from here, not from a reader or timer
        # thread (a send may wait on a connect or a full socket).
        self.forwarders = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="retry")

    def hop(self, address: str) -> NextHop:
        with self._lock:
            hop = self._hops.get(address)
            if hop is None:
                hop = self._hops[address] = NextHop(address)
            return hop

    def kind(self, address: str) -> str:
        """How requests reach `address` now: 'dataport', 'grpc', or '' (not connected)."""
        connection = self.hop(address).connection
        return connection.carrier.kind if connection is not None else ""

    def best(self, addresses: Sequence[str], tried: set[str]) -> NextHop | None:
        """The replica to try next (failover.order), None when every one was tried."""
        hops = {a: self.hop(a) for a in addresses}
        ranked = failover.order([h.replica() for h in hops.values()], tried,
                                time.monotonic())
        return hops[ranked[0].address] if ranked else None

    def connection(self, hop: NextHop, timeout_s: float) -> Connection:
        """The hop's live connection, connecting (once, for every thread that asks) if
        needed; Unavailable if it cannot be reached within `timeout_s`."""
        connection = hop.connection
        if connection is not None and connection.carrier.alive:
            return connection
        with self._lock:
            future = self._connecting.get(hop.address)
            if future is None or future.done():
                future = self._connecting[hop.address] = asyncio.run_coroutine_threadsafe(
                    self._connect(hop), self.loop)
        try:
            return future.result(timeout=max(timeout_s, 0.001))
        except concurrent.futures.TimeoutError:
            raise Unavailable(f"next hop {hop.address} did not connect within "
                              f"{timeout_s:.1f} s") from None
        except StatusError:
            hop.failed_at = time.monotonic()
            raise

    async def _connect(self, hop: NextHop) -> Connection:
        channel = self._channels.get(hop.address)
        if channel is None:
            channel = self._channels[hop.address] = transport.channel(hop.address)
        waiting: Outstanding[Ticket] = Outstanding()

        def on_answer(answer: Answer) -> None:
            ticket = waiting.pop(answer.request_id)
            if ticket is not None:
                ticket.answered(hop, answer)

        def on_lost(error: StatusError) -> None:
            hop.failed_at = time.monotonic()
            for ticket in waiting.drain():
                ticket.answered(hop, Failure(0, error.code, error.message))

        try:
            carrier = await carriers.connect(
                hop.address, channel, use_data_port=self.use_data_ports, blocking=True,
                on_answer=self._off_loop(on_answer), on_lost=self._off_loop(on_lost),
                chunk_bytes=self.chunk_bytes)
        except StatusError:
            hop.failed_at = time.monotonic()
            raise
        if isinstance(carrier, carriers.DataPortCarrier):
            carrier.set_send_stall(SEND_STALL_S)
        else:
            carrier = _OnLoop(carrier, self.loop)
        hop.connection = Connection(carrier, waiting)
        return hop.connection

    def _off_loop(self, callback: Callable[[Any], None]) -> Callable[[Any], None]:
        """Answers from a gRPC carrier arrive on the loop; relaying one may wait on a slow
        sender's socket, which must not be the loop's."""
        def deliver(item: Any) -> None:
            if _on_loop(self.loop):
                self.forwarders.submit(callback, item)
            else:
                callback(item)
        return deliver

    def close(self) -> None:
        with self._lock:
            hops, self._hops = list(self._hops.values()), {}
            connecting, self._connecting = list(self._connecting.values()), {}
            channels, self._channels = list(self._channels.values()), {}
        for future in connecting:
            future.cancel()
        for hop in hops:
            if hop.connection is not None:
                hop.connection.carrier.close()
        for channel in channels:
            asyncio.run_coroutine_threadsafe(channel.close(), self.loop)
        self.forwarders.shutdown(wait=True, cancel_futures=True)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _OnLoop:
    """A carrier that lives on the event loop (gRPC), used from request threads."""

    def __init__(self, carrier: Carrier, loop: asyncio.AbstractEventLoop) -> None:
        self._carrier = carrier
        self._loop = loop
        self.address = carrier.address
        self.kind = carrier.kind

    @property
    def alive(self) -> bool:
        return self._carrier.alive

    def send(self, request_id: int, deployment: str, stage: int,
             arrays: codecs.Tensors, timeout_s: float) -> None:
        self._loop.call_soon_threadsafe(self._carrier.send, request_id, deployment, stage,
                                        arrays, timeout_s)

    def cancel(self, request_id: int) -> None:
        self._loop.call_soon_threadsafe(self._carrier.cancel, request_id)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._carrier.close)


class Ticket:
    """One request this agent forwarded to the next stage (see the module docstring).

    `reply` is called exactly once with the answer for our sender, unless `cancel` came
    first (then never). Answers arrive on carriers' reader threads and the retry workers.
    """

    def __init__(self, hops: NextHops, request_id: int, mine: agent_pb2.HopTiming, *,
                 deployment: str, stage: int, outputs: codecs.Tensors,
                 replicas: Sequence[str], hedge_k: int, deadline: float,
                 reply: Callable[[Answer], None]) -> None:
        self.hops = hops
        self.request_id = request_id
        self.mine = mine
        self.deployment = deployment
        self.stage = stage
        self.outputs = outputs
        self.reply = reply
        self.deadline = deadline
        self.sent_at = time.perf_counter()
        self._replicas = list(replicas)
        self._hedge_k = hedge_k
        self._lock = threading.Lock()
        self._tried: set[str] = set()
        self._copies: dict[str, _Copy] = {}   # by address: one copy per replica
        self._errors: list[Failure] = []
        self._timers: list[Timer] = []
        self.done = False

    # -- sending ------------------------------------------------------------------------

    def start(self) -> None:
        """Send the first copy (copies, when hedged); called by the request's own thread."""
        remaining = self.deadline - time.monotonic()
        self._timers.append(self.hops.timers.call_later(remaining, self._expired))
        for _ in range(max(self._hedge_k, 1)):
            if not self._send_next():
                break

    def _send_next(self) -> bool:
        """Send a copy to the best replica not tried yet; False when none is left (the
        failure that left none is recorded and answered once every copy is done)."""
        while True:
            with self._lock:
                if self.done:
                    return False
                hop = self.hops.best(self._replicas, self._tried)
                if hop is None:
                    settled = not self._copies
                    break
                self._tried.add(hop.address)
            try:
                self._send(hop)
                return True
            except StatusError as exc:
                with self._lock:
                    self._errors.append(Failure(self.request_id, exc.code, exc.message))
        if settled:
            self._give_up()
        return False

    def _send(self, hop: NextHop) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{self.deployment} stage {self.stage}: deadline passed "
                                   f"before {hop.address} was reached")
        connection = self.hops.connection(hop, remaining)
        request_id = connection.waiting.add(self)
        with self._lock:
            if self.done:
                connection.waiting.pop(request_id)
                return
            self._copies[hop.address] = _Copy(hop, connection, request_id, time.perf_counter())
        try:
            connection.carrier.send(request_id, self.deployment, self.stage, self.outputs,
                                    max(self.deadline - time.monotonic(), 1e-3))
        except StatusError:
            connection.waiting.pop(request_id)
            with self._lock:
                self._copies.pop(hop.address, None)
            hop.failed_at = time.monotonic()
            raise
        if len(self._replicas) > len(self._tried):   # a twin could go elsewhere if this stalls
            self._timers.append(self.hops.timers.call_later(
                failover.hedge_after_s(hop.replica()), lambda: self._stalled(hop)))

    # -- answers ------------------------------------------------------------------------

    def answered(self, hop: NextHop, answer: Answer) -> None:
        with self._lock:
            copy = self._copies.pop(hop.address, None)
            if self.done or copy is None:
                return
        hop.answered_in(time.perf_counter() - copy.sent_at)
        if isinstance(answer, Failure):
            self._copy_failed(answer)
        else:
            self._succeeded(answer)

    def _succeeded(self, answer: Outputs | Raw) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
            others = list(self._copies.values())
            self._copies.clear()
        self._stop_timers()
        self._cancel(others)   # hedged or speculative twins still running
        self.mine.forward_s = time.perf_counter() - self.sent_at
        self.reply(answers.relay(self.request_id, self.mine, answer))

    def _copy_failed(self, failure: Failure) -> None:
        with self._lock:
            self._errors.append(failure)
            outstanding = bool(self._copies)
        if failover.retryable(failure.code):
            self.hops.forwarders.submit(self._send_next_or_settle)
        elif not outstanding:
            self._give_up()

    def _send_next_or_settle(self) -> None:
        if not self._send_next():
            with self._lock:
                settled = not self._copies
            if settled:
                self._give_up()

    def _stalled(self, hop: NextHop) -> None:
        """A copy has not answered in a few round trips: a twin goes elsewhere."""
        with self._lock:
            if self.done or hop.address not in self._copies:
                return
        hop.stalled_at = time.monotonic()
        self.hops.forwarders.submit(self._send_next)

    def _expired(self) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
            copies = list(self._copies.values())
            self._copies.clear()
        self._stop_timers()
        self._cancel(copies)
        where = ", ".join(c.hop.address for c in copies) or "no replica"
        self.reply(Failure(self.request_id, grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"{self.deployment} stage {self.stage}: no answer from {where} "
                           f"before the deadline"))

    def _give_up(self) -> None:
        """Every replica tried, every copy failed: answer with the first real failure."""
        with self._lock:
            if self.done:
                return
            self.done = True
        self._stop_timers()
        code, message = failover.verdict([(e.code, e.message) for e in self._errors]) or (
            grpc.StatusCode.UNAVAILABLE,
            f"{self.deployment} stage {self.stage}: no replica to send to")
        self.reply(Failure(self.request_id, code, message))

    # -- giving up ----------------------------------------------------------------------

    def cancel(self) -> None:
        """Our sender gave up: drop every copy downstream, answer nothing."""
        with self._lock:
            if self.done:
                return
            self.done = True
            copies = list(self._copies.values())
            self._copies.clear()
        self._stop_timers()
        self._cancel(copies)

    @staticmethod
    def _cancel(copies: list[_Copy]) -> None:
        for copy in copies:
            if copy.connection.waiting.pop(copy.request_id) is not None:
                copy.connection.carrier.cancel(copy.request_id)

    def _stop_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()


@dataclass(frozen=True, slots=True)
class _Copy:
    """One copy of a ticket's request, sent to one replica."""

    hop: NextHop
    connection: Connection
    request_id: int
    sent_at: float
