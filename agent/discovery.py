"""mDNS: agents advertise `_layerfleet._tcp.local.`; the controller browses for them.

The TXT record stays small (identity and capacity only); load and telemetry travel over
gRPC. Used by both sides: Advertiser by the agent, Browser by the controller.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)
SERVICE_TYPE = "_layerfleet._tcp.local."
TXT_VERSION = "1"


def build_txt(*, device_id: str, arch: str, cores: int, memory_bytes: int, runtime: str,
              version: str, port: int) -> dict[str, str]:
    return {"txtvers": TXT_VERSION, "id": device_id, "arch": arch, "cores": str(cores),
            "memory": str(memory_bytes), "runtime": runtime, "version": version,
            "port": str(port)}


def _interfaces(addresses: list[str] | None) -> Any:
    from zeroconf import InterfaceChoice

    return addresses if addresses else InterfaceChoice.All


class Advertiser:
    def __init__(self, info: dict[str, str], port: int, *, addresses: list[str] | None = None,
                 name: str | None = None) -> None:
        self.txt = info
        self.port = port
        self.addresses = addresses
        self.name = name or f"layerfleet-{info.get('id', socket.gethostname())}"
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    async def start(self) -> None:
        self._zc = AsyncZeroconf(interfaces=_interfaces(self.addresses),
                                 ip_version=IPVersion.V4Only)
        addresses = [socket.inet_aton(a) for a in (self.addresses or [])] or None
        self._info = AsyncServiceInfo(
            SERVICE_TYPE, f"{self.name}.{SERVICE_TYPE}", port=self.port, properties=self.txt,
            addresses=addresses, server=f"{self.name}.local.")
        # zeroconf returns a task that finishes once the announcements are out.
        await (await self._zc.async_register_service(self._info))

    async def stop(self) -> None:
        if self._zc is None:
            return
        if self._info is not None:
            await (await self._zc.async_unregister_service(self._info))  # goodbye packets
        await self.close()

    async def close(self) -> None:
        """Release the sockets without goodbye packets (nothing was announced)."""
        if self._zc is not None:
            await self._zc.async_close()
            self._zc = None


@dataclass(frozen=True)
class Found:
    name: str
    device_id: str
    addresses: list[str]
    port: int
    txt: dict[str, str]


class Browser:
    """Calls on_added(Found) / on_removed(name) as agents appear and leave."""

    def __init__(self, on_added: Callable[[Found], None],
                 on_removed: Callable[[str], None] | None = None,
                 interfaces: list[str] | None = None) -> None:
        self.on_added = on_added
        self.on_removed = on_removed
        self.interfaces = interfaces
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._zc = AsyncZeroconf(interfaces=_interfaces(self.interfaces),
                                 ip_version=IPVersion.V4Only)

        def changed(zeroconf: Any, service_type: str, name: str,
                    state_change: ServiceStateChange) -> None:
            if state_change is ServiceStateChange.Removed:
                if self.on_removed:
                    self.on_removed(name)
                return
            task = asyncio.ensure_future(self._resolve(service_type, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE,
                                            handlers=[changed])

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            log.info("mDNS: could not resolve %s", name)
            return
        txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        self.on_added(Found(name=name, device_id=txt.get("id", ""),
                            addresses=info.parsed_addresses(IPVersion.V4Only),
                            port=info.port or 0, txt=txt))

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._zc is not None:
            await self._zc.async_close()
            self._zc = None
