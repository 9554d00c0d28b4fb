"""Controller state under churn, with a real controller and real agents on loopback: a device
that returns during a re-plan, a controller that restarts while agents back off, a request
that fails past the first stage."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import numpy as np
import pytest
from layerfleet.agent.client import AgentClient
from layerfleet.agent.identity import ID_FILE
from layerfleet.controller import wire
from layerfleet.controller.errors import ApiError

from .conftest import LocalFleet, pin_speed, save_small_model, start_controller


def state_of(dep) -> str:
    """A Deployment's state (an enum on the wire) as the word the registry keeps."""
    return wire.DEPLOYMENT_STATE.word(dep.state)


def call(fn, *args, **kwargs):
    """The sync client off the event loop the servers run on."""
    return asyncio.to_thread(fn, *args, **kwargs)


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(what)


async def deployed_on_two(tmp_path) -> tuple[LocalFleet, np.ndarray, np.ndarray]:
    """A re-planning controller, two agents, and the small model on both (throughput)."""
    controller = await start_controller(tmp_path, replan=True, calibrate=False)
    fleet = LocalFleet(controller, [], controller.registry.create_token("t"), tmp_path)
    for name in ("agent-a", "agent-b"):
        await fleet.add_agent(name)
    await fleet.wait_devices(2, calibrated=False)
    pin_speed(controller)
    x = np.random.default_rng(3).random((1, 12, 12, 1), dtype=np.float32)
    with fleet.client() as client:
        await call(client.register_file, save_small_model(tmp_path / "small.keras"))
        await call(lambda: list(client.deploy("small", objective="throughput")))
        dep = await call(client.deployment, "small")
        assert sorted(s.device for s in dep.stages) == sorted(a.device_id for a in fleet.agents)
        expected = (await call(client.infer, "small", x)).output
    return fleet, x, expected


async def stop_fleet(fleet: LocalFleet) -> None:
    for agent in fleet.agents:
        await agent.stop(grace_s=0)
    await fleet.controller.stop(grace_s=0)


def hold_replan_rollout(monkeypatch, deployer, until: threading.Event) -> asyncio.Event:
    """Hold a re-plan's roll-out (its conversion, in a worker thread) until `until` is set
    or 10 s passed; the returned event is set when a re-plan got there."""
    loop, reached, split = asyncio.get_running_loop(), asyncio.Event(), deployer._split

    def split_for_replan(model, cuts, name):
        if "~" in name:   # a re-plan's new chain
            loop.call_soon_threadsafe(reached.set)
            until.wait(10)
        return split(model, cuts, name)

    monkeypatch.setattr(deployer, "_split", split_for_replan)
    return reached


