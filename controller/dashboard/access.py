"""Who may open the dashboard and /metrics.

Today the rule is the API's: loopback only, unless the operator says otherwise
(`--http-insecure` for this port, as `--insecure` is for the gRPC port), because the page
shows every device's address and the fleet's load to anyone who can reach it. An SSH tunnel
(`ssh -L 50080:127.0.0.1:50080 vm`) is the way in from elsewhere.

The seam for real authentication is `Guard`: an awaitable run before every request that
raises an aiohttp HTTP error to refuse it. When the API gets mutual TLS and roles (join token
-> fleet CA -> certificates), the same check plugs in here: a client certificate on an HTTPS
listener or a bearer token mapped to a role allowed to read, refused with 401/403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from layerfleet.agent.transport import InsecureListen, is_loopback

Guard = Callable[[web.Request], Awaitable[None]]


async def open_to_reachable(request: web.Request) -> None:
    """Today's guard: whoever can reach the listener may read (the listen rule limits who)."""


def check_listen(address: str, *, allow_remote: bool) -> None:
    if not is_loopback(address) and not allow_remote:
        raise InsecureListen(
            f"refusing to serve the dashboard and /metrics on {address}: anyone on that "
            f"network could read the fleet's addresses and load, and there is no "
            f"authentication yet. Keep it on 127.0.0.1 (reach it over an SSH tunnel), or "
            f"pass --http-insecure on a network you trust")
