"""What comes back for one inference request: exactly one of three shapes.

- `Outputs`: tensors, computed here or decoded from a next hop's answer;
- `Raw`: a next hop's good answer as it came off its data port, passed upstream without
  decoding its tensors (relaying a 4 kB answer after a shard has flushed the caches cost
  ~0.15 ms to parse; docs/agent.md);
- `Failure`: a status code and a message a person can act on.

Every sender of a request (an agent forwarding, the controller's router, AgentClient) and
every door a request comes in by (the data port, gRPC Infer) deals in these, so a request
behaves the same whichever way it travelled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
from layerfleet.agent import dataport
from layerfleet.agent.errors import StatusError, status_code
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outputs:
    request_id: int
    outputs: Mapping[str, np.ndarray]
    hops: list[agent_pb2.HopTiming] = field(default_factory=list)
    exited_at_stage: int = -1   # -1: ran to the last stage


@dataclass(frozen=True, slots=True)
class Raw:
    request_id: int
    header: bytes               # a serialized InferResponse without tensor data
    payload: np.ndarray | None  # the tensors' bytes back to back


@dataclass(frozen=True, slots=True)
class Failure:
    request_id: int
    code: grpc.StatusCode
    message: str

    def error(self) -> StatusError:
        return StatusError(self.code, self.message)


Answer = Outputs | Raw | Failure


def failure(request_id: int, exc: BaseException, device_id: str) -> Failure:
    """The answer for a request that raised: its status, or INTERNAL naming this agent
    (the traceback goes to the log, not to the caller)."""
    if isinstance(exc, StatusError):
        return Failure(request_id, exc.code, exc.message)
    log.error("request %d failed", request_id, exc_info=exc)
    return Failure(request_id, grpc.StatusCode.INTERNAL,
                   f"{device_id}: internal error ({type(exc).__name__}); see the agent's log")


def from_frame(frame: dataport.Frame[agent_pb2.InferResponse]) -> Answer:
    """A data-port answer: a Failure for a status or an unreadable frame, else Raw (when
    read raw) or Outputs."""
    m = frame.message
    if frame.error is not None:
        return Failure(m.request_id, *frame.error)
    if m.status_code:
        return Failure(m.request_id, status_code(m.status_code), m.status_message)
    if frame.header:
        return Raw(m.request_id, frame.header, frame.payload)
    return Outputs(m.request_id, frame.arrays, list(m.hops), m.exited_at_stage)


def from_response(m: agent_pb2.InferResponse, arrays: Mapping[str, np.ndarray]) -> Answer:
    """A gRPC Infer answer, reassembled."""
    if m.status_code:
        return Failure(m.request_id, status_code(m.status_code), m.status_message)
    return Outputs(m.request_id, arrays, list(m.hops), m.exited_at_stage)


def decoded(answer: Answer) -> Outputs | Failure:
    """Outputs or Failure: a Raw answer's tensors decoded (for gRPC Infer senders)."""
    if not isinstance(answer, Raw):
        return answer
    m = agent_pb2.InferResponse.FromString(answer.header)
    return Outputs(answer.request_id, dataport.split_payload(m, answer.payload), list(m.hops),
                   m.exited_at_stage)


def header(answer: Outputs | Failure) -> agent_pb2.InferResponse:
    """The response without its tensors (the data port sends them raw after it)."""
    if isinstance(answer, Failure):
        return agent_pb2.InferResponse(request_id=answer.request_id,
                                       status_code=answer.code.value[0],
                                       status_message=answer.message)
    return agent_pb2.InferResponse(request_id=answer.request_id, hops=answer.hops,
                                   exited_at_stage=answer.exited_at_stage)


def relay(request_id: int, mine: agent_pb2.HopTiming, theirs: Answer) -> Answer:
    """A next hop's answer, passed on to our sender: our request id, our hop first.

    A Raw answer is passed on without decoding it: its header bytes with our timing in
    front and our request id behind. Protobuf merges concatenated messages (repeated fields
    append, the last scalar wins), so the result parses as the same answer with hops
    [mine, *theirs] and our request id."""
    if isinstance(theirs, Failure):
        return Failure(request_id, theirs.code, theirs.message)
    if isinstance(theirs, Outputs):
        return Outputs(request_id, theirs.outputs, [mine, *theirs.hops], theirs.exited_at_stage)
    if request_id == 0:   # proto3 would not write a zero id, so theirs would stay
        return relay(request_id, mine, decoded(theirs))
    joined = b"".join([agent_pb2.InferResponse(hops=[mine]).SerializeToString(), theirs.header,
                       agent_pb2.InferResponse(request_id=request_id).SerializeToString()])
    return Raw(request_id, joined, theirs.payload)
