"""Requests nobody could mean: shapes no array can have, stage numbers that overflow the
wire, names that are paths. Each fails alone with INVALID_ARGUMENT; the stream or data-port
connection it came on keeps answering the requests around it."""

from __future__ import annotations

import asyncio
import math
import socket
import struct

import grpc
import numpy as np
import pytest
from layerfleet.agent import dataport, tensors
from layerfleet.agent.client import AgentClient, AgentError
from layerfleet.v1 import agent_pb2, agent_pb2_grpc, tensor_pb2

from .conftest import deploy_chain

HOSTILE_SHAPES = {"65 dims": [1] * 65, "2^62 x 2^62 x 0": [2 ** 62, 2 ** 62, 0]}


def _hostile(shape: list[int]) -> tensor_pb2.Tensor:
    """A float32 tensor of `shape` whose byte count matches it, so only the shape is
    wrong: numpy cannot make an array of it."""
    return tensor_pb2.Tensor(name="image", dtype=tensor_pb2.FLOAT32, shape=shape,
                             data=bytes(4 * math.prod(shape)))


@pytest.mark.parametrize("shape", HOSTILE_SHAPES.values(), ids=HOSTILE_SHAPES.keys())
async def test_a_bad_shape_on_the_grpc_stream_fails_alone(agents, small_split, shape):
    server = await agents("a")
    await deploy_chain(small_split, [server])
    good = tensors.encode_many(small_split.random_input())
    requests = [agent_pb2.InferRequest(request_id=1, deployment="d", stage=0, tensors=good),
                agent_pb2.InferRequest(request_id=2, deployment="d", stage=0,
                                       tensors=[_hostile(shape)]),
                agent_pb2.InferRequest(request_id=3, deployment="d", stage=0, tensors=good)]

    async def send():
        for r in requests:
            yield r

    async with grpc.aio.insecure_channel(server.address) as channel:
        answers = {a.request_id: a async for a in agent_pb2_grpc.AgentStub(channel).Infer(send())}
    assert sorted(answers) == [1, 2, 3]
    assert answers[2].status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "tensor 'image'" in answers[2].status_message
    assert answers[1].status_code == answers[3].status_code == 0
    assert answers[1].tensors and answers[3].tensors


async def test_a_bad_shape_in_a_chunked_request_is_answered_once_and_its_chunks_skipped(
        agents, small_split):
    server = await agents("a")
    await deploy_chain(small_split, [server])
    good = tensors.encode_many(small_split.random_input())
    first = agent_pb2.InferRequest(request_id=2, deployment="d", stage=0, more=True,
                                   tensors=[_hostile([2 ** 62, 2 ** 62, 0])])
    rest = agent_pb2.InferRequest(request_id=2, tensors=[tensor_pb2.Tensor(name="image",
                                                                           data=b"\0" * 64)])
    requests = [first, rest, agent_pb2.InferRequest(request_id=3, deployment="d", stage=0,
                                                    tensors=good)]

    async def send():
        for r in requests:
            yield r

    async with grpc.aio.insecure_channel(server.address) as channel:
        answers = [a async for a in agent_pb2_grpc.AgentStub(channel).Infer(send())]
    assert [a.request_id for a in answers].count(2) == 1
    by_id = {a.request_id: a for a in answers}
    assert by_id[2].status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id[3].status_code == 0 and by_id[3].tensors


def _frame(request_id: int, arrays: dict[str, np.ndarray]) -> bytes:
    header = agent_pb2.InferRequest(request_id=request_id, deployment="d", stage=0)
    return b"".join(bytes(p) for p in dataport.encode_frame(header, arrays))


def _hostile_frame(request_id: int, shape: list[int]) -> bytes:
    """A data-port frame whose header claims `shape` and whose payload has its bytes."""
    tensor = _hostile(shape)
    payload, tensor.data = tensor.data, b""
    header = agent_pb2.InferRequest(request_id=request_id, deployment="d", stage=0,
                                    tensors=[tensor]).SerializeToString()
    return struct.pack("<IQ", len(header), len(payload)) + header + payload


@pytest.mark.parametrize("shape", HOSTILE_SHAPES.values(), ids=HOSTILE_SHAPES.keys())
async def test_a_bad_shape_on_the_data_port_fails_alone(agents, small_split, shape):
    server = await agents("a")
    await deploy_chain(small_split, [server])
    good = small_split.random_input()

    def exchange() -> dict[int, agent_pb2.InferResponse]:
        with socket.create_connection(("127.0.0.1", server.dataport.port), timeout=10) as s:
            s.sendall(dataport.PREFACE + _frame(1, good) + _hostile_frame(2, shape)
                      + _frame(3, good))
            reader = dataport.FrameReader(agent_pb2.InferResponse)
            answers: dict[int, agent_pb2.InferResponse] = {}
            while len(answers) < 3:
                n = s.recv_into(reader.get_buffer())
                assert n, f"the agent hung up after {sorted(answers)}"
                for frame in reader.buffer_updated(n):
                    answers[frame.message.request_id] = frame.message
            return answers

    answers = await asyncio.to_thread(exchange)
    assert answers[2].status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "tensor 'image'" in answers[2].status_message
    assert answers[1].status_code == answers[3].status_code == 0


@pytest.mark.parametrize("route, why", [
    (dict(stage=2 ** 31 - 1, next_hops=["127.0.0.1:1"]), "stage 2147483647 is out of range"),
    (dict(stage=-1), "stage -1 is out of range"),
    (dict(deployment="../d"), "not allowed"),
    (dict(next_hops=["not an address"]), "is not HOST:PORT"),
    (dict(hedge_k=-3), "hedge_k -3"),
], ids=["stage 2^31-1", "negative stage", "path name", "bad next hop", "negative hedge_k"])
async def test_a_route_that_cannot_be_is_invalid_argument(agents, small_split, route, why):
    server = await agents("a")
    await deploy_chain(small_split, [server])
    async with AgentClient(server.address) as client:
        sha = (await client.list_routes())[0].shard_sha256
        with pytest.raises(AgentError) as err:
            await client.set_route(**{"deployment": "e", "stage": 0, "shard_sha256": sha,
                                      **route})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert why in err.value.message
        assert [r.deployment for r in await client.list_routes()] == ["d"]
        assert (await client.infer("d", small_split.random_input())).outputs
