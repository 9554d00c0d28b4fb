"""Which replica a request goes to next, and when to stop trying: the failover rules, as pure
functions shared by the agent's next hops (nexthops.Ticket, in threads) and the asyncio
senders (client.ReplicaSet: the controller's router, benchmarks).

The rules:
- Inference is a pure function of its input, so a copy that fails before answering may be
  sent again to a replica not tried yet - if its failure says another replica might do
  better (`retryable`: the hop was unreachable, did not have the route, was busy, or gave
  up on it), never when the request itself is at fault (INVALID_ARGUMENT, DATA_LOSS...).
- A replica is tried at most once per request, the usable ones first (not failed or
  stalled recently), then the one with fewest requests outstanding (`order`).
- A copy that has not answered after a few of its replica's usual round trips gets a twin
  on the next replica (`hedge_after_s`): the first good answer wins.
- When nothing is in flight and nothing is left to try, the request fails with the first
  failure that is the request's own fault, else the first failure (`verdict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
# A stalled replica is given this many times its usual round trip before a twin is sent
# elsewhere, within these bounds (seconds).
HEDGE_FACTOR = 4.0
HEDGE_MIN_S = 0.15
HEDGE_MAX_S = 1.0
# An address that failed or stalled is passed over for this long while another is usable.
BACKOFF_S = 2.0


@dataclass(frozen=True, slots=True)
class Replica:
    """What the rules need to know of one replica, as its sender sees it."""

    address: str
    outstanding: int = 0        # requests sent to it and not answered
    failed_at: float = -1e9     # monotonic time it last failed (connect or connection)
    stalled_at: float = -1e9    # monotonic time a copy on it last stalled
    round_trip_s: float = 0.0   # its recent answers' round trip (0: not known yet)


def retryable(code: grpc.StatusCode) -> bool:
    return code in RETRYABLE


def usable(replica: Replica, now: float) -> bool:
    return now - max(replica.failed_at, replica.stalled_at) > BACKOFF_S


def order(replicas: Sequence[Replica], tried: set[str] | frozenset[str], now: float
          ) -> list[Replica]:
    """The replicas not tried yet, best first: usable ones, then fewest outstanding."""
    return sorted((r for r in replicas if r.address not in tried),
                  key=lambda r: (not usable(r, now), r.outstanding))


def hedge_after_s(replica: Replica) -> float:
    return min(max(HEDGE_FACTOR * replica.round_trip_s, HEDGE_MIN_S), HEDGE_MAX_S)


def round_trip(previous_s: float, sample_s: float) -> float:
    """The replica's recent round trip, updated with one answer (EWMA)."""
    return sample_s if not previous_s else 0.8 * previous_s + 0.2 * sample_s


def verdict(failures: Sequence[tuple[grpc.StatusCode, str]]
            ) -> tuple[grpc.StatusCode, str] | None:
    """The failure a request answers with once nothing is left to try."""
    if not failures:
        return None
    return next((f for f in failures if not retryable(f[0])), failures[0])
