"""Requests and responses on the Infer stream: chunking big tensors, reassembling them.

A request (or response) whose tensor bytes exceed `chunk_bytes` is sent as several
messages with the same request_id: each carries a slice of one tensor's data (dtype and
shape ride on the first slice only) and `more=True` on all but the last. Small ones - the
common case - are one message and decode without a copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from layerfleet.agent import codecs, tensors
from layerfleet.agent.budget import Budget
from layerfleet.agent.errors import ResourceExhausted, StatusError
from layerfleet.v1 import agent_pb2, tensor_pb2

# Measured on loopback (bench/agent_latency.py, docs/agent.md): 1 MiB chunks move an
# 8 MiB activation as fast as one 8 MiB message, and keep each message small enough that
# one big request does not stall the small ones sharing the stream.
DEFAULT_CHUNK_BYTES = 1 << 20


def split_tensors(encoded: list[tensor_pb2.Tensor], chunk_bytes: int
                  ) -> Iterator[tuple[list[tensor_pb2.Tensor], bool]]:
    """Group tensors into messages of at most ~chunk_bytes; yields (tensors, more)."""
    total = sum(len(t.data) for t in encoded)
    if total <= chunk_bytes:
        yield encoded, False
        return
    pieces: list[tensor_pb2.Tensor] = []
    for t in encoded:
        view = memoryview(t.data)
        if len(view) <= chunk_bytes:
            pieces.append(t)
            continue
        for offset in range(0, len(view), chunk_bytes):
            part = tensor_pb2.Tensor(name=t.name, data=bytes(view[offset:offset + chunk_bytes]))
            if offset == 0:
                part.dtype = t.dtype
                part.shape.extend(t.shape)
                if t.HasField("encoding"):
                    part.encoding.CopyFrom(t.encoding)
            pieces.append(part)
    batch: list[tensor_pb2.Tensor] = []
    size = 0
    for piece in pieces:
        if batch and size + len(piece.data) > chunk_bytes:
            yield batch, True
            batch, size = [], 0
        batch.append(piece)
        size += len(piece.data)
    yield batch, False


def requests(request_id: int, deployment: str, stage: int, arrays: codecs.Tensors,
             chunk_bytes: int = DEFAULT_CHUNK_BYTES, timeout_s: float = 0.0
             ) -> Iterator[agent_pb2.InferRequest]:
    """The messages of one request (an Encoded activation goes with its Encoding)."""
    wire_tensors = [
        tensors.encode_payload(name, a.payload, a.dtype, a.shape, a.encoding)
        if isinstance(a, codecs.Encoded) else tensors.encode(name, a)
        for name, a in arrays.items()]
    for group, more in split_tensors(wire_tensors, chunk_bytes):
        yield agent_pb2.InferRequest(request_id=request_id, deployment=deployment, stage=stage,
                                     tensors=group, more=more, timeout_s=timeout_s)


def responses(request_id: int, arrays: Mapping[str, np.ndarray] | None,
              hops: list[agent_pb2.HopTiming], *, exited_at_stage: int = -1,
              status_code: int = 0, status_message: str = "",
              chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[agent_pb2.InferResponse]:
    if status_code or not arrays:
        yield agent_pb2.InferResponse(request_id=request_id, hops=hops,
                                      exited_at_stage=exited_at_stage,
                                      status_code=status_code, status_message=status_message)
        return
    groups = list(split_tensors(tensors.encode_many(arrays), chunk_bytes))
    for i, (group, more) in enumerate(groups):
        last = i == len(groups) - 1
        yield agent_pb2.InferResponse(request_id=request_id, tensors=group, more=more,
                                      hops=hops if last else [],
                                      exited_at_stage=exited_at_stage)


class RequestTooLarge(ResourceExhausted):
    """A chunked request that grew past the agent's per-request limit."""


@dataclass
class _Partial:
    first: object
    parts: dict[str, list[bytes]] = field(default_factory=dict)
    meta: dict[str, tuple[np.dtype, tuple[int, ...], int]] = field(default_factory=dict)
    headers: dict[str, tensor_pb2.Tensor] = field(default_factory=dict)   # encoded ones
    size: int = 0        # bytes received so far
    declared: int = 0    # bytes its tensors' shapes need
    held: int = 0        # of those, reserved in the budget
    updated: float = field(default_factory=time.monotonic)   # its last chunk's arrival


@dataclass(frozen=True, slots=True)
class Whole:
    """A request (or response) with all its chunks: its first message, its arrays, and the
    bytes reserved for it in the budget, now its receiver's to give back. `encoded`: the
    headers of tensors that came with an Encoding (their arrays are payloads for
    codecs.to_contract)."""

    first: Any
    arrays: dict[str, np.ndarray]
    held_bytes: int = 0
    encoded: dict[str, tensor_pb2.Tensor] = field(default_factory=dict)


