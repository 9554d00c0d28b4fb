"""The one error hierarchy: every error that reaches a caller is a gRPC status code and a
message a person can act on, raised by agent and controller alike.

    StatusError(code, message)          any status; the servicers turn it into one
    ├── InvalidArgument                 INVALID_ARGUMENT (also a ValueError)
    │   ├── names.InvalidName           a name outside the naming rule
    │   ├── tensors.TensorError         a tensor that cannot be decoded
    │   ├── runtime.ShardInputError     inputs that break a shard's contract
    │   └── store.BadRequest            an upload that cannot be a shard
    ├── NotFound                        NOT_FOUND (store.UnknownShard, unrouted stages)
    ├── FailedPrecondition              FAILED_PRECONDITION
    ├── DataLoss                        DATA_LOSS (store.DigestMismatch)
    ├── ResourceExhausted               RESOURCE_EXHAUSTED (quota, request and memory limits)
    ├── Unavailable                     UNAVAILABLE (a hop that cannot be reached, draining)
    ├── DeadlineExceeded                DEADLINE_EXCEEDED (a request past its deadline)
    └── Cancelled                       CANCELLED (the sender gave up)

Why one: a request's failure travels from a shard, through next hops, the router and the
client library, to a person; each layer passes the same status on instead of re-wrapping
it. Messages never carry internal paths or tracebacks (those go to the daemon's log).
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class StatusError(Exception):
    """A failure with the gRPC status a caller gets for it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Fixed(StatusError):
    """A StatusError whose code is its class's."""

    code_of_class: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(self.code_of_class, message)


class InvalidArgument(_Fixed, ValueError):
    code_of_class = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(_Fixed):
    code_of_class = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(_Fixed):
    code_of_class = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(_Fixed):
    code_of_class = grpc.StatusCode.DATA_LOSS


class ResourceExhausted(_Fixed):
    code_of_class = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(_Fixed):
    code_of_class = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(_Fixed):
    code_of_class = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(_Fixed):
    code_of_class = grpc.StatusCode.CANCELLED


def status_code(value: int) -> grpc.StatusCode:
    """The StatusCode of a wire value (InferResponse.status_code); UNKNOWN if none."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
