"""One upstream sender's requests: an Infer stream (gRPC) or a data-port connection.

Each request runs through the pipeline (pipeline.handle) and its answer (outputs and hop
timings, or a status a person can act on) goes back through `send`. A cancel from the
sender drops the request (a hedged twin answered first). Both transports share this, so a
request behaves the same whichever way it arrived, and a failed request never disturbs
the others on its stream. Thread-safe: answers arrive on whichever thread finished them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import grpc
import numpy as np
from layerfleet.agent.pipeline import Answer, Pipeline, Ticket

_WORKING = None   # a request still running its stage here (no ticket yet)


class Session:
    def __init__(self, pipeline: Pipeline, send: Callable[[Answer], None], *,
                 inline: bool = False) -> None:
        """`inline`: run each request's stage in the thread that submits it (a data-port
        connection's own thread); otherwise in the pipeline's worker pool (gRPC Infer,
        whose requests arrive on the event loop)."""
        self.pipeline = pipeline
        self._send = send
        self._inline = inline
        self._changed = threading.Condition()
        self._requests: dict[int, Ticket | None] = {}

    @property
    def busy(self) -> bool:
        return bool(self._requests)

    def submit(self, request_id: int, deployment: str, stage: int,
               inputs: Mapping[str, np.ndarray]) -> None:
        with self._changed:
            self._requests[request_id] = _WORKING
        if self._inline:
            self._working(request_id, self.pipeline.handle(
                request_id, deployment, stage, inputs, self._answer))
        else:
            self.pipeline.compute.pool.submit(
                self.pipeline.handle, request_id, deployment, stage, inputs, self._answer
            ).add_done_callback(lambda run: self._working(request_id, run.result()))

    def refuse(self, request_id: int, code: grpc.StatusCode, message: str) -> None:
        """Answer a request that could not even be read."""
        self._send(Answer(request_id, code=code,
                          message=f"{self.pipeline.device_id}: {message}"))

    def cancel(self, request_id: int) -> None:
        with self._changed:
            ticket = self._requests.pop(request_id, _WORKING)
            self._changed.notify_all()
        if ticket is not None:
            ticket.cancel()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until every request submitted so far has been answered (or timeout)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._requests, timeout_s)

    def close(self) -> None:
        """The sender is gone: drop its work."""
        with self._changed:
            tickets = [t for t in self._requests.values() if t is not None]
            self._requests.clear()
            self._changed.notify_all()
        for ticket in tickets:
            ticket.cancel()

    def _working(self, request_id: int, ticket: Ticket | None) -> None:
        """The stage ran; a forwarded request now waits on `ticket`."""
        if ticket is None:
            return
        with self._changed:
            waiting = self._requests.get(request_id, ticket) is _WORKING
            if waiting:
                self._requests[request_id] = ticket
        if not waiting:
            ticket.cancel()   # cancelled while it ran (a no-op if it was answered)

    def _answer(self, answer: Answer) -> None:
        with self._changed:
            if answer.request_id not in self._requests:
                return   # cancelled meanwhile
            del self._requests[answer.request_id]
            self._changed.notify_all()
        self._send(answer)
