"""What every `layerfleet` command shares: one-line errors and argument parsing."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Errors from the controller and the partitioner name request fields (they speak to every
# client); on the command line the same thing is a flag.
FLAGS = [(re.compile(r"\b(ModelHeader\.)?input_shape\b"), "--input-shape"),
         (re.compile(r"\b((Plan|Deploy)Request\.)?sla_ms\b"), "--sla MS"),
         (re.compile(r"\bDeployRequest\.name\b"), "--name"),
         (re.compile(r"\bDeployRequest\.plan\b"), "--plan"),
         (re.compile(r"\bPlanRequest\.top_k\b"), "--top")]


def with_flags(message: str) -> str:
    """A controller or partitioner message with request fields named as this CLI's flags."""
    for pattern, flag in FLAGS:
        message = pattern.sub(flag, message)
    return message


def fails_cleanly(command: F) -> F:
    """Controller errors and bad local input end as one line on stderr and exit status 1,
    never a traceback."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from layerfleet.agent.runtime import RuntimeUnavailable, ShardInputError
        from layerfleet.controller.errors import ApiError
        from layerfleet.controller.partition.errors import PartitionError

        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            click.echo(f"layerfleet: {exc.code.name.lower().replace('_', ' ')}: "
                       f"{with_flags(exc.message)}", err=True)
        except (PartitionError, ShardInputError, RuntimeUnavailable, OSError,
                ValueError) as exc:
            click.echo(f"layerfleet: {with_flags(str(exc))}", err=True)
        sys.exit(1)
    return wrapper  # type: ignore[return-value]


def parse_shape(text: str) -> tuple[int, ...] | None:
    """'224,224,3' (or 224x224x3) -> (224, 224, 3); '' -> None."""
    if not text:
        return None
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--input-shape {text!r}: expected numbers like 224,224,3") from None
    if any(d <= 0 for d in shape):
        raise ValueError(f"--input-shape {text!r}: every dimension must be positive")
    return shape