def _joined(name: str, chunks: list[bytes], dtype: np.dtype, shape: tuple[int, ...],
            nbytes: int) -> np.ndarray:
    data = b"".join(chunks)
    if len(data) != nbytes:
        raise tensors.TensorError(f"tensor {name!r}: {len(data)} bytes for shape "
                                  f"{list(shape)} {dtype.name}, expected {nbytes}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


class Assembler:
    """Collects chunked messages per request_id; returns a Whole when one is complete.

    `max_bytes` bounds one request's tensor bytes (RequestTooLarge past it), and `budget`,
    when given, holds what every half-received request declared (ResourceExhausted when it
    is full), so a sender cannot make the agent buffer without end.
    """

    def __init__(self, max_bytes: int | None = None, budget: Budget | None = None) -> None:
        self._partial: dict[int, _Partial] = {}
        self._refused: set[int] = set()
        self.max_bytes = max_bytes
        self._budget = budget

    def add(self, message: agent_pb2.InferRequest | agent_pb2.InferResponse) -> Whole | None:
        request_id = message.request_id
        if request_id in self._refused:   # the rest of a request already refused
            if not message.more:
                self._refused.discard(request_id)
            return None
        try:
            return self._add(message)
        except StatusError:
            # The request is refused as a whole: its later chunks are skipped, not read
            # as a new request (which would answer its id twice).
            self._release(self._partial.pop(request_id, None))
            if message.more:
                self._refused.add(request_id)
            raise

    def _add(self, message: agent_pb2.InferRequest | agent_pb2.InferResponse) -> Whole | None:
        request_id = message.request_id
        partial = self._partial.get(request_id)
        size = sum(len(t.data) for t in message.tensors) + (partial.size if partial else 0)
        limit = self.max_bytes if self.max_bytes is not None else tensors.MAX_TENSOR_BYTES
        if size > limit:
            raise RequestTooLarge(f"request {request_id} carries more than {self.max_bytes} "
                                  f"bytes of tensors, this agent's limit per request "
                                  f"(--max-request-bytes)")
        if partial is None and not message.more:
            return Whole(message, tensors.decode_many(message.tensors),  # zero-copy path
                         encoded=codecs.encoded_headers(message.tensors))
        if partial is None:
            partial = self._partial[request_id] = _Partial(first=message)
        partial.size = size
        partial.updated = time.monotonic()
        for t in message.tensors:
            if t.name not in partial.meta:
                # Checked on its first chunk: a shape that cannot be, or that needs more
                # than the limit, is refused before anything more of it is buffered.
                dt, shape, nbytes = tensors.payload_layout(t)
                partial.declared += nbytes
                if partial.declared > limit:
                    raise RequestTooLarge(f"request {request_id} declares {partial.declared} "
                                          f"bytes of tensors, over this agent's limit of "
                                          f"{limit} per request (--max-request-bytes)")
                if self._budget is not None:
                    self._budget.take(nbytes)
                    partial.held += nbytes
                partial.meta[t.name] = (dt, shape, nbytes)
                if t.HasField("encoding"):
                    partial.headers[t.name] = tensor_pb2.Tensor(
                        name=t.name, dtype=t.dtype, shape=t.shape, encoding=t.encoding)
            partial.parts.setdefault(t.name, []).append(t.data)
        if message.more:
            return None
        arrays = {name: _joined(name, chunks, *partial.meta[name])
                  for name, chunks in partial.parts.items()}
        del self._partial[request_id]
        first = message if isinstance(message, agent_pb2.InferResponse) else partial.first
        return Whole(first, arrays, partial.held, partial.headers)

    @property
    def pending(self) -> bool:
        """Some request is partly received."""
        return bool(self._partial)

    def expire(self, stall_s: float) -> list[int]:
        """Forget requests whose last chunk came more than `stall_s` ago (their memory is
        released; later chunks of theirs are skipped); returns their ids."""
        now = time.monotonic()
        stale = [rid for rid, p in self._partial.items() if now - p.updated > stall_s]
        for request_id in stale:
            self._release(self._partial.pop(request_id))
            self._refused.add(request_id)
        return stale

    def close(self) -> None:
        """The stream ended: give back what half-received requests held."""
        for partial in self._partial.values():
            self._release(partial)
        self._partial.clear()

    def _release(self, partial: _Partial | None) -> None:
        if partial is not None and partial.held and self._budget is not None:
            self._budget.give(partial.held)
            partial.held = 0

    def drop(self, request_id: int) -> None:
        self._release(self._partial.pop(request_id, None))
        self._refused.discard(request_id)
