"""Every kind of bad input gets its gRPC status with a message a person can act on, and the
same agent then still serves a good request."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest
from layerfleet.agent.client import AgentClient, AgentError
from layerfleet.v1 import agent_pb2, agent_pb2_grpc

from .conftest import deploy_chain


async def _still_serves(client: AgentClient, split) -> None:
    reply = await client.infer("d", split.random_input())
    assert reply.outputs


@pytest.fixture
async def one_stage(agents, small_split):
    server = await agents("a", quota_bytes=200_000)
    async with AgentClient(server.address) as client:
        sha = await client.upload_shard(small_split.shard(0))
        await client.set_route(deployment="d", stage=0, shard_sha256=sha)
        yield server, client


async def test_wrong_shape_is_invalid_argument_naming_expected_and_received(one_stage,
                                                                            small_split):
    _, client = one_stage
    with pytest.raises(AgentError) as err:
        await client.infer("d", {"image": np.zeros((1, 8, 8, 3), np.float32)})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected float32[1, 16, 16, 3]" in err.value.message
    assert "received float32[1, 8, 8, 3]" in err.value.message
    await _still_serves(client, small_split)


async def test_wrong_dtype_is_invalid_argument(one_stage, small_split):
    _, client = one_stage
    with pytest.raises(AgentError) as err:
        await client.infer("d", {"image": np.zeros((1, 16, 16, 3), np.int32)})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "received int32" in err.value.message
    await _still_serves(client, small_split)


async def test_unknown_deployment_is_not_found(one_stage, small_split):
    _, client = one_stage
    with pytest.raises(AgentError) as err:
        await client.infer("nope", small_split.random_input())
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in err.value.message and "d/0" in err.value.message
    await _still_serves(client, small_split)


async def test_route_to_an_unknown_shard_is_not_found(one_stage, small_split):
    _, client = one_stage
    with pytest.raises(AgentError) as err:
        await client.set_route(deployment="x", stage=0, shard_sha256="ab" * 32)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    await _still_serves(client, small_split)


async def _upload(address: str, chunks: list[agent_pb2.ShardChunk]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        async def gen():
            for c in chunks:
                yield c
        await agent_pb2_grpc.AgentStub(channel).UploadShard(gen())


async def test_corrupt_and_truncated_uploads_are_data_loss_and_leave_nothing(one_stage,
                                                                             small_split):
    server, client = one_stage
    data = small_split.shard(1)
    sha = hashlib.sha256(data).hexdigest()
    before = sorted(p.name for p in (server.state_dir / "shards").iterdir())
    corrupt = [agent_pb2.ShardChunk(sha256=sha, size_bytes=len(data)),
               agent_pb2.ShardChunk(data=data[:-1] + b"\x00")]
    truncated = [agent_pb2.ShardChunk(sha256=sha, size_bytes=len(data)),
                 agent_pb2.ShardChunk(data=data[:100])]
    for chunks, message in ((corrupt, "upload corrupt"), (truncated, "upload truncated")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _upload(server.address, chunks)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert message in err.value.details()
    assert sorted(p.name for p in (server.state_dir / "shards").iterdir()) == before
    await _still_serves(client, small_split)


async def test_a_shard_over_the_quota_is_resource_exhausted(one_stage, small_split):
    _, client = one_stage
    with pytest.raises(AgentError) as err:
        await client.upload_shard(b"\x00" * 300_000)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--quota-bytes" in err.value.message
    await _still_serves(client, small_split)


async def test_an_oversized_message_is_resource_exhausted(one_stage, small_split):
    server, client = one_stage
    from layerfleet.agent.transport import MAX_MESSAGE_BYTES

    async with grpc.aio.insecure_channel(server.address, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES * 2)]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent_pb2_grpc.AgentStub(channel).SetRoute(
                agent_pb2.Route(deployment="x" * (MAX_MESSAGE_BYTES + 10)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await _still_serves(client, small_split)


async def test_a_dead_next_hop_is_unavailable_naming_the_hop(agents, small_split):
    servers = [await agents(f"a{i}") for i in range(3)]
    await deploy_chain(small_split, servers)
    dead = servers[2].address
    await servers[2].stop(grace_s=0)
    async with AgentClient(servers[0].address) as client:
        with pytest.raises(AgentError) as err:
            await client.infer("d", small_split.random_input())
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert dead in err.value.message
        # The first agent still serves what it can: a one-stage deployment of its own.
        sha = hashlib.sha256(small_split.shard(0)).hexdigest()
        await client.set_route(deployment="local", stage=0, shard_sha256=sha)
        assert (await client.infer("local", small_split.random_input())).outputs


async def test_fault_injection_is_refused_unless_enabled(one_stage):
    _, client = one_stage
    with pytest.raises(AgentError) as err:
        await client.set_faults(100)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
