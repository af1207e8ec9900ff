"""Debian's chromium under selenium, offline: every host but 127.0.0.1 unresolvable (Chromium's
host resolver rules), so a page that fetched anything from elsewhere would fail visibly.

One place for the browser the tests (tests/operations/conftest.py's ``browser`` fixture) and
bench/bench_ui.py drive. CI installs chromium and chromium-driver (.ci/run).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def available() -> bool:
    return CHROMIUM is not None and CHROMEDRIVER is not None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[WebDriver]:
    """A headless chromium, its console log kept (``driver.get_log('browser')``)."""
    assert CHROMIUM is not None and CHROMEDRIVER is not None, "chromium is not installed"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # root (CI) gets no sandbox; a container's small /dev/shm must not crash the renderer
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        OFFLINE,
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver named, so that selenium never looks for (downloads) one of its own
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The console's errors since the last read (reading empties the log)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
