"""The controller's event stream: who wakes when the registry records something.

The registry is the log (its `events` table, read with `Registry.events(after_id=...)`); this
bus only says "something changed". WatchEvents followers and the dashboard's live stream wait
on it, then read the log from the last id they sent, so nothing is lost when several changes
arrive while a reader is busy: a reader passes the version it last saw and returns at once
if the bus moved since.
"""

from __future__ import annotations

import asyncio
from typing import Any


class EventBus:
    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.version = 0

    def notify(self, *_: Any) -> None:
        """Wake every waiter (the registry calls this for each event it records)."""
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, timeout: float, seen: int | None = None) -> int:
        """Until the next notify, or `timeout` seconds; at once if the bus already moved past
        `seen`. Returns the version to pass next time."""
        if seen is not None and seen != self.version:
            return self.version
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
        return self.version
