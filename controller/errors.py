"""Errors that reach a caller: a gRPC status code and a message a person can act on.

Domain code raises ApiError; the servicers turn it into the status (api.py), the client
turns the status back into ApiError, and the CLI prints its message on one line.
"""

from __future__ import annotations

import grpc


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def not_found(what: str, name: str, known: list[str]) -> ApiError:
    hint = f"known: {', '.join(known)}" if known else "none registered yet"
    return ApiError(grpc.StatusCode.NOT_FOUND, f"unknown {what} {name!r} ({hint})")
