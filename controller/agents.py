"""One AgentClient per agent address, shared by the deployer, router and discovery.

Each client holds one channel and one persistent inference stream, so the controller opens
one connection per agent however many requests are in flight.
"""

from __future__ import annotations

from layerfleet.agent.client import AgentClient


class AgentPool:
    def __init__(self) -> None:
        self._clients: dict[str, AgentClient] = {}

    def get(self, address: str) -> AgentClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = AgentClient(address)
        return client

    async def drop(self, address: str) -> None:
        """Forget a connection (the agent went away); the next get() dials afresh."""
        client = self._clients.pop(address, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()
