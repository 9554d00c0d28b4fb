"""The data port: Infer requests and answers as raw bytes over one TCP connection.

Why not gRPC for activations: Python gRPC copies a tensor several times and runs HTTP/2
flow control through its poller thread; a 600 kB MobileNetV2 activation costs ~0.6 ms per
round trip in a bare grpc.aio echo here, where a socket moves it in ~0.15 ms
(docs/agent.md). gRPC stays the API (every RPC, and Infer for clients that want it); the
data port is the fast path for activations that an agent offers beside its gRPC port
(DeviceInfo.data_port) and senders use when they find it.

The wire contract is still agent.proto. A frame is

    u32 header_len | u64 payload_len   (little-endian)
    header         InferRequest (sender -> agent) or InferResponse (agent -> sender),
                   serialized, with every Tensor.data left empty
    payload        each tensor's raw bytes (dtype + shape from the header, C order,
                   little-endian), in header order, back to back

and each side opens the connection with PREFACE. The payload length rides in the fixed
header, so a frame whose tensors cannot be read (unknown dtype, sizes that do not add up,
too big) is skipped whole and answered with a status; only an unreadable header ends the
connection.

Receiving is zero-copy for big tensors: `FrameReader` hands out a view of a fresh numpy
array as the socket's receive buffer (the agent's threads `recv_into` it; asyncio senders
use it as a BufferedProtocol); small tensors and headers land in a scratch buffer first.
Sending hands the arrays' own memory to the socket. `FrameReader` and `encode_frame` are
pure (no I/O) and tested on their own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from layerfleet.agent import codecs, tensors
from layerfleet.agent.budget import Budget
from layerfleet.agent.errors import StatusError
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

PREFACE = b"LFDATA1\n"           # protocol and version; a wrong port fails fast
# Sent instead of PREFACE by an agent that cannot take the connection (its connection
# limit, or no thread to serve it), before it hangs up: the sender falls back to gRPC.
BUSY = b"LFBUSY1\n"
_FIXED = struct.Struct("<IQ")    # header_len, payload_len
# Headers are a request id, names, shapes and hop timings: a few hundred bytes. The cap
# keeps a corrupt length from making us buffer garbage.
MAX_HEADER_BYTES = 64 << 10
# Below this a tensor is copied out of the scratch buffer (cheap); above it, received
# straight into its own array. Also the most one recv() reads while headers are parsed.
SCRATCH_BYTES = 256 << 10
# Per-request payload cap (the gRPC path's message cap is per 1 MiB chunk; this is per
# request). An activation above it is answered RESOURCE_EXHAUSTED and skipped.
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30
# Above this much unsent data an asyncio sender waits (backpressure).
HIGH_WATER_BYTES = 64 << 20
COALESCE_BYTES = 64 << 10       # payload copied in with the header (encode_frame)
SOCKET_BUFFER_BYTES = 4 << 20    # lets the kernel take a whole activation in one send
# The unparsed tail of the scratch is always shorter than one header (anything longer is
# parsed or received in place), so moving it to the front leaves at least this much room.
_ROOM = MAX_HEADER_BYTES + _FIXED.size

Message = TypeVar("Message", agent_pb2.InferRequest, agent_pb2.InferResponse)


class DataProtocolError(Exception):
    """The peer is not speaking the data-port protocol (or a header is corrupt): hang up."""


class Busy(DataProtocolError):
    """The agent refused the connection (BUSY): use gRPC instead."""


def expect_preface(got: bytes, preface: bytes = PREFACE) -> None:
    """Check a peer's opening bytes (Busy, or DataProtocolError naming what came)."""
    if got == BUSY:
        raise Busy("the agent's data port is busy (connection limit); using gRPC")
    if got != preface:
        raise DataProtocolError(f"not a layerfleet data port (expected {preface!r}, got "
                                f"{got!r})")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes from a blocking socket (EOF before them: ConnectionError)."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


@dataclass
class Frame(Generic[Message]):
    """One request or answer off a connection. When the tensors could not be read, `arrays`
    is empty and `error` says why (the frame's bytes were skipped; the connection carries
    on)."""

    message: Message
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    error: tuple[grpc.StatusCode, str] | None = None
    held_bytes: int = 0   # reserved in the reader's budget for this frame's tensors
    # A reader with raw=True keeps the frame as it came instead: to relay it unparsed.
    header: bytes = b""
    payload: np.ndarray | None = None


