"""What every `layerfleet` command shares: one-line errors and argument parsing."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


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
            click.echo(f"layerfleet: {exc.code.name.lower().replace('_', ' ')}: {exc.message}",
                       err=True)
        except (PartitionError, ShardInputError, RuntimeUnavailable, OSError,
                ValueError) as exc:
            click.echo(f"layerfleet: {exc}", err=True)
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
