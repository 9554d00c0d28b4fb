"""The data port on real agents: offered in Describe, used by every hop, refusing bad
frames and strangers with the same statuses as gRPC, surviving a restarted next hop."""

from __future__ import annotations

import asyncio
import socket

import grpc
import numpy as np
import pytest
from layerfleet.agent import carriers, dataport, dataport_server
from layerfleet.agent.client import AgentClient, AgentError
from layerfleet.agent.main import AgentServer
from layerfleet.agent.runtime import ShardRunner
from layerfleet.controller.partition.local import run_local
from layerfleet.v1 import agent_pb2

from .conftest import deploy_chain, settings


async def test_an_agent_offers_its_data_port_next_to_its_grpc_port(agents):
    server = await agents("a")
    async with AgentClient(server.address) as client:
        info = await client.describe()
    grpc_port = int(server.address.rsplit(":", 1)[1])
    assert info.data_port not in (0, grpc_port)
    assert server.dataport is not None and server.dataport.port == info.data_port


async def test_the_data_port_defaults_to_the_grpc_port_plus_one(tmp_path):
    with socket.socket() as probe:   # find two free neighbouring ports
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = AgentServer(settings(tmp_path / "a", listen=f"127.0.0.1:{port}"))
    try:
        await server.start()
        assert server.dataport is not None and server.dataport.port == port + 1
    except OSError as exc:
        pytest.skip(f"port {port + 1} was taken meanwhile: {exc}")
    finally:
        await server.stop(grace_s=0)


async def test_a_hop_to_an_agent_without_a_data_port_falls_back_to_grpc(agents, small_split):
    servers = [await agents("a"), await agents("b", data_port="off")]
    await deploy_chain(small_split, servers)
    x = small_split.random_input()
    async with AgentClient(servers[0].address) as client:
        reply = await client.infer("d", x)
        assert client.transport == "dataport"
    assert servers[0].pipeline.hops.kind(servers[1].address) == "grpc"
    expected = x
    for i in range(2):
        expected = ShardRunner(small_split.shard(i)).run(expected)
    assert set(reply.outputs) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(reply.outputs[name], expected[name])


async def test_a_stranger_on_the_data_port_is_disconnected_and_the_agent_keeps_serving(
        agents, small_split):
    server = await agents("a")
    await deploy_chain(small_split, [server])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.dataport.port)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64)
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), 5)   # until the agent hangs up
    assert received == dataport.PREFACE
    writer.close()
    async with AgentClient(server.address) as client:
        assert (await client.infer("d", small_split.random_input())).outputs


@pytest.mark.parametrize("use_data_port", [True, False], ids=["dataport", "grpc"])
async def test_a_request_over_the_size_limit_is_resource_exhausted(agents, small_split,
                                                                   use_data_port):
    server = await agents("a", max_request_bytes=2_000_000)
    await deploy_chain(small_split, [server])
    too_big = {"image": np.zeros((1, 1024, 1024), np.float32)}   # 4 MiB: chunked on gRPC
    async with AgentClient(server.address, use_data_port=use_data_port) as client:
        with pytest.raises(AgentError) as err:
            await client.infer("d", too_big)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-request-bytes" in err.value.message
        assert (await client.infer("d", small_split.random_input())).outputs


async def test_a_next_hop_that_restarts_fails_the_requests_it_held_then_serves_again(
        tmp_path, agents, small_split):
    first = await agents("a0")
    second = AgentServer(settings(tmp_path / "a1", allow_faults=True))
    await second.start()
    address = second.address
    await deploy_chain(small_split, [first, second, await agents("a2")])
    async with AgentClient(second.address) as c:
        await c.set_faults(delay_ms=500)   # keep requests in flight on the second agent
    x = small_split.random_input()
    async with AgentClient(first.address) as client:
        held = [asyncio.ensure_future(client.infer("d", x)) for _ in range(3)]
        await asyncio.sleep(0.2)
        await second.stop(grace_s=0)
        results = await asyncio.gather(*held, return_exceptions=True)
        assert all(isinstance(r, AgentError) and r.code == grpc.StatusCode.UNAVAILABLE
                   and address in r.message for r in results), results

        # Same state and gRPC address, another data port (the gRPC port + 1 now): the
        # first agent asks again where it is.
        again = AgentServer(settings(tmp_path / "a1", listen=address))
        await again.start()
        try:
            assert again.dataport.port != second.dataport.port
            reply = await client.infer("d", x)
        finally:
            await again.stop(grace_s=0)
    expected = run_local(small_split.directory, x)
    np.testing.assert_array_equal(reply.outputs["probs"], expected["probs"])