# -- sending ---------------------------------------------------------------------------


def encode_frame(message: Message, arrays: codecs.Tensors | None = None
                 ) -> list[bytes | memoryview]:
    """The pieces to write for one frame: fixed header + header, then each tensor's bytes.

    `message.tensors` must be empty; it is filled with the arrays' names, dtypes, shapes
    (and an Encoded activation's Encoding: codecs.py).
    The header and the first COALESCE_BYTES of payload go out as one piece: a frame split
    into a tiny segment and the rest would wake the receiver twice (with TCP_NODELAY each
    write is its own segment). The rest of a big tensor is handed over without a copy.
    """
    views: list[memoryview] = []
    for name, array in (arrays or {}).items():
        if isinstance(array, codecs.Encoded):
            message.tensors.add(name=name, dtype=tensors.dtype_code(array.dtype),
                                shape=array.shape, encoding=array.encoding)
            arr = np.ascontiguousarray(array.payload)
        else:
            code, arr = tensors.wire_order(array)
            message.tensors.add(name=name, dtype=code, shape=arr.shape)
        views.append(memoryview(arr.reshape(-1).view(np.uint8)))
    return _pieces(message.SerializeToString(), views)


def _pieces(header: bytes, views: list[memoryview]) -> list[bytes | memoryview]:
    first: list[bytes | memoryview] = [_FIXED.pack(len(header), sum(v.nbytes for v in views)),
                                       header]
    room = COALESCE_BYTES
    while views and room > 0:
        head, views[0] = views[0][:room], views[0][room:]
        first.append(head)
        room -= head.nbytes
        if not views[0].nbytes:
            views.pop(0)
    return [b"".join(first), *views]


def send_frame(sock: socket.socket, message: Message,
               arrays: codecs.Tensors | None = None) -> None:
    """Write one frame on a blocking socket (callers serialize writers with a lock)."""
    for piece in encode_frame(message, arrays):
        sock.sendall(piece)


def send_raw_frame(sock: socket.socket, header: bytes, payload: np.ndarray | None) -> None:
    """Write a frame whose header is already serialized and whose payload is the tensors'
    bytes back to back (a relayed answer)."""
    views = [memoryview(payload.reshape(-1).view(np.uint8))] if payload is not None else []
    for piece in _pieces(header, views):
        sock.sendall(piece)


def split_payload(message: agent_pb2.InferRequest | agent_pb2.InferResponse,
                  payload: np.ndarray | None) -> dict[str, np.ndarray]:
    """The arrays a raw frame's payload holds, as views (ValueError if they do not fit)."""
    size = payload.nbytes if payload is not None else 0
    try:
        plan = _plan(message, size, size)
    except _Unreadable as exc:
        raise ValueError(exc.status[1]) from None
    arrays, offset = {}, 0
    for spec in plan:
        assert payload is not None
        raw = payload.reshape(-1).view(np.uint8)[offset:offset + spec.nbytes]
        arrays[spec.name] = raw.view(spec.dtype).reshape(spec.shape)
        offset += spec.nbytes
    return arrays


def tune(sock: socket.socket) -> None:
    """No Nagle delay, and buffers that take a whole activation in one send."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


# -- receiving -------------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


class _Unreadable(Exception):
    """A frame whose tensors cannot be read: skipped, and answered with this status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = (code, message)


def _plan(message: agent_pb2.InferRequest | agent_pb2.InferResponse, payload_len: int,
          max_payload: int) -> list[_Tensor]:
    """The tensors a frame's payload holds (or _Unreadable saying why it cannot be read)."""
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    if payload_len > max_payload:
        raise _Unreadable(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"request of {payload_len} bytes is over this agent's limit of "
                          f"{max_payload} bytes per request (--max-request-bytes)")
    plan: list[_Tensor] = []
    for t in message.tensors:
        try:   # an encoded tensor's payload may be its values compressed (codecs.py)
            dt, shape, nbytes = tensors.payload_layout(t, max_payload)
        except tensors.TensorError as exc:
            raise _Unreadable(invalid, str(exc)) from None
        if t.data or any(p.name == t.name for p in plan):
            why = "carries inline data" if t.data else "appears twice"
            raise _Unreadable(invalid, f"tensor {t.name!r} {why}")
        plan.append(_Tensor(t.name, dt, shape, nbytes))
    total = sum(p.nbytes for p in plan)
    if total != payload_len:
        described = [f"{p.name} {p.dtype.name}{list(p.shape)}" for p in plan]
        raise _Unreadable(invalid, f"tensors {described} need {total} bytes, the frame "
                                   f"carries {payload_len}")
    return plan


