"""/docs and /redoc in a real browser with no internet: Debian's chromium, every host but
127.0.0.1 unresolvable, against the real service. Each page must list every operation of the
OpenAPI document, and nothing it loads may come from elsewhere (or else be refused by the
page's own Content-Security-Policy before any request leaves).

The browser is tests/operations/conftest.py's (CI fails without chromium; elsewhere the tests
are skipped without it).
"""

from __future__ import annotations

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.harness import LiveServer

RENDER_TIMEOUT_S = 30  # a bound on a hang, not a claim about speed
# Each page's script listing the operations it shows, as [method, path] pairs: Swagger UI's
# operation blocks; ReDoc's endpoint boxes (an HTTP verb, then the path)
LISTED = {
    "/docs": "return Array.from(document.querySelectorAll('.opblock-summary')).map(e => ["
    "e.querySelector('.opblock-summary-method').textContent,"
    "e.querySelector('.opblock-summary-path').dataset.path])",
    "/redoc": "return Array.from(document.querySelectorAll('.http-verb')).map(e => ["
    "e.textContent, e.nextElementSibling ? e.nextElementSibling.textContent : ''])"
    ".filter(([m, p]) => p.startsWith('/'))",
}


@pytest.fixture(scope="module")
def operations(module_server: LiveServer) -> set[tuple[str, str]]:
    """The OpenAPI document's operations: (method, path)."""
    paths = httpx.get(f"{module_server.url}/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def test_the_browser_reaches_nothing_but_loopback(
    browser: WebDriver, module_server: LiveServer
) -> None:
    """The premise: from this browser a CDN is unreachable (else the other tests prove
    nothing)."""
    browser.get(f"{module_server.url}/healthz")
    outcome = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css', {mode: 'no-cors'})"
        ".then(() => done('reached'), (e) => done('failed: ' + e));"
    )
    assert outcome.startswith("failed"), outcome


@pytest.mark.parametrize("page", sorted(LISTED))
def test_the_page_lists_every_operation_offline(
    browser: WebDriver, module_server: LiveServer, operations: set[tuple[str, str]], page: str
) -> None:
    _open(browser, f"{module_server.url}{page}")
    listed = {
        (method.upper(), path) for method, path in _wait_for(browser, LISTED[page], len(operations))
    }
    assert ("PUT", "/v1/runs/{run_id}") in listed
    assert listed == operations
    _assert_loaded_from(browser, module_server.url)


def test_root_sends_a_person_to_the_dashboard(
    browser: WebDriver, module_server: LiveServer
) -> None:
    browser.get(f"{module_server.url}/")
    assert browser.current_url.startswith(f"{module_server.url}/ui/")


def _open(browser: WebDriver, url: str) -> None:
    browser.get_log("browser")  # what earlier pages logged is read and gone
    browser.get(url)


def _wait_for(browser: WebDriver, script: str, count: int) -> list[list[str]]:
    """What ``script`` lists once it lists ``count`` items (the page renders after load)."""
    seen: list[list[str]] = []

    def rendered(driver: WebDriver) -> bool:
        nonlocal seen
        seen = driver.execute_script(script)
        return len(seen) >= count

    try:
        WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.1).until(rendered)
    except TimeoutException:
        pytest.fail(
            f"listed {len(seen)} of {count}; the browser's log: {browser.get_log('browser')}"
        )
    return seen


def _assert_loaded_from(browser: WebDriver, origin: str) -> None:
    """Every resource the page asked for is the server's, except those its policy blocked
    before a request (ReDoc's sidebar logo); and the page logged no other error."""
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    log = browser.get_log("browser")
    blocked = [
        e["message"] for e in log if "violates the following Content Security" in e["message"]
    ]
    elsewhere = [url for url in resources if not url.startswith(f"{origin}/")]
    assert all(any(url in message for message in blocked) for url in elsewhere), (elsewhere, log)
    errors = [e for e in log if e["level"] == "SEVERE" and e["message"] not in blocked]
    assert not errors