async def test_while_draining_requests_in_flight_finish_and_new_ones_are_unavailable(
        tmp_path, small_split):
    server = AgentServer(settings(tmp_path / "a", allow_faults=True))
    await server.start()
    await deploy_chain(small_split, [server])
    async with AgentClient(server.address) as client:
        await client.set_faults(delay_ms=300)
        held = [asyncio.ensure_future(client.infer("d", small_split.random_input(i)))
                for i in range(2)]
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(server.stop(grace_s=5))
        while not server.dataport.draining:
            await asyncio.sleep(0.01)
        with pytest.raises(AgentError) as err:
            await client.infer("d", small_split.random_input())
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in err.value.message
        assert all(reply.outputs for reply in await asyncio.gather(*held))
        await stopping


async def test_a_sender_that_stops_reading_answers_makes_the_agent_stop_reading(
        agents, small_split, monkeypatch):
    # Small buffers so a few dozen answers fill them (the default is 4 MiB).
    monkeypatch.setattr(dataport, "SOCKET_BUFFER_BYTES", 64 << 10)
    server = await agents("a")
    await deploy_chain(small_split, [server])   # stage 0 answers 8 kB per request
    x = small_split.random_input()
    n = 1000
    requests = b"".join(
        bytes(piece) for i in range(n) for piece in dataport.encode_frame(
            agent_pb2.InferRequest(request_id=i, deployment="d", stage=0), x))
    sock = socket.socket()
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 64 << 10)
    sock.connect(("127.0.0.1", server.dataport.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(dataport.PREFACE + requests)   # 3 MB, and read nothing back for now

    # An agent that kept reading would have taken every request by now (each runs in
    # microseconds); one that stops reading leaves most of them with us.
    await asyncio.sleep(1.0)
    assert writer.transport.get_write_buffer_size() > len(requests) // 2, \
        "the agent kept reading while its answers piled up"
    answers = dataport.FrameReader(agent_pb2.InferResponse)
    received: list[int] = []
    while len(received) < n:   # reading the answers lets it carry on to the end
        buffer = answers.get_buffer()
        data = await asyncio.wait_for(reader.read(len(buffer)), 10)
        buffer[:len(data)] = data
        received += [f.message.request_id for f in answers.buffer_updated(len(data))]
    assert sorted(received) == list(range(n))
    assert writer.transport.get_write_buffer_size() == 0
    writer.close()


async def test_a_sender_over_the_connection_limit_is_told_busy_and_falls_back_to_grpc(
        agents, small_split):
    server = await agents("a", max_connections=2)
    await deploy_chain(small_split, [server])
    async with AgentClient(server.address) as client:   # connection 1
        assert (await client.infer("d", small_split.random_input())).outputs
        _, held = await asyncio.open_connection("127.0.0.1", server.dataport.port)  # 2
        reader, extra = await asyncio.open_connection("127.0.0.1", server.dataport.port)
        assert await asyncio.wait_for(reader.read(), 5) == dataport.BUSY   # 3, then closed
        async with AgentClient(server.address) as late:
            assert (await late.infer("d", small_split.random_input(1))).outputs
            assert late.transport == "grpc"
        assert (await client.infer("d", small_split.random_input(1))).outputs
        assert client.transport == "dataport"
        for writer in (held, extra):
            writer.close()


async def test_at_the_limit_a_connection_idle_for_a_while_makes_room(agents, small_split,
                                                                     monkeypatch):
    monkeypatch.setattr(dataport_server, "EVICT_IDLE_S", 0.2)
    server = await agents("a", max_connections=1)
    await deploy_chain(small_split, [server])
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", server.dataport.port)
    await asyncio.sleep(0.5)
    async with AgentClient(server.address) as client:
        assert (await client.infer("d", small_split.random_input())).outputs
        assert client.transport == "dataport"
    assert await asyncio.wait_for(idle_reader.read(), 5) == dataport.PREFACE  # then closed
    idle.close()


@pytest.mark.parametrize("firewall", ["refuses", "drops"])
async def test_a_data_port_the_network_blocks_falls_back_to_grpc_quickly(agents, small_split,
                                                                        firewall):
    server = await agents("a")
    await deploy_chain(small_split, [server])
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    queued: list[socket.socket] = []
    if firewall == "drops":   # a full accept queue drops new SYNs, like a DROP rule
        blocker.listen(0)
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(blocker.getsockname())
            queued.append(s)
    server.service.data_port = blocker.getsockname()[1]   # what Describe now announces
    try:
        async with AgentClient(server.address) as client:
            started = asyncio.get_running_loop().time()
            reply = await client.infer("d", small_split.random_input())
            took = asyncio.get_running_loop().time() - started
            assert client.transport == "grpc" and reply.outputs
        assert took < carriers.DATA_PORT_CONNECT_TIMEOUT_S + 1.5
    finally:
        for s in [blocker, *queued]:
            s.close()
