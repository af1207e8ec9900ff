"""/docs and /redoc as HTML: every file they name is this app's and is served; nothing from
elsewhere; behind a proxy's path prefix, links carry it. (In a browser, offline:
tests/operations/test_docs_offline.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import app_client

PAGES = ("/docs", "/redoc")


@pytest.fixture
def client(module_api: TestClient) -> TestClient:
    return module_api


def linked(html: str) -> set[str]:
    """What a page loads: its src and href attributes, and the OpenAPI document's URL."""
    return set(re.findall(r"""(?:src|href)=["']([^"']+)""", html)) | set(
        re.findall(r"""(?:url:|spec-url=)\s*["']([^"']+)""", html)
    )


@pytest.mark.parametrize("page", PAGES)
def test_a_page_loads_only_what_this_app_serves(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    urls = linked(r.text)
    assert "/openapi.json" in urls and any(u.startswith("/docs/assets/") for u in urls)
    assert not re.search(r"https?://", r.text), "a page names another host"
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_the_assets_are_those_of_the_package_and_nothing_else(client: TestClient) -> None:
    r = client.get("/docs/assets/swagger-ui-bundle.js")
    assert r.status_code == 200 and "SwaggerUIBundle" in r.text
    for escape in ("/docs/assets/../../../etc/passwd", "/docs/assets/%2e%2e/core.py"):
        assert client.get(escape).status_code == 404, escape
    assert client.get("/docs/assets/missing.js").status_code == 404


def test_root_redirects_to_the_ui(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"


@pytest.mark.parametrize("page", PAGES)
def test_behind_a_path_prefix_the_links_carry_it(tmp_path: Path, page: str) -> None:
    with app_client(f"sqlite:///{tmp_path / 'p.db'}") as plain:
        prefixed = TestClient(plain.app, root_path="/lrpilot")
        urls = linked(prefixed.get(page).text)
        assert urls and all(url.startswith("/lrpilot/") for url in urls), urls
        assert prefixed.get("/", follow_redirects=False).headers["location"] == "/lrpilot/ui/"


def test_the_pages_are_no_api_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc"} & set(paths)
