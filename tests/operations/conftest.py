"""Fixtures of the operations tests that drive a real browser (tests/chromium.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.chromium import available, chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One offline chromium for a module (starting one costs a second or two)."""
    if not available():
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (.ci/run)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    with chromium() as driver:
        yield driver
