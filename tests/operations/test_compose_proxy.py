"""docker-compose.yml's reverse proxy (deploy/nginx.conf): `nginx -t` accepts it, its limits and
timeouts follow the service's own settings, and the real nginx in front of the real service
passes what the service takes and refuses, as JSON, what it would refuse.

The config names the service `service:8000`, which only Docker's DNS resolves: the copy under
test points at the local server instead, and listens on 127.0.0.1. Debian's nginx (`nginx-light`,
installed by .ci/run) runs it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lrpilot.api.models import MAX_WAIT_S
from lrpilot.app import create_app
from lrpilot.settings import Settings
from lrpilot.spec import AggregateSpec
from tests.harness import REPO_DIR, LiveServer, free_port
from tests.helpers import run_spec, strict_json

NGINX_CONF = REPO_DIR / "deploy" / "nginx.conf"
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        message = "nginx is not installed (apt-get install nginx-light; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


# ---------------------------------------------------------------------------------------------
# the config, parsed: its blocks and directives

Directive = tuple[str, list[str], list["Directive"]]  # name, arguments, block
TOKEN = re.compile(r"""'(?:\\.|[^'])*'|"(?:\\.|[^"])*"|#[^\n]*|[{};]|[^\s{};'"#]+""")


def parse(text: str) -> list[Directive]:
    """nginx's config syntax (directives ending in `;` or a `{ block }`, quoted strings, `#`
    comments) as a tree."""
    tokens = [t for t in TOKEN.findall(text) if not t.startswith("#")]

    def block(at: int) -> tuple[list[Directive], int]:
        found: list[Directive] = []
        words: list[str] = []
        while at < len(tokens):
            token, at = tokens[at], at + 1
            if token == "}":
                return found, at
            if token == ";":
                found.append((words[0], words[1:], []))
                words = []
            elif token == "{":
                children, at = block(at)
                found.append((words[0], words[1:], children))
                words = []
            else:
                words.append(token)
        return found, at

    return block(0)[0]


def only(block: list[Directive], name: str, args: list[str] | None = None) -> Directive:
    found = [d for d in block if d[0] == name and (args is None or d[1] == args)]
    assert len(found) == 1, f"{name} {args or ''}: {len(found)} of them"
    return found[0]


HTTP = only(parse(NGINX_CONF.read_text()), "http")[2]
SERVER = only(HTTP, "server")[2]
UPSTREAM = only(HTTP, "upstream", ["lrpilot"])[2]


def value(block: list[Directive], name: str) -> str:
    return " ".join(only(block, name)[1])


def location_for(path: str) -> list[Directive]:
    """The location block nginx picks for ``path`` (exact, then regex, then prefix)."""
    locations = [(args, children) for name, args, children in SERVER if name == "location"]
    for args, children in locations:
        if args == ["=", path]:
            return children
    for args, children in locations:
        if args[0] == "~" and re.search(args[1], path):
            return children
    return only(SERVER, "location", ["/"])[2]


def size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", text.lower()).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit]


def seconds(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smh]?)", text.lower()).groups()  # type: ignore[union-attr]
    return int(number) * SECONDS[unit]


# ---------------------------------------------------------------------------------------------
# the limits follow the service's


def test_body_limits_are_the_services(tmp_path: Path) -> None:
    settings = Settings()
    assert size(value(HTTP, "client_max_body_size")) == settings.max_body_bytes
    importing = location_for("/v1/runs/import")
    assert size(value(importing, "client_max_body_size")) == settings.max_import_bytes
    assert value(importing, "proxy_request_buffering") == "off"
    # the routes the config names are the service's
    paths = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")).openapi()["paths"]
    assert "/v1/runs/import" in paths and "/v1/runs/{run_id}/observations" in paths


