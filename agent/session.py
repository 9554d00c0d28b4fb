"""One upstream sender's requests: an Infer stream (gRPC) or a data-port connection.

Each request runs as its own task through the pipeline; its answer (outputs and hop
timings, or a status a person can act on) goes back through `send`. A cancel from the
sender drops the request (a hedged twin answered first). Both transports share this, so a
request behaves the same whichever way it arrived, and a failed request never disturbs
the others on its stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
from layerfleet.agent.pipeline import Pipeline
from layerfleet.agent.store import StoreError
from layerfleet.agent.stream import HopError
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

STORE_STATUS = {"data_loss": grpc.StatusCode.DATA_LOSS,
                "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
                "not_found": grpc.StatusCode.NOT_FOUND,
                "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT}


@dataclass
class Answer:
    """What goes back for one request."""

    request_id: int
    outputs: dict[str, np.ndarray] | None = None
    hops: list[agent_pb2.HopTiming] = field(default_factory=list)
    exited_at_stage: int = -1
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""

    def header(self) -> agent_pb2.InferResponse:
        """The response without its tensors."""
        return agent_pb2.InferResponse(
            request_id=self.request_id, hops=self.hops, exited_at_stage=self.exited_at_stage,
            status_code=self.code.value[0], status_message=self.message)


class Session:
    def __init__(self, pipeline: Pipeline, send: Callable[[Answer], None]) -> None:
        self.pipeline = pipeline
        self._send = send
        self._running: dict[int, asyncio.Task[None]] = {}
        self.refusing = ""   # set while the agent shuts down: why new requests are refused

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def submit(self, request_id: int, deployment: str, stage: int,
               inputs: Mapping[str, np.ndarray]) -> None:
        if self.refusing:
            self.refuse(request_id, grpc.StatusCode.UNAVAILABLE, self.refusing)
            return
        self._running[request_id] = asyncio.create_task(
            self._run(request_id, deployment, stage, inputs))

    def refuse(self, request_id: int, code: grpc.StatusCode, message: str) -> None:
        """Answer a request that could not even be read."""
        self._send(Answer(request_id, code=code,
                          message=f"{self.pipeline.device_id}: {message}"))

    def cancel(self, request_id: int) -> None:
        task = self._running.pop(request_id, None)
        if task is not None:
            task.cancel()

    async def drain(self) -> None:
        """Until every request submitted so far has been answered."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    def close(self) -> None:
        """The sender is gone: drop its work."""
        for task in list(self._running.values()):
            task.cancel()
        self._running.clear()

    async def _run(self, request_id: int, deployment: str, stage: int,
                   inputs: Mapping[str, np.ndarray]) -> None:
        try:
            outcome = await self.pipeline.handle(deployment, stage, inputs)
            answer = Answer(request_id, outcome.outputs, outcome.hops, outcome.exited_at_stage)
        except HopError as exc:
            answer = Answer(request_id, code=exc.code, message=exc.message)
        except StoreError as exc:
            answer = Answer(request_id, code=STORE_STATUS.get(exc.kind, grpc.StatusCode.INTERNAL),
                            message=str(exc))
        except asyncio.CancelledError:
            return  # cancelled by the sender: no answer
        except Exception as exc:
            log.exception("request %d failed", request_id)
            answer = Answer(request_id, code=grpc.StatusCode.INTERNAL,
                            message=f"{self.pipeline.device_id}: internal error: {exc}")
        finally:
            self._running.pop(request_id, None)
        self._send(answer)
