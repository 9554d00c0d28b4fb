"""The product path with a real controller and three real agents on loopback: register,
plan, deploy, infer (equal to run-local), undeploy; failures and restarts."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import numpy as np
import pytest
from layerfleet.controller import wire
from layerfleet.controller.errors import ApiError
from layerfleet.controller.partition.local import run_local
from layerfleet.v1 import controller_pb2, controller_pb2_grpc

from .conftest import pin_speed, save_small_model, start_controller

PHASE, STATE = wire.PHASE, wire.DEPLOYMENT_STATE


def word(labels: wire.Labels, value: int) -> str:
    return labels.word(value)


def call(fn, *args, **kwargs):
    """The sync client off the event loop the servers run on."""
    return asyncio.to_thread(fn, *args, **kwargs)


async def _deploy(client, model: str, **kw) -> list:
    return await call(lambda: list(client.deploy(model, **kw)))


async def test_register_plan_deploy_infer_undeploy(fleet, tmp_path):
    path = save_small_model(tmp_path / "small.keras")
    with fleet.client() as client:
        info = await call(client.register_file, path)
        assert info.name == "small" and info.layers == 5
        plan = await call(client.plan, "small", objective="throughput", top_k=3)
        assert plan.candidates and plan.baselines
        assert plan.candidates[0].throughput_rps >= max(b.throughput_rps for b in plan.baselines)
        steps = await _deploy(client, "small", objective="throughput")
        assert word(PHASE, steps[-1].phase) == "done"
        assert [word(PHASE, s.phase) for s in steps][:2] == ["plan", "convert"]
        dep = await call(client.deployment, "small")
        assert word(STATE, dep.state) == "active" and len(dep.stages) >= 2
        assert len({s.device for s in dep.stages}) == len(dep.stages)

        x = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)
        result = await call(client.infer, "small", x)
        record = fleet.controller.registry.deployment("small")
        expected = run_local(record.manifest_dir, {"": x})
        np.testing.assert_array_equal(result.output, next(iter(expected.values())))
        assert [h.stage for h in result.hops] == list(range(len(dep.stages)))

        many = await call(client.infer_many, "small", [x] * 50)
        assert all(np.array_equal(o.output, result.output) for o in many)

        await call(client.undeploy, "small")
        with pytest.raises(ApiError) as err:
            await call(client.infer, "small", x)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "undeployed" in err.value.message
        for agent in fleet.agents:  # routes gone from every agent
            assert not agent.pipeline.routes


async def test_bad_requests_get_clear_statuses_and_nothing_is_registered(fleet, tmp_path):
    path = save_small_model(tmp_path / "small.keras")
    with fleet.client() as client:
        with pytest.raises(ApiError) as err:
            await call(client.plan, "nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "'nope'" in err.value.message

        data = path.read_bytes()
        header = controller_pb2.ModelHeader(name="cut", format=controller_pb2.KERAS,
                                            sha256=hashlib.sha256(data).hexdigest(),
                                            size_bytes=len(data))
        with pytest.raises(ApiError) as err:
            await call(client._upload, header, data[: len(data) // 2], None)
        assert err.value.code == grpc.StatusCode.DATA_LOSS
        corrupt = data[:-1] + bytes([data[-1] ^ 1])
        with pytest.raises(ApiError) as err:
            await call(client._upload, header, corrupt, None)
        assert err.value.code == grpc.StatusCode.DATA_LOSS
        assert await call(client.models) == []

        await call(client.register_file, path)
        await _deploy(client, "small")
        with pytest.raises(ApiError) as err:
            await call(client.infer, "small", np.zeros((1, 8, 8, 1), np.float32))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected float32[1, 12, 12, 1]" in err.value.message
        served = [a.telemetry.shards for a in fleet.agents]
        assert all(not s for s in served), "a bad input must not reach any agent"
        with pytest.raises(ApiError) as err:
            await _deploy(client, "small")
        assert err.value.code == grpc.StatusCode.ALREADY_EXISTS


async def test_a_model_with_dynamic_shapes_is_refused_naming_the_problem(fleet, tmp_path):
    import keras

    inp = keras.Input((None, None, 3))
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    keras.Model(inp, out, name="dyn").save(tmp_path / "dyn.keras")
    with fleet.client() as client:
        with pytest.raises(ApiError) as err:
            await call(client.register_file, tmp_path / "dyn.keras")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "dynamic shape" in err.value.message and "input_shape" in err.value.message


async def test_killing_an_agent_marks_the_deployment_degraded_then_it_recovers(fleet, tmp_path):
    with fleet.client() as client:
        await call(client.register_file, save_small_model(tmp_path / "small.keras"))
        await _deploy(client, "small", objective="throughput")
        dep = await call(client.deployment, "small")
        victim = next(a for a in fleet.agents if a.device_id == dep.stages[-1].device)
        state_dir = victim.state_dir
        await victim.stop(grace_s=0)
        fleet.agents.remove(victim)
        for _ in range(100):
            dep = await call(client.deployment, "small")
            if word(STATE, dep.state) == "degraded":
                break
            await asyncio.sleep(0.1)
        assert word(STATE, dep.state) == "degraded"
        assert victim.device_id in dep.error and "down" in dep.error
        x = np.zeros((1, 12, 12, 1), np.float32)
        with pytest.raises(ApiError) as err:
            await call(client.infer, "small", x)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        events = [e.kind for e in await call(lambda: list(client.events()))]
        assert "device.down" in events and "deploy.degraded" in events

        # The same device comes back (same state directory): routes restored, active again.
        back = await fleet.add_agent(state_dir.name)
        assert back.device_id == victim.device_id
        for _ in range(100):
            dep = await call(client.deployment, "small")
            if word(STATE, dep.state) == "active":
                break
            await asyncio.sleep(0.1)
        assert word(STATE, dep.state) == "active"
        assert (await call(client.infer, "small", x)).outputs


async def test_a_restarted_controller_keeps_models_and_serves_deployments(fleet, tmp_path):
    with fleet.client() as client:
        await call(client.register_file, save_small_model(tmp_path / "small.keras"))
        await _deploy(client, "small")
    x = np.random.default_rng(1).random((1, 12, 12, 1), dtype=np.float32)
    with fleet.client() as client:
        before = (await call(client.infer, "small", x)).output
    await fleet.controller.stop(grace_s=0)
    fleet.controller = await start_controller(fleet.root)  # same state dir, new port
    with fleet.client() as client:
        assert [m.name for m in await call(client.models)] == ["small"]
        dep = await call(client.deployment, "small")
        assert word(STATE, dep.state) == "active"
        np.testing.assert_array_equal((await call(client.infer, "small", x)).output, before)


async def test_reflection_and_health_are_on(fleet):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(fleet.controller.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="layerfleet.v1.Controller"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for reply in stub.ServerReflectionInfo(ask()):
            names = {s.name for s in reply.list_services_response.service}
            assert {"layerfleet.v1.Controller", "layerfleet.v1.Fleet"} <= names
            break
        assert controller_pb2_grpc is not None


async def test_replanning_moves_a_deployment_without_dropping_requests(tmp_path):
    """Two agents serve; a third joins; the controller re-plans (throughput objective uses
    every device), switches to the new chain while requests keep flowing, and retires the
    old chain after it drains. Then an agent dies and the deployment moves off it."""
    import keras

    from .conftest import LocalFleet

    # Three convolutions of about 75 MFLOP: two devices must double up, three need not.
    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 32), name="x")
    h = inp
    for i in range(3):
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=f"c{i}")(h)
    out = keras.layers.Dense(4, name="y")(keras.layers.GlobalAveragePooling2D(name="g")(h))
    keras.Model(inp, out, name="small").save(tmp_path / "small.keras")
    controller = await start_controller(tmp_path, replan=True, calibrate=False)
    fleet = LocalFleet(controller, [], controller.registry.create_token("t"), tmp_path)
    try:
        for i in range(2):
            await fleet.add_agent(f"agent-{i}")
        await fleet.wait_devices(2, calibrated=False)
        pin_speed(controller)
        with fleet.client() as client:
            await call(client.register_file, tmp_path / "small.keras")
            await _deploy(client, "small", objective="throughput")
            before = await call(client.deployment, "small")
            assert len(before.stages) == 2

            x = np.random.default_rng(2).random((1, 64, 64, 32), dtype=np.float32)
            expected = (await call(client.infer, "small", x)).output
            stop = asyncio.Event()
            answers: list = []

            async def keep_asking():
                while not stop.is_set():
                    answers.append((await call(client.infer, "small", x)).output)

            asker = asyncio.create_task(keep_asking())
            await fleet.add_agent("agent-2")
            await fleet.wait_devices(3, calibrated=False)
            pin_speed(controller)  # the re-planner counts a device once it has a speed
            for _ in range(200):
                dep = await call(client.deployment, "small")
                if len(dep.stages) == 3:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            stop.set()
            await asker  # any dropped request would have raised here
            events = [(e.kind, e.message[:80]) for e in
                      await call(lambda: list(client.events()))]
            assert len(dep.stages) == 3 and word(STATE, dep.state) == "active", events
            assert len(answers) > 5 and all(np.array_equal(a, expected) for a in answers)
            kinds = [e.kind for e in await call(lambda: list(client.events()))]
            assert "replan.done" in kinds
            old_route = "small"
            assert all((old_route, s) not in a.pipeline.routes for a in fleet.agents
                       for s in range(2)), "the old chain's routes were not retired"

            victim = next(a for a in fleet.agents if a.device_id == dep.stages[1].device)
            await victim.stop(grace_s=0)
            fleet.agents.remove(victim)
            for _ in range(200):
                dep = await call(client.deployment, "small")
                if word(STATE, dep.state) == "active" and victim.device_id not in {s.device
                                                                      for s in dep.stages}:
                    break
                await asyncio.sleep(0.1)
            assert victim.device_id not in {s.device for s in dep.stages}
            np.testing.assert_array_equal((await call(client.infer, "small", x)).output, expected)
    finally:
        for agent in fleet.agents:
            await agent.stop(grace_s=0)
        await fleet.controller.stop(grace_s=0)


async def test_agent_to_agent_links_are_measured_on_request_and_used_by_the_planner(fleet):
    with fleet.client() as client:
        links = await call(client.measure_links)
    assert len(links) == 3 and all(not l.error for l in links)
    assert all(l.bandwidth_bytes_per_s > 1e6 and 0 < l.rtt_s < 1 for l in links)
    stored = {(l["a"], l["b"]) for l in fleet.controller.registry.links()}
    assert stored == {(l.a, l.b) for l in links}
    from layerfleet.controller import planner

    view = planner.fleet_from(fleet.controller.registry.devices(),
                              fleet.controller.registry.links())
    a, b = links[0].a, links[0].b
    assert view.link(a, b).bandwidth_Bps == pytest.approx(links[0].bandwidth_bytes_per_s)
