"""Errors that reach a caller: the one StatusError hierarchy (agent/errors.py), a gRPC
status code and a message a person can act on.

Domain code raises StatusError (ApiError is its name on the controller's side); the
servicers turn it into the status (api.py), the client turns the status back into it, and
the CLI prints its message on one line.
"""

from __future__ import annotations

import grpc
from layerfleet.agent.errors import StatusError

ApiError = StatusError


def not_found(what: str, name: str, known: list[str]) -> StatusError:
    hint = f"known: {', '.join(known)}" if known else "none registered yet"
    return StatusError(grpc.StatusCode.NOT_FOUND, f"unknown {what} {name!r} ({hint})")
