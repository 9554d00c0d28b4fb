"""Replicated stages at run time: balanced spreads the load, hedged keeps the tail short."""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np
from layerfleet.agent.client import AgentClient


async def _replicated(agents, split, mode: str, n_replicas: int = 2):
    """Stage 0 on one agent, stage 1 on n replicas, stage 2 on one agent."""
    first = await agents("first")
    replicas = [await agents(f"r{i}", allow_faults=True) for i in range(n_replicas)]
    last = await agents("last")
    shas = [hashlib.sha256(split.shard(i)).hexdigest() for i in range(3)]
    async with AgentClient(last.address) as c:
        await c.upload_shard(split.shard(2))
        await c.set_route(deployment="d", stage=2, shard_sha256=shas[2])
    for r in replicas:
        async with AgentClient(r.address) as c:
            await c.upload_shard(split.shard(1))
            await c.set_route(deployment="d", stage=1, shard_sha256=shas[1],
                              next_hops=[last.address])
    async with AgentClient(first.address) as c:
        await c.upload_shard(split.shard(0))
        await c.set_route(deployment="d", stage=0, shard_sha256=shas[0],
                          next_hops=[r.address for r in replicas], replica_mode=mode,
                          hedge_k=2)
    return first, replicas, last


async def test_balanced_mode_spreads_requests_evenly_over_replicas(agents, small_split):
    first, replicas, _ = await _replicated(agents, small_split, "balanced", n_replicas=2)
    async with AgentClient(first.address) as client:
        inputs = [small_split.random_input(i) for i in range(400)]
        # Steady load: 8 requests in flight at a time.
        sem = asyncio.Semaphore(8)

        async def one(x):
            async with sem:
                return await client.infer("d", x)

        replies = await asyncio.gather(*(one(x) for x in inputs))
    counts = [sum(1 for r in replies if r.hops[1].device_id == rep.device_id)
              for rep in replicas]
    assert sum(counts) == 400
    for count in counts:
        assert abs(count - 200) <= 0.2 * 200, counts


async def test_hedged_mode_returns_the_first_answer_and_ignores_a_straggler(agents, small_split):
    first, replicas, last = await _replicated(agents, small_split, "hedged", n_replicas=2)
    slow, fast = replicas
    async with AgentClient(slow.address) as c:
        await c.set_faults(delay_ms=200)
    latencies = []
    async with AgentClient(first.address) as client:
        for i in range(40):
            started = time.perf_counter()
            reply = await client.infer("d", small_split.random_input(i))
            latencies.append(time.perf_counter() - started)
            assert reply.hops[1].device_id == fast.device_id
    p99 = float(np.percentile(latencies, 99))
    # Without hedging half the requests would take >= 200 ms on the slow replica.
    assert p99 < 0.1, latencies
    # The straggler's copies were cancelled: it did not keep computing all 40 of them.
    await asyncio.sleep(0.3)
    assert slow.telemetry.shards.get(hashlib.sha256(small_split.shard(1)).hexdigest()) is None \
        or slow.telemetry.shards[hashlib.sha256(small_split.shard(1)).hexdigest()].count < 40