async def test_a_device_returning_during_a_replan_leaves_the_deployment_serving(
        tmp_path, monkeypatch):
    """The re-plan moves a deployment off a dead device while an agent claiming that
    device's id, without its shards, joins. Its restore reads the deployment before the
    re-plan switches and writes after, and the re-plan retires the old chain after that
    write: the interleaving the controller must make impossible. The hooks below only hold
    each side at that point (bounded), they change nothing."""
    fleet, x, expected = await deployed_on_two(tmp_path)
    controller = fleet.controller
    try:
        deployer = controller.deployer
        restore_started, restore_done = threading.Event(), asyncio.Event()
        restore = deployer.restore_device

        async def restore_device(device_id: str) -> None:
            restore_started.set()
            try:
                await restore(device_id)
            finally:
                restore_done.set()

        drain = controller.router.drain

        async def drain_after_restore(route: str, timeout_s: float = 30.0) -> None:
            await drain(route, timeout_s)
            try:   # retire the old chain only once the restore has written (or 3 s)
                await asyncio.wait_for(restore_done.wait(), 3)
            except TimeoutError:
                pass

        returning: dict[str, str] = {}
        upload = AgentClient.upload_shard

        async def upload_after_switch(self, data, **kw):
            if self.address == returning.get("address"):   # the restore's upload waits
                def switched():   # ... until the re-plan has switched (or 10 s)
                    dep = controller.registry.deployment("small")
                    return victim.device_id not in {s.device for s in dep.stages}
                try:
                    await wait_for(switched, 10, "switch")
                except TimeoutError:
                    pass
            return await upload(self, data, **kw)

        monkeypatch.setattr(deployer, "restore_device", restore_device)
        split_reached = hold_replan_rollout(monkeypatch, deployer, restore_started)
        monkeypatch.setattr(controller.router, "drain", drain_after_restore)
        monkeypatch.setattr(AgentClient, "upload_shard", upload_after_switch)

        dep = controller.registry.deployment("small")
        victim = next(a for a in fleet.agents if a.device_id == dep.stages[1].device)
        state = victim.state_dir
        await victim.stop(grace_s=0)
        fleet.agents.remove(victim)
        await asyncio.wait_for(split_reached.wait(), 30)   # the re-plan is rolling out

        # The same device id, but a fresh state directory: no shards, no routes.
        fresh = tmp_path / "agent-returning"
        fresh.mkdir()
        shutil.copy(state / ID_FILE, fresh / ID_FILE)
        back = await fleet.add_agent(fresh.name)
        returning["address"] = back.address
        assert back.device_id == victim.device_id
        await asyncio.wait_for(restore_done.wait(), 30)

        with fleet.client() as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    got = (await call(client.infer, "small", x)).output
                    break
                except ApiError as exc:
                    if time.monotonic() > deadline:
                        events = [(e.kind, e.message[:70]) for e in
                                  await call(lambda: list(client.events()))]
                        dep = await call(client.deployment, "small")
                        pytest.fail(f"the deployment does not serve ({exc}); it is "
                                    f"{state_of(dep)} on {[s.device for s in dep.stages]}; "
                                    f"events {events[-8:]}")
                    await asyncio.sleep(0.2)
            np.testing.assert_array_equal(got, expected)
            dep = await call(client.deployment, "small")
            assert state_of(dep) == "active"
    finally:
        await stop_fleet(fleet)


async def test_an_undeploy_during_a_replan_wins_and_leaves_nothing_routed(
        tmp_path, monkeypatch):
    """Undeploy arrives while a re-plan rolls out a new chain: once both are done the
    deployment is undeployed and no agent keeps a route of it (the re-plan must not bring
    it back by switching to its new chain afterwards)."""
    fleet, _, _ = await deployed_on_two(tmp_path)
    controller = fleet.controller
    try:
        undeploy_started = threading.Event()
        undeploy = controller.deployer.undeploy

        async def undeploy_now(name: str) -> None:
            undeploy_started.set()
            await undeploy(name)

        monkeypatch.setattr(controller.deployer, "undeploy", undeploy_now)
        reached = hold_replan_rollout(monkeypatch, controller.deployer, undeploy_started)
        dep = controller.registry.deployment("small")
        victim = next(a for a in fleet.agents if a.device_id == dep.stages[1].device)
        await victim.stop(grace_s=0)
        fleet.agents.remove(victim)
        await asyncio.wait_for(reached.wait(), 30)
        with fleet.client() as client:
            await call(client.undeploy, "small")
        await wait_for(lambda: not controller.deployer.lock("small").locked(), 30, "re-plan")
        await asyncio.sleep(1.0)   # a few re-plan ticks: nothing may resurrect it
        dep = controller.registry.deployment("small")
        kinds = [e.kind for e in controller.registry.events()]
        assert dep.state == "undeployed", kinds
        assert "replan.started" in kinds
        assert all(not a.pipeline.routes for a in fleet.agents), \
            [list(a.pipeline.routes) for a in fleet.agents]
    finally:
        await stop_fleet(fleet)