def test_timeouts_follow_the_services_and_never_cut_a_wait() -> None:
    settings = Settings()
    assert seconds(value(HTTP, "client_header_timeout")) == settings.header_timeout_s
    assert seconds(value(HTTP, "client_body_timeout")) == settings.body_timeout_s
    # the proxy drops an idle upstream connection before the service would
    assert seconds(value(UPSTREAM, "keepalive_timeout")) < settings.keep_alive_timeout_s

    # a long-poll (GET .../lr?wait=) goes by the server's read timeout
    assert location_for("/v1/runs/r1/lr") is only(SERVER, "location", ["/"])[2]
    assert seconds(value(SERVER, "proxy_read_timeout")) > MAX_WAIT_S + settings.db_timeout_s
    observing = location_for("/v1/runs/r1/observations")
    longest_aggregate = next(m.le for m in AggregateSpec.model_fields["timeout_s"].metadata
                             if hasattr(m, "le"))  # fmt: skip
    observe_read = seconds(value(observing, "proxy_read_timeout"))
    assert observe_read > longest_aggregate + settings.db_timeout_s
    # every location but the proxy's own answers passes to the service
    for name, args, children in SERVER:
        if name == "location" and not args[0].startswith("@"):
            assert value(children, "proxy_pass") == "http://lrpilot", args


# ---------------------------------------------------------------------------------------------
# nginx itself


def local_config(tmp_path: Path, upstream_port: int, port: int) -> Path:
    """The config with the service at 127.0.0.1:``upstream_port``, listening on 127.0.0.1:``port``
    and keeping its temporary files in ``tmp_path``."""
    text = NGINX_CONF.read_text()
    text = text.replace("server service:8000;", f"server 127.0.0.1:{upstream_port};")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    temp = "".join(
        f"    {kind}_temp_path {tmp_path / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp, 1)
    if os.geteuid() == 0:  # workers would run as nobody, who may not enter tmp_path
        text = "user root;\n" + text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_command(conf: Path, *args: str) -> list[str]:
    prefix = conf.parent
    return [nginx_binary(), "-c", str(conf), "-p", f"{prefix}/", "-e", "stderr",
            "-g", f"pid {prefix / 'nginx.pid'};", *args]  # fmt: skip


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = local_config(tmp_path, 8000, 8080)
    done = subprocess.run(nginx_command(conf, "-t"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@contextlib.contextmanager
def nginx(conf: Path, port: int) -> Iterator[str]:
    # appended to: nginx opens /dev/stdout (its access log) again, at its own offset
    log = (conf.parent / "nginx.log").open("ab")
    proc = subprocess.Popen(nginx_command(conf, "-g", "daemon off;"), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (conf.parent / "nginx.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "nginx did not listen within 30 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_nginx_in_front_of_the_service(tmp_path: Path) -> None:
    nginx_binary()
    settings = Settings()
    port = free_port()
    with LiveServer(f"sqlite:///{tmp_path / 'live.db'}") as server:
        conf = local_config(tmp_path, server.port, port)
        with nginx(conf, port) as url, httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/healthz", headers={"X-Request-ID": "job-7-step-1"}).is_success
            assert http.get("/healthz").is_success
            assert http.put("/v1/runs/r1", json=run_spec()).status_code in (200, 201)
            r = http.post("/v1/runs/r1/observations", json={"step": 1, "value": 0.5})
            assert r.status_code == 200, r.text
            assert strict_json(r.text)["step"] == 1

            # the proxy refuses what the service would, as the service words its refusals
            over = b" " * (settings.max_body_bytes + 1)
            r = http.post("/v1/runs/r1/observations", content=over)
            assert r.status_code == 413
            assert "LRPILOT_MAX_BODY_BYTES" in strict_json(r.text)["detail"]
            # ... and passes what the service takes: its own answer, not the proxy's 413
            r = http.post("/v1/runs/r1/observations", content=over[:-1])
            assert r.status_code == 422, r.text
            r = http.post("/v1/runs/import", content=b"x" * (2 * settings.max_body_bytes))
            assert r.status_code in (400, 422), r.text
            assert "proxy" not in r.text

            server.stop()  # a service that is down: a 503 to retry, as JSON
            r = http.get("/v1/runs")
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert "retry" in strict_json(r.text)["detail"]
    # the request id: the client's, else one of the proxy's own (what it sends the service)
    access = [line for line in (tmp_path / "nginx.log").read_text().splitlines()
              if "GET /healthz" in line]  # fmt: skip
    assert access[0].endswith(" id=job-7-step-1"), access
    assert re.search(r" id=[0-9a-f]{32}$", access[1]), access
