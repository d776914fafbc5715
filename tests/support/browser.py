"""Debian's headless Chromium through Selenium, for the tests of the web page.

Chromium and chromedriver are given by path, so Selenium Manager never
downloads anything. Tests that use it skip with :data:`SKIP` when Chromium
is not installed.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Bound on every wait for the page (not a speed assertion).
WAIT = 20

SKIP = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (apt-get install chromium chromium-driver)",
)


@contextlib.contextmanager
def chrome(size: str = "1280,760") -> Iterator[Any]:
    """Start headless Chromium with a throwaway profile; yield its driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={size}",
    ):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def until(driver: Any, check: Callable[[], Any], what: str) -> Any:
    """Wait until ``check()`` is truthy (re-trying over re-rendered elements)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def probe(_: Any) -> Any:
        try:
            return check()
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, WAIT).until(probe, message=f"the page never showed {what}")
