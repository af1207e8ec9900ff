"""The dashboard's files as HTTP: /ui/ and every file it loads are this app's, served with a
policy that allows this server alone; / leads to /ui/. (In a browser: tests/operations/
test_ui.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import lrpilot

UI_DIR = Path(lrpilot.__file__).parent / "ui"


@pytest.fixture
def client(module_api: TestClient) -> TestClient:
    return module_api


def loaded(client: TestClient) -> set[str]:
    """Every file the page loads: index.html's src and href, and each module's imports."""
    html = client.get("/ui/").text
    found = set(re.findall(r"""(?:src|href)=["'](assets/[^"']+)""", html))
    modules = [u for u in found if u.endswith(".js") and "vendor" not in u]
    while modules:
        text = client.get(f"/ui/{modules.pop()}").text
        for name in re.findall(r"""from\s+["']\./([^"']+)["']""", text):
            if f"assets/{name}" not in found:
                found.add(f"assets/{name}")
                modules.append(f"assets/{name}")
    return found


def test_the_page_and_its_files_are_served_under_a_strict_policy(client: TestClient) -> None:
    r = client.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "'unsafe-inline'" not in policy
    files = loaded(client)
    assert {"assets/app.js", "assets/vendor/uPlot.iife.min.js", "assets/chart.js"} <= files
    for name in files:
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-security-policy"] == policy, name
    assert (
        client.get("/ui/assets/app.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )


def test_nothing_names_another_host(client: TestClient) -> None:
    """Offline means no URL of elsewhere in our files (uPlot's header comment names its home)."""
    for path in UI_DIR.iterdir():
        if path.suffix in {".html", ".js", ".css"}:
            assert not re.search(r"https?://", path.read_text()), path


def test_service_data_is_never_inserted_as_html() -> None:
    """Labels, reasons and run ids are text: no innerHTML, outerHTML or insertAdjacentHTML."""
    for path in UI_DIR.glob("*.js"):
        assert not re.search(
            r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", path.read_text()
        ), path


def test_root_and_ui_without_slash_lead_to_the_page(client: TestClient) -> None:
    for path in ("/", "/ui"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/ui/", path


def test_no_path_escapes_the_files(client: TestClient) -> None:
    for escape in ("/ui/assets/../../api/ui.py", "/ui/assets/%2e%2e/__init__.py"):
        assert client.get(escape).status_code == 404, escape
    assert client.get("/ui/assets/missing.js").status_code == 404


def test_the_pages_are_no_api_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith("/ui/assets") or p == "/ui/" for p in paths)
