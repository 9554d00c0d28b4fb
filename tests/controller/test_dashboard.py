"""The dashboard in a real headless Chromium against a real controller and three real agents
on loopback: the fleet and a deployment across it appear, then change live (requests routed,
an agent stopped) without reloading the page; the plan preview shows the Plan RPC's
candidates. Screenshots are written as test artifacts (browser.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from layerfleet.agent.transport import InsecureListen
from layerfleet.controller.dashboard.access import check_listen

from .browser import chromium, save_screenshot
from .conftest import LocalFleet, pin_speed, save_small_model
from .test_end_to_end import call

pytestmark = pytest.mark.timeout(240)
BIN = Path(sys.executable).parent


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll `check` (run off the event loop: it may talk to the browser) until truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def page_state(driver: Any) -> dict[str, Any]:
    """What the page shows, read back from the DOM the way a person would read it."""
    return driver.execute_script("""
        const rows = [...document.querySelectorAll('#devices tbody tr')];
        const deps = [...document.querySelectorAll('article.deployment')];
        return {
          live: document.getElementById('connection').dataset.state,
          devices: Object.fromEntries(rows.map(r => [r.dataset.device, r.dataset.state])),
          deployments: Object.fromEntries(deps.map(d => [d.dataset.deployment, {
            state: d.dataset.state, requests: Number(d.dataset.requests),
            stages: [...d.querySelectorAll('.stage[data-stage]')].map(s => ({
              device: s.dataset.device, state: s.dataset.state, text: s.innerText}))}])),
          events: [...document.querySelectorAll('#events li')].map(l => l.dataset.kind),
        };""")


async def deploy_small(fleet: LocalFleet, tmp_path: Any) -> Any:
    pin_speed(fleet.controller)  # equal devices: the throughput plan uses all three
    with fleet.client() as client:
        await call(client.register_file, await call(save_small_model, tmp_path / "small.keras"))
        await call(lambda: list(client.deploy("small", objective="throughput")))
        # Converting holds the GIL long enough for the tests' 0.3 s heartbeats to be missed
        # now and then: let a device marked down meanwhile come back before looking.
        registry = fleet.controller.registry
        await until(lambda: all(d.state == "up" for d in registry.devices()) and
                    registry.deployment("small").state == "active", "the fleet to settle")
        return await call(client.deployment, "small")


async def test_dashboard_shows_the_fleet_and_a_deployment_and_follows_them_live(
        dashboard_fleet, tmp_path):
    fleet = dashboard_fleet
    dep = await deploy_small(fleet, tmp_path)
    chain = [s.device for s in dep.stages]
    assert len(set(chain)) == 3, f"expected a deployment across three devices, got {chain}"
    url = fleet.controller.dashboard.url
    ids = {a.device_id for a in fleet.agents}

    async with chromium(tmp_path / "chromium-profile") as driver:
        await call(driver.get, url)
        shown = await until(lambda: (s := page_state(driver))["devices"] and
                            s["deployments"].get("small") and s, "fleet and deployment")
        assert shown["live"] == "live"
        assert shown["devices"] == {i: "up" for i in ids}
        small = shown["deployments"]["small"]
        assert small["state"] == "active"
        assert [s["device"] for s in small["stages"]] == chain
        assert all(s["state"] == "ready" for s in small["stages"])
        assert "deploy.active" in shown["events"]

        # Requests routed by the controller show up on the open page: counts and timings.
        x = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)
        with fleet.client() as client:
            await call(client.infer_many, "small", [x] * 20)
        small = (await until(
            lambda: (d := page_state(driver)["deployments"]["small"])["requests"] >= 20 and d,
            "20 requests on the page"))["stages"]
        assert all("measured" in s["text"] and "– measured" not in s["text"] for s in small), \
            [s["text"] for s in small]
        shot = await call(save_screenshot, driver, tmp_path / "dashboard.png")
        assert shot.stat().st_size > 10_000

        # The plan preview: the same candidates as the Plan RPC, side by side.
        with fleet.client() as client:
            rpc = await call(client.plan, "small", objective="throughput", top_k=3)
        await call(driver.get, url + "plan?model=small&objective=throughput&top=3")
        cards = await until(lambda: driver.execute_script(
            "return [...document.querySelectorAll('article.candidate')].map(c => "
            "[...c.querySelectorAll('.stage[data-device]')].map(s => s.dataset.device))"),
            "plan candidates")
        assert cards == [[s.device for s in c.stages] for c in rpc.candidates]
        await call(save_screenshot, driver, tmp_path / "dashboard-plan.png")

        # An agent stops: the page shows it down and the deployment degraded, live.
        await call(driver.get, url)
        await until(lambda: page_state(driver)["deployments"].get("small"), "page again")
        victim = next(a for a in fleet.agents if a.device_id == chain[1])
        await victim.stop(grace_s=0)
        fleet.agents.remove(victim)
        after = await until(
            lambda: (s := page_state(driver))["deployments"]["small"]["state"] == "degraded"
            and s, "the deployment degraded")
        assert after["devices"][victim.device_id] == "down"
        assert [s["state"] for s in after["deployments"]["small"]["stages"]] == \
            ["ready", "down", "ready"]
        assert "device.down" in after["events"] and "deploy.degraded" in after["events"]
        await call(save_screenshot, driver, tmp_path / "dashboard-degraded.png")


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def test_the_dashboard_is_read_only_and_answers_bad_queries_clearly(dashboard_fleet,
                                                                           tmp_path):
    url = dashboard_fleet.controller.dashboard.url
    status, headers, body = await call(_get, url)
    assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = await call(_get, url + "api/plan?model=nope")
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]
    await deploy_small(dashboard_fleet, tmp_path)
    status, _, body = await call(_get, url + "api/plan?model=small&objective=fastest")
    assert status == 400 and "objective 'fastest'" in json.loads(body)["error"]
    status, _, body = await call(_get, url + "static/..%2f..%2fview.py")
    assert status == 404
    request = urllib.request.Request(url + "api/state", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as err:
        await call(urllib.request.urlopen, request, timeout=10)
    assert err.value.code == 405


def test_a_non_loopback_dashboard_needs_the_explicit_flag():
    with pytest.raises(InsecureListen) as err:
        check_listen("0.0.0.0:50080", allow_remote=False)
    assert "--http-insecure" in str(err.value)
    check_listen("0.0.0.0:50080", allow_remote=True)
    check_listen("127.0.0.1:0", allow_remote=False)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "layerfleet-controller"), "serve", "--listen",
                           "127.0.0.1:0", "--no-mdns", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_daemon_refuses_a_remote_or_taken_http_address_in_one_line(tmp_path):
    refused = _serve("--state-dir", str(tmp_path / "a"), "--http", "0.0.0.0:0")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "--http-insecure" in refused.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _serve("--state-dir", str(tmp_path / "b"), "--http", f"127.0.0.1:{port}")
    assert busy.returncode == 1
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in busy.stderr.splitlines()[-1]
