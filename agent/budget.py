"""How many bytes of requests an agent holds at once.

Every request's tensors are reserved here when the agent starts receiving them (a
data-port frame's payload once its header is read; a gRPC request once it is whole) and
given back when the request is answered. Past the limit (--max-inflight-bytes) a new
request is refused with RESOURCE_EXHAUSTED instead of growing the agent's memory until the
kernel kills it: senders with replicas send it elsewhere.
"""

from __future__ import annotations

import threading

from layerfleet.agent.errors import ResourceExhausted


class Budget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._held = 0
        self._peak = 0   # the most held since the last call of `burst_over`
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return self._held

    def take(self, nbytes: int) -> None:
        """Reserve `nbytes` (ResourceExhausted naming the setting when they do not fit)."""
        with self._lock:
            if self._held + nbytes > self.limit_bytes and nbytes > 0:
                raise ResourceExhausted(
                    f"agent busy: {self._held} bytes of requests in flight, {nbytes} more "
                    f"would pass --max-inflight-bytes ({self.limit_bytes})")
            self._held += nbytes
            self._peak = max(self._peak, self._held)

    def burst_over(self, min_bytes: int) -> bool:
        """True (once) when nothing is held now and at least `min_bytes` were held at some
        point since the last True: the moment to give memory back."""
        with self._lock:
            if self._held or self._peak < min_bytes:
                return False
            self._peak = 0
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes
