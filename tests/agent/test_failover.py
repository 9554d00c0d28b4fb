"""Nothing lost: a replica that is dead, dies mid-stream or stalls costs no request; a cancel
drops work before it runs; every hop honours a request's deadline; senders that stall or
send too much are cut off and their memory released."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import time

import grpc
import numpy as np
import pytest
from layerfleet.agent import dataport, dataport_server, service
from layerfleet.agent.client import AgentClient, wait_serving
from layerfleet.agent.errors import StatusError
from layerfleet.agent.runtime import ShardRunner
from layerfleet.v1 import agent_pb2, agent_pb2_grpc, tensor_pb2

from .conftest import deploy_chain, start_agent_process


def _sha(split, i: int) -> str:
    return hashlib.sha256(split.shard(i)).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _route(address: str, split, stage: int, next_hops=(), **kw) -> None:
    async with AgentClient(address) as client:
        await client.upload_shard(split.shard(stage))
        await client.set_route(deployment="d", stage=stage, shard_sha256=_sha(split, stage),
                               next_hops=list(next_hops), **kw)


def _expected(split, x):
    """The two-stage answer computed in this process."""
    mid = ShardRunner(split.shard(0)).run(x)
    return ShardRunner(split.shard(1)).run(mid)


# -- replicas that are dead, die or stall ------------------------------------------------


async def test_a_dead_replica_costs_no_request(agents, two_stage_split):
    first = await agents("first")
    live = await agents("live")
    await _route(live.address, two_stage_split, 1)
    dead = f"127.0.0.1:{_free_port()}"   # nothing listens: a powered-off device
    await _route(first.address, two_stage_split, 0, next_hops=[dead, live.address])
    async with AgentClient(first.address) as client:
        replies = await asyncio.gather(*(client.infer("d", two_stage_split.random_input(i))
                                         for i in range(40)))
    assert all(r.hops[1].device_id == live.device_id for r in replies)


@pytest.mark.parametrize("trouble", ["SIGKILL", "SIGSTOP"])
async def test_a_replica_killed_or_stalled_mid_stream_costs_no_request(tmp_path,
                                                                       two_stage_split,
                                                                       trouble):
    """Real agent processes; one stage-1 replica is SIGKILLed, or stopped for 4 s, while
    requests flow with a 2.5 s deadline each: without failover the requests on it would
    fail, or time out waiting for it."""
    first = start_agent_process(tmp_path / "first")
    replicas = [start_agent_process(tmp_path / f"r{i}") for i in range(2)]
    everyone = [first, *replicas]
    try:
        for agent in everyone:
            await wait_serving(agent.address)
        for r in replicas:
            await _route(r.address, two_stage_split, 1)
        await _route(first.address, two_stage_split, 0,
                     next_hops=[r.address for r in replicas])
        inputs = [two_stage_split.random_input(i % 7) for i in range(240)]
        expected = [_expected(two_stage_split, inputs[i]) for i in range(7)]
        victim = replicas[0].process
        done = 0

        async def trouble_maker() -> None:
            while done < 60:
                await asyncio.sleep(0.01)
            victim.send_signal(getattr(signal, trouble))
            if trouble == "SIGSTOP":
                await asyncio.sleep(4)
                victim.send_signal(signal.SIGCONT)

        async with AgentClient(first.address) as client:
            chaos = asyncio.create_task(trouble_maker())
            limit = asyncio.Semaphore(6)

            async def one(i: int):
                nonlocal done
                async with limit:
                    reply = await client.infer("d", inputs[i], timeout_s=2.5)
                    done += 1
                    return i, reply

            results = await asyncio.gather(*(one(i) for i in range(len(inputs))))
            await chaos
        for i, reply in results:
            for name, value in expected[i % 7].items():
                np.testing.assert_array_equal(reply.outputs[name], value)
    finally:
        for agent in everyone:
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGCONT)
                agent.process.kill()
            agent.process.wait(10)


# -- cancels and deadlines ---------------------------------------------------------------


@pytest.mark.parametrize("transport", ["dataport", "grpc"])
async def test_a_hedged_twin_cancelled_while_it_waits_never_runs(agents, two_stage_split,
                                                                 transport):
    """Every request goes to both replicas; the slow one (100 ms a request) has them queue
    up behind its first. Its copies are cancelled as soon as the fast one answers, so it
    runs only the few it had started: without dropping queued work it would run all 30."""
    data_port = "auto" if transport == "dataport" else "off"
    first = await agents("first", data_port=data_port)
    slow = await agents("slow", allow_faults=True, data_port=data_port)
    fast = await agents("fast", data_port=data_port)
    for replica in (slow, fast):
        await _route(replica.address, two_stage_split, 1)
    await _route(first.address, two_stage_split, 0, next_hops=[slow.address, fast.address],
                 replica_mode="hedged", hedge_k=2)
    async with AgentClient(slow.address) as c:
        await c.set_faults(delay_ms=100)
    async with AgentClient(first.address) as client:
        for i in range(30):
            reply = await client.infer("d", two_stage_split.random_input(i))
            assert reply.hops[1].device_id == fast.device_id
    await asyncio.sleep(3.5)   # long enough for the slow replica to run everything it kept
    assert slow.pipeline.compute.runs <= 4, slow.pipeline.compute.runs
    assert fast.pipeline.compute.runs == 30


async def test_every_hop_drops_a_request_whose_deadline_passed_while_it_waited(
        agents, two_stage_split):
    first = await agents("first")
    slow = await agents("slow", allow_faults=True)
    await _route(slow.address, two_stage_split, 1)
    await _route(first.address, two_stage_split, 0, next_hops=[slow.address])
    async with AgentClient(slow.address) as c:
        await c.set_faults(delay_ms=600)
    x = two_stage_split.random_input()

    def send_raw() -> tuple[list[agent_pb2.InferResponse], float]:
        """Straight to the first agent's data port, so only the agents keep the deadline."""
        with socket.create_connection(("127.0.0.1", first.dataport.port), timeout=10) as s:
            s.sendall(dataport.PREFACE)
            started = time.monotonic()
            for i in range(3):
                dataport.send_frame(s, agent_pb2.InferRequest(
                    request_id=i + 1, deployment="d", stage=0, timeout_s=0.3), x)
            reader = dataport.FrameReader(agent_pb2.InferResponse)
            answers: list[agent_pb2.InferResponse] = []
            while len(answers) < 3:
                n = s.recv_into(reader.get_buffer())
                assert n
                answers += [f.message for f in reader.buffer_updated(n)]
            return answers, time.monotonic() - started

    answers, took = await asyncio.to_thread(send_raw)
    assert {a.status_code for a in answers} == {grpc.StatusCode.DEADLINE_EXCEEDED.value[0]}
    assert took < 0.6 + 0.5   # answered at the deadline, not when the slow hop finished
    await asyncio.sleep(1.5)
    # The slow hop ran the first (it had started) and dropped the two that waited past it.
    assert slow.pipeline.compute.runs == 1


async def test_a_client_deadline_is_deadline_exceeded_naming_the_hop(agents, two_stage_split):
    only = await agents("a", allow_faults=True)
    await _route(only.address, two_stage_split, 0)
    async with AgentClient(only.address) as client:
        await client.set_faults(delay_ms=500)
        with pytest.raises(StatusError) as err:
            await client.infer("d", two_stage_split.random_input(), timeout_s=0.2)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert only.address in err.value.message


# -- senders that stall or send too much -------------------------------------------------


async def test_a_data_port_sender_stalled_halfway_through_a_frame_is_cut_off(
        agents, small_split, monkeypatch):
    monkeypatch.setattr(dataport_server, "STALL_S", 0.3)
    server = await agents("a")
    await deploy_chain(small_split, [server])
    x = {"image": np.zeros((1, 16, 16, 3), np.float32)}
    frame = b"".join(bytes(p) for p in dataport.encode_frame(
        agent_pb2.InferRequest(request_id=1, deployment="d", stage=0), x))

    def stall() -> bytes:
        with socket.create_connection(("127.0.0.1", server.dataport.port), timeout=10) as s:
            s.sendall(dataport.PREFACE + frame[:len(frame) // 2])
            seen = b""
            while chunk := s.recv(100):   # until the agent hangs up
                seen += chunk
            return seen

    started = time.monotonic()
    assert await asyncio.to_thread(stall) == dataport.PREFACE
    assert time.monotonic() - started < 3
    assert server.budget.held_bytes == 0
    async with AgentClient(server.address) as client:
        assert (await client.infer("d", small_split.random_input())).outputs


async def test_a_grpc_request_stalled_between_chunks_fails_and_is_released(agents, small_split,
                                                                           monkeypatch):
    monkeypatch.setattr(service, "STALL_S", 0.3)
    server = await agents("a")
    await deploy_chain(small_split, [server])
    first_chunk = agent_pb2.InferRequest(
        request_id=5, deployment="d", stage=0, more=True, tensors=[tensor_pb2.Tensor(
            name="image", dtype=tensor_pb2.FLOAT32, shape=[1, 16, 16, 3], data=bytes(1024))])
    sent = asyncio.Event()

    async def requests():
        yield first_chunk
        await sent.wait()   # and then nothing, until the answer came

    async with AgentClient(server.address, timeout_s=10) as client:
        call = agent_pb2_grpc.AgentStub(client._channel).Infer(requests())
        answer = await asyncio.wait_for(call.read(), 5)
        sent.set()
        call.cancel()
    assert answer.request_id == 5
    assert answer.status_code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "stalled" in answer.status_message


async def test_a_stalled_upload_is_cut_off_and_leaves_nothing(agents, small_split, monkeypatch):
    monkeypatch.setattr(service, "STALL_S", 0.3)
    server = await agents("a")
    data = small_split.shard(0)
    sha = hashlib.sha256(data).hexdigest()
    release = asyncio.Event()

    async def chunks():
        yield agent_pb2.ShardChunk(sha256=sha, size_bytes=len(data))
        yield agent_pb2.ShardChunk(data=data[:100])
        await release.wait()

    async with AgentClient(server.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent_pb2_grpc.AgentStub(client._channel).UploadShard(chunks(), timeout=10)
        release.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stalled" in err.value.details()
    assert sorted(p.name for p in (server.state_dir / "shards").iterdir()) == []


@pytest.mark.parametrize("use_data_port", [True, False], ids=["dataport", "grpc"])
async def test_requests_past_the_in_flight_budget_are_resource_exhausted(agents, small_split,
                                                                         use_data_port):
    server = await agents("a", max_inflight_bytes=10_000)   # one 3 kB request fits, 12 kB not
    await deploy_chain(small_split, [server])
    async with AgentClient(server.address, use_data_port=use_data_port) as client:
        with pytest.raises(StatusError) as err:
            await client.infer("d", {"image": np.zeros((1, 32, 32, 3), np.float32)})
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-inflight-bytes" in err.value.message
        assert (await client.infer("d", small_split.random_input())).outputs
    assert server.budget.held_bytes == 0


async def test_health_and_the_watchdog_see_a_data_port_that_cannot_accept(agents, small_split,
                                                                          monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from layerfleet.agent import main

    monkeypatch.setattr(main, "HEALTH_INTERVAL_S", 0.1)
    monkeypatch.setattr(dataport_server, "ACCEPT_FAILURES_UNHEALTHY", 3)
    server = await agents("a")
    server.dataport._listener.shutdown(socket.SHUT_RDWR)   # accept() fails from now on
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 5
        while True:
            status = (await stub.Check(health_pb2.HealthCheckRequest())).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING or \
                    time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="session")
def two_stage_split(tmp_path_factory, shard_cache):
    """The small CNN in 2 shards (stage 1 is the last)."""
    import keras

    from .conftest import _split

    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    return _split(keras.Model(inp, out), [2], tmp_path_factory.mktemp("two"), shard_cache)



async def test_half_received_grpc_requests_are_held_in_the_budget_and_released(
        agents, small_split, monkeypatch):
    """Many chunked requests left half-sent on one stream cannot grow the agent past its
    budget: each holds what it declared, the one that does not fit is refused, and all of
    it comes back when they are cut off."""
    monkeypatch.setattr(service, "STALL_S", 0.5)
    server = await agents("a", max_inflight_bytes=3 << 20)
    await deploy_chain(small_split, [server])
    shape = [1, 256, 1024]   # 1 MiB of float32 declared by each request

    def half(request_id: int) -> agent_pb2.InferRequest:
        return agent_pb2.InferRequest(
            request_id=request_id, deployment="d", stage=0, more=True,
            tensors=[tensor_pb2.Tensor(name="image", dtype=tensor_pb2.FLOAT32, shape=shape,
                                       data=bytes(1024))])

    release = asyncio.Event()

    async def requests():
        for i in range(1, 5):
            yield half(i)
        await release.wait()

    async with AgentClient(server.address, timeout_s=10) as client:
        call = agent_pb2_grpc.AgentStub(client._channel).Infer(requests())
        first = await asyncio.wait_for(call.read(), 5)   # the fourth does not fit
        assert (first.request_id, first.status_code) == (
            4, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert server.budget.held_bytes == 3 << 20
        stalled = [await asyncio.wait_for(call.read(), 5) for _ in range(3)]
        assert sorted(a.request_id for a in stalled) == [1, 2, 3]
        assert {a.status_code for a in stalled} == {grpc.StatusCode.DEADLINE_EXCEEDED.value[0]}
        assert server.budget.held_bytes == 0
        release.set()
        call.cancel()


def test_a_burst_is_over_once_when_nothing_is_held_after_enough_was():
    from layerfleet.agent.budget import Budget

    budget = Budget(100 << 20)
    budget.take(8 << 20)
    budget.give(8 << 20)
    assert not budget.burst_over(16 << 20)   # too small a burst to bother
    budget.take(20 << 20)
    assert not budget.burst_over(16 << 20)   # still held
    budget.give(20 << 20)
    assert budget.burst_over(16 << 20)
    assert not budget.burst_over(16 << 20)   # once