async def test_a_restarted_controller_lets_backing_off_agents_return_before_marking_down(
        tmp_path):
    """The controller is away for 4 s: the agents' heartbeats fail and they back off (0.5,
    1, 2, 4 s...). Restarted on the same address, it must not mark them down from their
    last-seen times of before the outage while they wait to call again; one agent that
    died meanwhile is marked down once the grace is over."""
    fleet = LocalFleet(await start_controller(tmp_path), [], "", tmp_path)
    fleet.token = fleet.controller.registry.create_token("t")
    try:
        for i in range(3):
            await fleet.add_agent(f"agent-{i}")
        await fleet.wait_devices(3)
        address = fleet.controller.address
        await fleet.controller.stop(grace_s=0)
        dead = fleet.agents.pop()
        await dead.stop(grace_s=0)
        await asyncio.sleep(4.0)
        grace_s = 6.0
        fleet.controller = controller = await start_controller(
            tmp_path, listen=address, restart_grace_s=grace_s)
        restarted = time.time()
        alive = {a.device_id for a in fleet.agents}

        def rejoined() -> bool:
            return all(controller.registry.device(d).last_seen > restarted for d in alive)

        await wait_for(rejoined, grace_s, "the live agents did not call again")
        await wait_for(lambda: controller.registry.device(dead.device_id).state == "down",
                       grace_s + 5, "the dead agent was not marked down after the grace")
        downs = [e for e in controller.registry.events() if e.kind == "device.down"
                 and e.time > restarted]
        assert [e.subject for e in downs] == [dead.device_id]
        assert time.time() - restarted >= grace_s
        assert all(controller.registry.device(d).state == "up" for d in alive)
    finally:
        await stop_fleet(fleet)


async def three_agents(tmp_path) -> LocalFleet:
    """Heartbeats every 5 s (down after 15): what the router decides is not the liveness
    sweep's, within a test."""
    controller = await start_controller(tmp_path, calibrate=False, heartbeat_interval_s=5.0)
    fleet = LocalFleet(controller, [], controller.registry.create_token("t"), tmp_path)
    for i in range(3):
        await fleet.add_agent(f"agent-{i}")
    await fleet.wait_devices(3, calibrated=False)
    pin_speed(controller)
    return fleet


async def test_a_request_failing_past_the_entry_names_the_stage_that_failed(tmp_path):
    fleet = await three_agents(tmp_path)
    try:
        x = np.random.default_rng(4).random((1, 12, 12, 1), dtype=np.float32)
        with fleet.client() as client:
            await call(client.register_file, save_small_model(tmp_path / "small.keras"))
            await call(lambda: list(client.deploy("small", objective="throughput")))
            dep = await call(client.deployment, "small")
            assert len(dep.stages) >= 2
            last = dep.stages[-1]
            victim = next(a for a in fleet.agents if a.device_id == last.device)
            await victim.stop(grace_s=0)
            fleet.agents.remove(victim)
            with pytest.raises(ApiError) as err:
                await call(client.infer, "small", x)
            dep = await call(client.deployment, "small")
        named = f"stage {last.stage} on {victim.device_id}"
        assert named in err.value.message and "stage 0" not in err.value.message
        assert state_of(dep) == "degraded" and named in dep.error, dep.error
    finally:
        await stop_fleet(fleet)


async def test_an_entry_replica_absorbs_a_dead_entry_and_nothing_is_degraded(tmp_path):
    """One stage on one device with two replicas (GNH, throughput). Its device dies; the
    next request is answered by a replica, correctly, and the deployment stays active."""
    import keras
    from layerfleet.controller.partition.local import run_local

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 8), name="x")
    out = keras.layers.Conv2D(16, 3, padding="same", name="c")(inp)
    keras.Model(inp, out, name="one").save(tmp_path / "one.keras")
    fleet = await three_agents(tmp_path)
    try:
        x = np.random.default_rng(5).random((1, 32, 32, 8), dtype=np.float32)
        with fleet.client() as client:
            await call(client.register_file, tmp_path / "one.keras")
            await call(lambda: list(client.deploy("one", objective="throughput",
                                                  redundancy="gnh")))
            dep = await call(client.deployment, "one")
            assert len(dep.stages) == 1 and len(dep.stages[0].replicas) == 2
            victim = next(a for a in fleet.agents if a.device_id == dep.stages[0].device)
            await victim.stop(grace_s=0)
            fleet.agents.remove(victim)
            got = await call(client.infer, "one", x)
            dep = await call(client.deployment, "one")
        record = fleet.controller.registry.deployment("one")
        expected = next(iter(run_local(record.manifest_dir, {"": x}).values()))
        np.testing.assert_array_equal(got.output, expected)
        assert got.hops[0].device in dep.stages[0].replicas
        assert state_of(dep) == "active", dep.error
        assert fleet.controller.registry.device(victim.device_id).state == "up"  # not yet
    finally:
        await stop_fleet(fleet)
