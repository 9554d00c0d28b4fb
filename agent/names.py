"""The one rule for names that become file paths, registry keys or labels.

Models, deployments, device ids and join-token labels are NAMEs: 1-64 characters from
letters, digits, `-`, `_` and `.`, not starting with `.` (so never `.`, `..` or a hidden
file). Shard digests are 64 lower-case hex characters. An agent's route is a deployment
name, optionally followed by `~N` for the Nth re-plan of it (deployer.route_name).

Names are checked where they arrive (the API, the agent's RPCs) and again where a path is
built from one (`inside`), so a name that slipped past the first check still cannot reach
outside its directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from layerfleet.agent.errors import InvalidArgument

MAX_NAME = 64
RULE = (f"1-{MAX_NAME} characters from letters, digits, '-', '_' and '.', "
        f"not starting with '.'")
_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
_ROUTE = re.compile(rf"({_NAME.pattern})(~[0-9]{{1,9}})?")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class InvalidName(InvalidArgument):
    """A name outside the rule above; the message names the rule."""


def check_name(kind: str, value: str) -> str:
    """`value` if it is a valid NAME, else InvalidName saying what a `kind` may be."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidName(f"{kind} name {quoted(value)} is not allowed: use {RULE}")
    return value


def check_route(value: str) -> str:
    """A route name on an agent: a deployment NAME, optionally `~N`."""
    if not isinstance(value, str) or not _ROUTE.fullmatch(value):
        raise InvalidName(f"deployment name {quoted(value)} is not allowed: use {RULE} "
                          f"(optionally followed by ~N)")
    return value


def check_digest(value: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidName(f"shard digest {quoted(value)} is not 64 lower-case hex characters")
    return value


def inside(directory: Path, name: str) -> Path:
    """directory/name, refused (InvalidName) unless it resolves to a direct child of
    `directory`: the last line of defence before anything is written or removed there."""
    base = Path(directory).resolve()
    try:
        target = (base / name).resolve()
    except (OSError, ValueError):   # a NUL byte, a symlink loop
        target = base
    if target.parent != base or target.name != name:
        raise InvalidName(f"{quoted(name)} does not name an entry of its directory")
    return target


def quoted(value: object) -> str:
    """A name as a message may quote it: bounded, printable."""
    text = repr(value)
    return text if len(text) <= MAX_NAME + 8 else text[:MAX_NAME] + "...'"
