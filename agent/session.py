"""One upstream sender's requests: an Infer stream (gRPC) or a data-port connection.

Each request runs through the pipeline (pipeline.handle) and its answer (outputs and hop
timings, or a status a person can act on) goes back through `send`, exactly once. A cancel
from the sender drops the request: not yet run, it never runs (checked once a compute slot
is free); forwarded, its copies downstream are cancelled. Both doors share this, so a
request behaves the same whichever way it arrived, and a failed request never disturbs the
others on its connection. Thread-safe: answers arrive on whichever thread finished them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from layerfleet.agent.answers import Answer, Failure
from layerfleet.agent.budget import Budget
from layerfleet.agent.errors import Cancelled, StatusError
from layerfleet.agent.nexthops import Ticket
from layerfleet.agent.pipeline import Pipeline
from layerfleet.v1 import tensor_pb2

# What a request may take when its sender sets no timeout (InferRequest.timeout_s = 0).
DEFAULT_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _Request:
    held_bytes: int                 # reserved in the agent's budget until answered
    ticket: Ticket | None = None    # set once it went on to a next hop


class Session:
    def __init__(self, pipeline: Pipeline, send: Callable[[Answer], None], *,
                 budget: Budget | None = None, inline: bool = False,
                 default_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """`inline`: run each request's stage in the thread that submits it (a data-port
        connection's own thread); otherwise in the pipeline's worker pool (gRPC Infer,
        whose requests arrive on the event loop)."""
        self.pipeline = pipeline
        self._send = send
        self._budget = budget
        self._inline = inline
        self._default_timeout_s = default_timeout_s
        self._changed = threading.Condition()
        self._requests: dict[int, _Request] = {}

    @property
    def busy(self) -> bool:
        return bool(self._requests)

    def submit(self, request_id: int, deployment: str, stage: int,
               inputs: Mapping[str, np.ndarray], *, timeout_s: float = 0.0,
               held_bytes: int = 0, encoded: Mapping[str, tensor_pb2.Tensor] | None = None
               ) -> None:
        """Run a request. `held_bytes` were already reserved in the budget for it (the data
        port reserves while receiving); otherwise its inputs are reserved here. `encoded`:
        the headers of inputs that came encoded (Pipeline.handle decodes them)."""
        deadline = time.monotonic() + (timeout_s if timeout_s > 0 else self._default_timeout_s)
        if not held_bytes and self._budget is not None:
            size = sum(a.nbytes for a in inputs.values())
            try:
                self._budget.take(size)
            except StatusError as exc:
                self._send(Failure(request_id, exc.code,
                                   f"{self.pipeline.device_id}: {exc.message}"))
                return
            held_bytes = size
        with self._changed:
            self._requests[request_id] = _Request(held_bytes)

        def still_wanted() -> None:
            if request_id not in self._requests:
                raise Cancelled(f"request {request_id} was cancelled by its sender")

        if self._inline:
            self._forwarded(request_id, self.pipeline.handle(
                request_id, deployment, stage, inputs, self._answer, deadline=deadline,
                still_wanted=still_wanted, encoded=encoded))
        else:
            self.pipeline.compute.pool.submit(
                self._run_pooled, request_id, deployment, stage, inputs, deadline,
                still_wanted, encoded)

    def _run_pooled(self, request_id: int, deployment: str, stage: int,
                    inputs: Mapping[str, np.ndarray], deadline: float,
                    still_wanted: Callable[[], None],
                    encoded: Mapping[str, tensor_pb2.Tensor] | None) -> None:
        if request_id not in self._requests:
            return   # cancelled while it queued for a worker
        self._forwarded(request_id, self.pipeline.handle(
            request_id, deployment, stage, inputs, self._answer, deadline=deadline,
            still_wanted=still_wanted, encoded=encoded))

    def refuse(self, request_id: int, error: StatusError) -> None:
        """Answer a request that could not even be read."""
        self._send(Failure(request_id, error.code,
                           f"{self.pipeline.device_id}: {error.message}"))

    def cancel(self, request_id: int) -> None:
        with self._changed:
            request = self._requests.pop(request_id, None)
            self._changed.notify_all()
        if request is None:
            return
        self._release(request)
        if request.ticket is not None:
            request.ticket.cancel()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until every request submitted so far has been answered (or timeout)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._requests, timeout_s)

    def close(self) -> None:
        """The sender is gone: drop its work."""
        with self._changed:
            requests = list(self._requests.values())
            self._requests.clear()
            self._changed.notify_all()
        for request in requests:
            self._release(request)
            if request.ticket is not None:
                request.ticket.cancel()

    def _forwarded(self, request_id: int, ticket: Ticket | None) -> None:
        """The stage ran; a forwarded request now waits on `ticket`."""
        if ticket is None:
            return
        with self._changed:
            request = self._requests.get(request_id)
            if request is not None:
                request.ticket = ticket
        if request is None:
            ticket.cancel()   # cancelled while it ran (a no-op if it was answered)

    def _answer(self, answer: Answer) -> None:
        with self._changed:
            request = self._requests.pop(answer.request_id, None)
            self._changed.notify_all()
        if request is None:
            return   # cancelled meanwhile
        self._release(request)
        self._send(answer)

    def _release(self, request: _Request) -> None:
        if self._budget is not None and request.held_bytes:
            self._budget.give(request.held_bytes)
            request.held_bytes = 0