def _whole(payload_len: int, max_payload: int) -> list[_Tensor]:
    """A raw frame's payload, kept as one byte array."""
    if payload_len > max_payload:
        raise _Unreadable(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"frame of {payload_len} bytes is over the limit of {max_payload}")
    return [_Tensor("", np.dtype(np.uint8), (payload_len,), payload_len)] if payload_len else []


class FrameReader(Generic[Message]):
    """Turns received bytes into Frames. Feed it like an asyncio.BufferedProtocol:
    `get_buffer()` says where the next bytes go, `buffer_updated(n)` returns the frames
    they completed. Raises DataProtocolError on a bad preface or an unreadable header."""

    def __init__(self, message_type: type[Message], *,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 preface: bytes = PREFACE, raw: bool = False,
                 budget: Budget | None = None) -> None:
        """`budget`: reserve each frame's payload there once its header is read (a frame
        that does not fit is skipped and answered RESOURCE_EXHAUSTED); the reservation
        travels with the Frame (`held_bytes`) and is its receiver's to give back."""
        self._type = message_type
        self._budget = budget
        self._raw = raw
        self._max_payload = max_payload_bytes
        self._preface = preface
        self._scratch = bytearray(SCRATCH_BYTES)
        self._view = memoryview(self._scratch)
        self._start = self._end = 0       # unparsed bytes are scratch[start:end]
        self._fixed: tuple[int, int] | None = None
        self._frame: Frame[Message] | None = None
        self._plan: list[_Tensor] = []
        self._skip = 0                    # payload bytes of a frame being skipped
        self._target: np.ndarray | None = None  # a big tensor being received in place
        self._filled = 0

    @property
    def greeted(self) -> bool:
        """The peer's preface has arrived."""
        return not self._preface

    @property
    def mid_frame(self) -> bool:
        """Part of a frame has arrived and the rest has not."""
        return (self._start != self._end or self._fixed is not None or self._frame is not None
                or self._target is not None)

    def abandon(self) -> None:
        """The connection ended: give back what the frame in progress had reserved, and the
        scratch buffer (the reader may live on in a reference cycle until the next full
        garbage collection; its memory should not)."""
        if self._frame is not None and self._budget is not None and self._frame.held_bytes:
            self._budget.give(self._frame.held_bytes)
            self._frame.held_bytes = 0
        self._frame = self._target = None
        self._view.release()
        self._scratch = bytearray()
        self._view = memoryview(self._scratch)

    def get_buffer(self) -> memoryview:
        if self._target is not None:
            return memoryview(self._target)[self._filled:]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._scratch) - self._end < _ROOM:  # keep the unparsed tail, room after it
            tail = self._end - self._start
            self._view[:tail] = self._view[self._start:self._end]
            self._start, self._end = 0, tail
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> list[Frame[Message]]:
        if self._target is not None:
            self._filled += nbytes
            if self._filled < self._target.size:
                return []
            self._take(self._target)
            self._target = None
        else:
            self._end += nbytes
        return self._parse()

    def _take(self, raw: np.ndarray) -> None:
        spec = self._plan.pop(0)
        assert self._frame is not None
        if self._raw:
            self._frame.payload = raw
        else:
            self._frame.arrays[spec.name] = raw.view(spec.dtype).reshape(spec.shape)

    def _parse(self) -> list[Frame[Message]]:
        done: list[Frame[Message]] = []
        while True:
            available = self._end - self._start
            if self._preface:
                if available < len(self._preface):
                    return done
                got = bytes(self._view[self._start:self._start + len(self._preface)])
                expect_preface(got, self._preface)
                self._start += len(self._preface)
                self._preface = b""
            elif self._frame is None:
                if self._fixed is None:
                    if available < _FIXED.size:
                        return done
                    self._fixed = _FIXED.unpack_from(self._scratch, self._start)
                    self._start += _FIXED.size
                    if self._fixed[0] > MAX_HEADER_BYTES:
                        raise DataProtocolError(f"frame header of {self._fixed[0]} bytes "
                                                f"(limit {MAX_HEADER_BYTES})")
                    continue
                header_len, payload_len = self._fixed
                if available < header_len:
                    return done
                try:
                    message = self._type.FromString(
                        self._view[self._start:self._start + header_len])
                except DecodeError as exc:
                    raise DataProtocolError(f"unreadable frame header: {exc}") from None
                self._fixed = None
                self._frame = Frame(message)
                if self._raw:
                    self._frame.header = bytes(
                        self._view[self._start:self._start + header_len])
                self._start += header_len
                try:
                    self._plan = (_plan(message, payload_len, self._max_payload)
                                  if not self._raw else _whole(payload_len, self._max_payload))
                    if self._budget is not None and payload_len:
                        try:
                            self._budget.take(payload_len)
                        except StatusError as exc:
                            raise _Unreadable(exc.code, exc.message) from None
                        self._frame.held_bytes = payload_len
                except _Unreadable as exc:
                    self._plan = []
                    self._frame.error = exc.status
                    self._skip = payload_len
            elif self._skip:
                step = min(self._skip, available)
                self._start += step
                self._skip -= step
                if self._skip:
                    return done
            elif self._plan:
                size = self._plan[0].nbytes
                if available >= size:   # small, or already here: copy out of the scratch
                    raw = np.frombuffer(self._scratch, np.uint8, size, self._start).copy()
                    self._start += size
                    self._take(raw)
                    continue
                self._target = np.empty(size, np.uint8)   # big: receive it in place
                self._target[:available] = self._view[self._start:self._end]
                self._filled = available
                self._start = self._end
                return done
            else:
                done.append(self._frame)
                self._frame = None


