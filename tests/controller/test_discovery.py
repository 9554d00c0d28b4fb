"""How devices become known: mDNS on loopback with real zeroconf, and duplicate ids."""

from __future__ import annotations

import asyncio
import shutil

from layerfleet.agent.main import AgentServer, Settings

from .conftest import start_controller


async def _until(predicate, timeout: float = 20.0) -> bool:
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_an_agent_advertising_over_mdns_is_found_and_admitted(tmp_path):
    controller = await start_controller(tmp_path)
    await controller.discovery.start_mdns(interfaces=["127.0.0.1"])
    agent = AgentServer(Settings(listen="127.0.0.1:0", state_dir=str(tmp_path / "a"),
                                 mdns=True, threads=1))
    await agent.start()
    try:
        assert await _until(lambda: (d := controller.registry.device(agent.device_id))
                            is not None and d.found_by == "mdns")
        assert controller.registry.device(agent.device_id).address == agent.address
    finally:
        await agent.stop(grace_s=0)
        await controller.stop(grace_s=0)


async def test_two_agents_claiming_one_device_id_are_reported_not_merged(tmp_path):
    controller = await start_controller(tmp_path)
    token = controller.registry.create_token()
    first = AgentServer(Settings(listen="127.0.0.1:0", state_dir=str(tmp_path / "a"),
                                 mdns=False, threads=1, controller=controller.address,
                                 join_token=token))
    await first.start()
    # A copied state directory on the same machine: the same id, as two Pis flashed from
    # one image would have had before the fingerprint check.
    assert await _until(lambda: controller.registry.device(first.device_id) is not None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    second = AgentServer(Settings(listen="127.0.0.1:0", state_dir=str(tmp_path / "b"),
                                  mdns=False, threads=1, controller=controller.address,
                                  join_token=token))
    await second.start()
    try:
        assert second.device_id == first.device_id
        assert await _until(lambda: any(e.kind == "device.duplicate"
                                        for e in controller.registry.events()))
        record = controller.registry.device(first.device_id)
        assert record.address == first.address  # the first one keeps its record
        event = next(e for e in controller.registry.events() if e.kind == "device.duplicate")
        assert first.address in event.message and second.address in event.message
    finally:
        await second.stop(grace_s=0)
        await first.stop(grace_s=0)
        await controller.stop(grace_s=0)
