"""Three real agents chained on loopback compute exactly what the shards compute in one
process, with many requests in flight on one stream: over the data port (the
default) and over gRPC Infer (agents started with `--data-port off`)."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest
from layerfleet.agent.client import AgentClient
from layerfleet.agent.runtime import ShardRunner
from layerfleet.controller.partition.local import run_local

from .conftest import deploy_chain

by_transport = pytest.mark.parametrize("transport", ["dataport", "grpc"])


def _setting(transport: str) -> str:
    return "auto" if transport == "dataport" else "off"


@by_transport
async def test_three_agents_run_a_split_mobilenet_like_run_local(agents, mobilenet_split,
                                                                 transport):
    servers = [await agents(f"a{i}", data_port=_setting(transport)) for i in range(3)]
    await deploy_chain(mobilenet_split, servers)
    x = mobilenet_split.random_input()
    async with AgentClient(servers[0].address) as client:
        reply = await client.infer("d", x)
        assert client.transport == transport
    assert [servers[i].pipeline.hops.kind(servers[i + 1].address)
            for i in range(2)] == [transport] * 2
    expected = run_local(mobilenet_split.directory, x)
    assert set(reply.outputs) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(reply.outputs[name], expected[name])
    assert [h.stage for h in reply.hops] == [0, 1, 2]
    assert [h.device_id for h in reply.hops] == [s.device_id for s in servers]
    assert reply.hops[0].forward_s >= reply.hops[1].compute_s


@by_transport
async def test_200_requests_in_flight_on_one_stream_all_come_back_matched(agents, small_split,
                                                                          transport):
    servers = [await agents(f"a{i}", data_port=_setting(transport)) for i in range(3)]
    await deploy_chain(small_split, servers)
    inputs = [small_split.random_input(seed) for seed in range(200)]
    async with AgentClient(servers[0].address) as client:
        replies = await asyncio.gather(*(client.infer("d", x) for x in inputs))
    for x, reply in zip(inputs, replies):
        expected = run_local(small_split.directory, x)
        np.testing.assert_array_equal(reply.outputs["probs"], expected["probs"])


async def test_a_restarted_agent_keeps_its_shards_and_routes(tmp_path, small_split):
    from layerfleet.agent.main import AgentServer

    from .conftest import settings

    first = AgentServer(settings(tmp_path / "a"))
    await first.start()
    async with AgentClient(first.address) as client:
        sha = await client.upload_shard(small_split.shard(0))
        await client.set_route(deployment="d", stage=0, shard_sha256=sha)
    await first.stop(grace_s=0)

    again = AgentServer(settings(tmp_path / "a"))
    await again.start()
    try:
        assert again.device_id == first.device_id
        async with AgentClient(again.address) as client:
            assert sha in await client.list_shards()
            reply = await client.infer("d", small_split.random_input())
        assert set(reply.outputs) == {t.name for t in small_split.manifest.shards[0].outputs}
    finally:
        await again.stop(grace_s=0)


async def test_big_activations_travel_in_chunks_and_arrive_intact(tmp_path, small_split):
    from layerfleet.agent import wire
    from layerfleet.agent.budget import Budget

    x = np.random.default_rng(0).random((1, 512, 1024), dtype=np.float32)  # 2 MiB
    messages = list(wire.requests(7, "d", 0, {"big": x}, chunk_bytes=256 << 10))
    assert len(messages) == 8 and all(m.more for m in messages[:-1])
    budget = Budget(64 << 20)
    assembler = wire.Assembler(budget=budget)
    done = [assembler.add(m) for m in messages]
    assert done[:-1] == [None] * 7
    np.testing.assert_array_equal(done[-1].arrays["big"], x)
    # What the request declared was held while it arrived, and is now its receiver's.
    assert done[-1].held_bytes == x.nbytes == budget.held_bytes


async def test_a_client_on_grpc_infer_is_served_through_the_agents_data_ports(agents,
                                                                             small_split):
    servers = [await agents(f"a{i}") for i in range(3)]
    await deploy_chain(small_split, servers)
    inputs = [small_split.random_input(seed) for seed in range(20)]
    async with AgentClient(servers[0].address, use_data_port=False) as client:
        replies = await asyncio.gather(*(client.infer("d", x) for x in inputs))
        assert client.transport == "grpc"
    assert [servers[i].pipeline.hops.kind(servers[i + 1].address)
            for i in range(2)] == ["dataport"] * 2
    for x, reply in zip(inputs, replies):
        expected = run_local(small_split.directory, x)
        np.testing.assert_array_equal(reply.outputs["probs"], expected["probs"])


@pytest.mark.parametrize("threshold, exits", [(-1e9, True), (1e9, False)],
                         ids=["always", "never"])
async def test_an_exit_answers_from_its_stage_and_the_rest_of_the_chain_never_runs(
        agents, small_split, threshold, exits):
    servers = [await agents(f"a{i}") for i in range(3)]
    await deploy_chain(small_split, servers)
    first = small_split.manifest.shards[0]
    async with AgentClient(servers[0].address) as client:
        await client.set_route(deployment="d", stage=0,
                               shard_sha256=hashlib.sha256(small_split.shard(0)).hexdigest(),
                               next_hops=[servers[1].address],
                               exit_output=first.outputs[0].name, exit_threshold=threshold)
        x = small_split.random_input()
        reply = await client.infer("d", x)
    if exits:
        assert reply.exited_at_stage == 0 and [h.stage for h in reply.hops] == [0]
        expected = ShardRunner(small_split.shard(0)).run(x)
        for name in expected:
            np.testing.assert_array_equal(reply.outputs[name], expected[name])
        assert servers[1].telemetry.shards == {} and servers[2].telemetry.shards == {}
    else:
        assert reply.exited_at_stage == -1 and [h.stage for h in reply.hops] == [0, 1, 2]
        np.testing.assert_array_equal(reply.outputs["probs"],
                                      run_local(small_split.directory, x)["probs"])
