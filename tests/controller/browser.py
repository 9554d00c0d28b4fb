"""A real headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the
dashboard tests. Skips with one line where it cannot run; nothing is downloaded (the driver
and browser paths are given, so Selenium Manager never looks for its own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The flags that let Chromium run as root on a machine with no network but loopback.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1500,1250", "--hide-scrollbars"]
ARTIFACTS_ENV = "LAYERFLEET_ARTIFACTS"


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Any]:
    """A WebDriver for a fresh headless Chromium with its own profile directory. Started and
    stopped in a thread: the daemons under test share this event loop and must keep
    heartbeating while the browser starts."""
    driver = await asyncio.to_thread(_start, profile)
    try:
        yield driver
    finally:
        await asyncio.to_thread(driver.quit)


def _start(profile: Path) -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.skip(f"no browser test: {', '.join(missing)} missing "
                    f"(apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("no browser test: selenium is not installed (pip install -e '.[dev]')")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        first = (exc.msg or str(exc)).strip().splitlines()[0]
        pytest.skip(f"no browser test: chromium cannot start here: {first}")
    driver.set_page_load_timeout(20)
    return driver


def save_screenshot(driver: Any, path: Path) -> Path:
    """Write a PNG of the page to `path`, and a copy under $LAYERFLEET_ARTIFACTS if set."""
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    artifacts = os.environ.get(ARTIFACTS_ENV)
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path