# -- the connection --------------------------------------------------------------------


class DataConnection(asyncio.BufferedProtocol, Generic[Message]):
    """An asyncio sender's end of a data-port connection (stream.py): frames in through
    `on_frame`, frames out through `send`.

    `on_lost(reason)` is called once when the connection ends (reason None: closed
    cleanly). Backpressure: `send` never blocks; `writable()` waits while more than
    HIGH_WATER_BYTES are unsent.
    """

    def __init__(self, incoming: type[Message], on_frame: Callable[[Frame[Message]], None],
                 on_lost: Callable[[str | None], None], *,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self._reader: FrameReader[Message] = FrameReader(incoming,
                                                         max_payload_bytes=max_payload_bytes)
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._writable = asyncio.Event()
        self._writable.set()
        self._error: str | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        # Done once the peer's preface arrived (a Busy or foreign peer: its error).
        self.greeted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            tune(sock)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        transport.set_write_buffer_limits(high=HIGH_WATER_BYTES)
        transport.write(PREFACE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self._reader.buffer_updated(nbytes)
        except DataProtocolError as exc:
            if not self.greeted.done():
                self.greeted.set_exception(exc)
            else:
                log.warning("data port: %s sent %s; hanging up", self.peer, exc)
            self._error = str(exc)
            assert self.transport is not None
            self.transport.abort()
            return
        if self._reader.greeted and not self.greeted.done():
            self.greeted.set_result(None)
        for frame in frames:
            self._on_frame(frame)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if not self.greeted.done():
            self.greeted.set_exception(ConnectionError("closed before its preface"))
            self.greeted.exception()   # retrieved: nobody may be waiting any more
        reason = self._error or (str(exc) if exc else None)
        self._on_lost(reason)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def writable(self) -> None:
        await self._writable.wait()

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def send(self, message: agent_pb2.InferRequest | agent_pb2.InferResponse,
             arrays: codecs.Tensors | None = None) -> None:
        """Write one frame (synchronously: frames never interleave)."""
        assert self.transport is not None
        for piece in encode_frame(message, arrays):
            self.transport.write(piece)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
