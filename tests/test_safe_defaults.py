"""As shipped, nothing opens an unauthenticated port to the network, state is private
whatever the umask, and no secret rides on a command line."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from layerfleet.agent.main import AgentServer, Settings, load_settings
from layerfleet.controller.main import DEFAULT_LISTEN, _parser
from layerfleet.controller.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def _exec_start(unit: str) -> list[str]:
    lines = [line for line in (ROOT / "systemd" / unit).read_text().splitlines()
             if line.startswith("ExecStart=")]
    assert len(lines) == 1
    return shlex.split(lines[0].removeprefix("ExecStart="))


def test_the_controller_unit_listens_on_loopback_unless_the_operator_opens_it():
    args = vars(_parser().parse_args(_exec_start("layerfleet-controller.service")[1:]))
    assert args.get("listen", DEFAULT_LISTEN).startswith("127.0.0.1:")
    assert not args.get("insecure", False)


@pytest.mark.parametrize("flags, listen, insecure", [
    ([], "127.0.0.1:50051", False),
    (["--listen", "0.0.0.0:50051", "--insecure"], "0.0.0.0:50051", True),
], ids=["default", "opened by the operator"])
def test_the_install_script_writes_a_loopback_agent_unless_told_otherwise(tmp_path, flags,
                                                                          listen, insecure):
    printed = subprocess.run(["bash", str(ROOT / "deploy" / "install-agent.sh"), *flags,
                              "--print-config"], capture_output=True, text=True, check=True)
    config = tmp_path / "agent.toml"
    config.write_text(printed.stdout)
    settings = load_settings(["--config", str(config)], env={})
    assert (settings.listen, settings.insecure) == (listen, insecure)


def test_state_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        agent = AgentServer(Settings(listen="127.0.0.1:0", state_dir=str(tmp_path / "agent"),
                                     mdns=False))
        registry = Registry(tmp_path / "controller" / "controller.db")
        registry.create_token("t")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert mode(agent.state_dir) == 0o700
    assert mode(agent.state_dir / "shards") == 0o700
    assert mode(agent.state_dir / "device-id.json") == 0o600
    assert mode(tmp_path / "controller" / "controller.db") == 0o600
    for sidecar in (tmp_path / "controller").glob("controller.db-*"):   # WAL and SHM
        assert mode(sidecar) == 0o600, sidecar
    registry.close()


def test_the_controller_state_directory_is_made_private(tmp_path):
    from layerfleet.controller.main import ControllerServer
    from layerfleet.controller.main import Settings as ControllerSettings

    old = os.umask(0o022)
    try:
        server = ControllerServer(ControllerSettings(state_dir=tmp_path / "state", mdns=False))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    server.registry.close()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_the_demo_hands_agents_the_join_token_outside_their_command_line(tmp_path):
    from layerfleet.controller.demo import local_fleet

    with local_fleet(tmp_path, n_agents=1) as (_, agents):
        pid = agents[0].process.pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    token = next(v for v in environ if v.startswith(b"LAYERFLEET_JOIN_TOKEN="))
    secret = token.split(b"=", 1)[1]
    assert secret.startswith(b"lf_")
    assert not any(secret in arg for arg in argv) and b"--join-token" not in argv
