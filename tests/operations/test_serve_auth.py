"""``lrpilot serve`` and authentication: open mode on loopback (said at startup), refusal of a
network bind without tokens unless --insecure-no-auth, tokens required once one exists."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from lrpilot.api.auth import CACHE_S
from lrpilot.cli.serve import is_loopback
from lrpilot.store.db import upgrade
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer
from tests.helpers import bearer, make_token, run_spec
from tests.operations.test_startup import lrpilot, one_line_failure


class OnAllInterfaces(LiveServer):
    """``lrpilot serve --host 0.0.0.0`` (reached on 127.0.0.1), with more options."""

    def __init__(self, database_url: str, *extra: str) -> None:
        super().__init__(database_url)
        self.extra = list(extra)

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--host") + 1] = "0.0.0.0"
        return cmd + self.extra


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.7", "gpu-node-3", "192.168.1.2"]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_network_bind_without_tokens_refuses_to_start(backend: str, tmp_path: Path) -> None:
    url = empty_database(backend, tmp_path)
    done = lrpilot("serve", "--host", "0.0.0.0", "--port", "1", "--database-url", url)
    line = one_line_failure(done)
    assert "holds no API token" in line and "lrpilot token create" in line, line
    assert "--insecure-no-auth" in line


def test_insecure_no_auth_serves_open_on_the_network(tmp_path: Path) -> None:
    with OnAllInterfaces(f"sqlite:///{tmp_path / 'x.db'}", "--insecure-no-auth") as server:
        r = httpx.put(f"{server.url}/v1/runs/r", json=run_spec())
        assert r.status_code == 201, r.text
        assert "WITHOUT authentication" in server.log_tail()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_network_bind_with_a_token_starts_and_requires_it(backend: str, tmp_path: Path) -> None:
    url = empty_database(backend, tmp_path)
    upgrade(url)
    secret = make_token(url, "default", "writer")
    with OnAllInterfaces(url) as server:
        assert httpx.get(f"{server.url}/v1/runs").status_code == 401
        r = httpx.put(f"{server.url}/v1/runs/r", json=run_spec(), headers=bearer(secret))
        assert r.status_code == 201, r.text
        assert "WITHOUT authentication" not in server.log_tail()


def network_address() -> str:
    """An address of this machine that is not loopback (the one its default route leaves by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.123", 9))  # UDP: no packet is sent, a route is chosen
        address = str(probe.getsockname()[0])
    assert not is_loopback(address), "this machine has no network address to test from"
    return address


class FactoryOnAllInterfaces(LiveServer):
    """``uvicorn --factory lrpilot.app:create_app --host 0.0.0.0``: no ``lrpilot serve`` and
    so none of its start-up checks."""

    def __init__(self, database_url: str, **env: str) -> None:
        super().__init__(database_url, target=["--factory", "lrpilot.app:create_app"], env=env)

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--host") + 1] = "0.0.0.0"
        return cmd


def test_open_mode_serves_this_machine_only_however_the_server_was_started(
    tmp_path: Path,
) -> None:
    """Open mode (no token) refuses a request from the network with a 401 that says how to
    create a token, on every route and the observation fast path, even behind a bind that
    ``lrpilot serve`` would have refused; from loopback, it serves as ever. The insecure
    setting serves the network too."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    host = network_address()
    with FactoryOnAllInterfaces(url) as server:
        outside = f"http://{host}:{server.port}"
        assert httpx.put(f"{server.url}/v1/runs/r", json=run_spec()).status_code == 201
        for method, path, body in (
            ("GET", "/v1/runs", None),
            ("GET", "/v1/runs/r", None),
            ("POST", "/v1/runs/r/observations", {"step": 1, "value": 0.5}),  # the fast path
            ("PUT", "/v1/runs/s", run_spec()),
        ):
            r = httpx.request(method, f"{outside}{path}", json=body)
            assert r.status_code == 401, (path, r.text)
            assert "lrpilot token create" in r.json()["detail"], r.text
        assert httpx.get(f"{server.url}/v1/runs/r").json()["last_seq"] == 0  # nothing changed
        assert httpx.get(f"{outside}/healthz").status_code == 200  # probes need no token
    with FactoryOnAllInterfaces(url, LRPILOT_INSECURE_NO_AUTH="1") as server:
        r = httpx.post(
            f"http://{host}:{server.port}/v1/runs/r/observations", json={"step": 1, "value": 0.5}
        )
        assert r.status_code == 200, r.text


def test_open_mode_answers_only_requests_addressed_to_this_machine(
    live_server: LiveServer,
) -> None:
    """DNS rebinding: a page of another site, its name then made to resolve to 127.0.0.1, sends
    requests from this machine addressed to that name, any header included (it is then the
    page's own origin). Open mode refuses them on every route, the observation fast path and
    /metrics, and changes nothing; a request to localhost or an address is served."""
    base = live_server.url
    assert httpx.put(f"{base}/v1/runs/r", json=run_spec()).status_code == 201
    port = live_server.port
    for method, path, body in (
        ("GET", "/v1/runs", None),
        ("GET", "/v1/runs/r", None),
        ("POST", "/v1/runs/r/observations", {"step": 1, "value": 0.5}),  # the fast path
        ("PUT", "/v1/runs/s", run_spec()),
        ("GET", "/metrics", None),
    ):
        for host in (f"attacker.example:{port}", "attacker.example", "localhost.attacker.example"):
            headers = {"Host": host, "Authorization": "Bearer anything", "X-LRPilot-CSRF": "1"}
            r = httpx.request(method, f"{base}{path}", json=body, headers=headers)
            assert r.status_code == 403, (path, host, r.text)
            assert "lrpilot token create" in r.text or "this machine" in r.text, r.text
    assert httpx.get(f"{base}/v1/runs/r").json()["last_seq"] == 0  # nothing changed
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "app.localhost"):
        r = httpx.post(
            f"{base}/v1/runs/r/observations", json={"step": 1, "value": 0.5}, headers={"Host": host}
        )
        assert r.status_code == 200, (host, r.text)
        assert httpx.get(f"{base}/metrics", headers={"Host": host}).status_code == 200


def test_loopback_without_tokens_serves_open_and_says_so(live_server: LiveServer) -> None:
    assert httpx.put(f"{live_server.url}/v1/runs/r", json=run_spec()).status_code == 201
    said = [line for line in live_server.log_tail().splitlines() if "WITHOUT auth" in line]
    assert len(said) == 1, live_server.log_tail()


@pytest.mark.postgres
def test_a_revocation_holds_on_every_replica_within_the_cache_bound(
    postgres_replicas: tuple[LiveServer, LiveServer],
) -> None:
    first, second = postgres_replicas
    assert first.database_url is not None
    admin = make_token(first.database_url, "p", "admin", name="ops")
    job = make_token(first.database_url, "p", "writer", name="job")
    time.sleep(CACHE_S + 0.1)  # both replicas started in open mode: they see the tokens now
    for server in (first, second):
        assert httpx.get(f"{server.url}/v1/runs").status_code == 401
        assert httpx.get(f"{server.url}/v1/runs", headers=bearer(job)).status_code == 200
    r = httpx.post(f"{first.url}/v1/tokens/job/revoke", headers=bearer(admin))
    assert r.status_code == 200, r.text
    time.sleep(CACHE_S + 0.1)
    for server in (first, second):
        r = httpx.get(f"{server.url}/v1/runs", headers=bearer(job))
        assert r.status_code == 401 and r.json()["detail"] == "the token was revoked"
