"""mDNS on loopback with real zeroconf: the record is seen by a browser, then withdrawn."""

from __future__ import annotations

import asyncio

from layerfleet.agent.discovery import Advertiser, Browser, build_txt


async def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_an_advertised_agent_is_found_by_a_browser_and_withdrawn_on_stop():
    txt = build_txt(device_id="lf-test123", arch="aarch64", cores=4, memory_bytes=4 << 30,
                    runtime="ai-edge-litert 2.3.0", version="0.1.0", port=50123)
    found, removed = [], []
    browser = Browser(on_added=found.append, on_removed=removed.append,
                      interfaces=["127.0.0.1"])
    advertiser = Advertiser(txt, 50123, addresses=["127.0.0.1"], name="layerfleet-test123")
    await browser.start()
    await advertiser.start()
    try:
        assert await _wait_for(lambda: any(f.device_id == "lf-test123" for f in found))
        record = next(f for f in found if f.device_id == "lf-test123")
        assert record.port == 50123 and "127.0.0.1" in record.addresses
        assert record.txt["arch"] == "aarch64" and record.txt["txtvers"] == "1"
        assert len(";".join(f"{k}={v}" for k, v in record.txt.items())) < 200  # small
    finally:
        await advertiser.stop()
    assert await _wait_for(lambda: any("layerfleet-test123" in name for name in removed))
    await browser.stop()
