"""The real `layerfleet-agent` console script: start, settings, drain on SIGTERM, unit file."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from layerfleet.agent.client import AgentClient, wait_serving
from layerfleet.agent.main import load_settings

from .conftest import start_agent_process

ROOT = Path(__file__).resolve().parents[2]


async def test_sigterm_lets_in_flight_requests_finish_and_exits_0(tmp_path, small_split):
    agent = start_agent_process(tmp_path / "a", "--allow-faults")
    try:
        async with AgentClient(agent.address) as client:
            await wait_serving(agent.address)
            sha = await client.upload_shard(small_split.shard(0))
            await client.set_route(deployment="d", stage=0, shard_sha256=sha)
            await client.set_faults(delay_ms=300)  # every request takes >= 0.3 s
            pending = [asyncio.ensure_future(client.infer("d", small_split.random_input(i)))
                       for i in range(3)]
            await asyncio.sleep(0.1)
            code = await asyncio.to_thread(agent.terminate)
            replies = await asyncio.gather(*pending)
    finally:
        if agent.process.poll() is None:
            agent.process.kill()
    assert code == 0
    assert all(r.outputs for r in replies)


def test_a_non_loopback_listen_needs_insecure_and_says_why(tmp_path):
    exe = str(Path(sys.executable).parent / "layerfleet-agent")
    result = subprocess.run([exe, "--listen", "0.0.0.0:0", "--state-dir", str(tmp_path),
                             "--no-mdns"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--insecure" in result.stderr and "TLS" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_precedence_is_flag_then_env_then_file(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('listen = "127.0.0.1:1"\nthreads = 2\ncontroller = "file:1"\n'
                      'no_mdns = true\n')
    env = {"LAYERFLEET_THREADS": "3", "LAYERFLEET_CONTROLLER": "env:1"}
    s = load_settings(["--config", str(config), "--controller", "flag:1"], env=env)
    assert (s.listen, s.threads, s.controller, s.mdns) == ("127.0.0.1:1", 3, "flag:1", False)


def test_a_data_port_setting_is_auto_off_or_a_port():
    assert load_settings([], env={}).data_port == "auto"
    assert load_settings(["--data-port", "off"], env={}).data_port == "off"
    assert load_settings([], env={"LAYERFLEET_DATA_PORT": "7001"}).data_port == "7001"
    with pytest.raises(SystemExit, match="--data-port 'fast' is not 'auto', 'off' or a port"):
        load_settings(["--data-port", "fast"], env={})


def test_an_unknown_config_key_is_refused(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('listne = "127.0.0.1:1"\n')
    with pytest.raises(SystemExit, match="unknown setting.*listne"):
        load_settings(["--config", str(config)], env={})


def test_two_agents_on_one_machine_from_one_image_get_different_ids(tmp_path):
    from layerfleet.agent.identity import device_id

    mid = tmp_path / "machine-id"
    serial = tmp_path / "serial"
    mid.write_text("aaaa\n")
    serial.write_text("1000000012345678")
    state = tmp_path / "state"
    first = device_id(state, machine_id=mid, serial_sources=(serial,))
    assert device_id(state, machine_id=mid, serial_sources=(serial,)) == first
    # The same SD card image booted on another board: another serial.
    serial.write_text("10000000deadbeef")
    second = device_id(state, machine_id=mid, serial_sources=(serial,))
    assert second != first
    mid.write_text("bbbb\n")
    assert device_id(state, machine_id=mid, serial_sources=(serial,)) != second
    (state / "device-id.json").write_text("{not json")
    assert device_id(state, machine_id=mid, serial_sources=(serial,)).startswith("lf-")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit, binary", [("layerfleet-agent", "layerfleet-agent"),
                                          ("layerfleet-controller", "layerfleet-controller")])
def test_systemd_units_verify_and_are_hardened(tmp_path, unit, binary):
    # The unit points at /opt/layerfleet/...; verify a copy pointing at this install.
    text = (ROOT / "systemd" / f"{unit}.service").read_text()
    bindir = str(Path(sys.executable).parent)
    local = tmp_path / f"{unit}.service"
    local.write_text(text.replace(f"/opt/layerfleet/{unit.split('-')[1]}/bin", bindir))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(local)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local)],
                              capture_output=True, text=True)
    exposure = float(security.stdout.split("exposure level for")[1].split(":")[1].split()[0])
    assert exposure <= 2.0, security.stdout[-500:]
