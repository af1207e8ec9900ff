"""Connections an attacker holds open: trickled headers and bodies are timed out, idle ones too,
the open connections are capped below the file descriptor limit (a 503 beyond it, never a
storm of tracebacks), and the service answers /healthz and observations throughout.

Each runs the real ``lrpilot serve`` on 127.0.0.1 (``tests.harness.LiveServer``) with short
timeouts; the attack is ``tests.harness.ConnectionFlood``. The full-size figures (1,000
trickling and 10,000 idle) are bench/bench_connections.py's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from lrpilot.server import RateLimitedReports, connection_cap
from tests.conftest import BACKENDS, empty_database
from tests.harness import ConnectionFlood, LiveServer
from tests.helpers import run_spec

HEADER_TIMEOUT_S = 2.0
SHORT = {
    "LRPILOT_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "LRPILOT_BODY_TIMEOUT_S": "1",
    "LRPILOT_KEEP_ALIVE_TIMEOUT_S": "1",
}
HANG_S = 60.0  # a bound only a hang reaches


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {HANG_S} s"
        time.sleep(0.1)


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(empty_database(request.param, tmp_path), env=SHORT) as live:
        yield live


def fresh_get(url: str, path: str) -> httpx.Response:
    """A request on a new connection, as a new client (a load balancer's probe) makes it."""
    with httpx.Client(base_url=url, timeout=HANG_S) as client:
        return client.get(path)


def test_trickling_and_idle_connections_are_closed_while_the_service_answers(
    server: LiveServer,
) -> None:
    with httpx.Client(base_url=server.url, timeout=HANG_S) as http:
        assert http.put("/v1/runs/flooded", json=run_spec()).status_code == 201
        with ConnectionFlood(server.port, idle=2000, trickling=200, every_s=0.25) as flood:
            assert flood.failed == 0 and flood.refused == 0, vars(flood)
            step, deadline = 0, time.monotonic() + 2 * HANG_S
            while flood.open:  # throughout the attack, new clients and old ones get answers
                step += 1
                assert fresh_get(server.url, "/healthz").status_code == 200
                posted = http.post(
                    "/v1/runs/flooded/observations", json={"step": step, "value": 1.0 / step}
                )
                assert posted.status_code == 200, posted.text
                time.sleep(0.2)
                assert time.monotonic() < deadline, f"{flood.open} connections still open"
            # every trickling one was told why (a 408); the silent ones were just closed
            assert flood.closed == {"idle": 2000, "trickling": 200}, flood.closed
            assert flood.timed_out == 200
    assert step >= 2  # the probes ran while the connections were open
    assert "Traceback" not in server.log.read_text()


def test_a_trickled_body_is_cut_off_and_an_idle_keep_alive_connection_closed(
    server: LiveServer,
) -> None:
    with httpx.Client(base_url=server.url, timeout=HANG_S) as http:
        assert http.put("/v1/runs/slow", json=run_spec()).status_code == 201
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_S) as sock:
        sock.sendall(
            b"POST /v1/runs/slow/observations HTTP/1.1\r\nhost: t\r\n"
            b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{"
        )
        closed, deadline = False, time.monotonic() + HANG_S
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b" ")  # a byte every 0.2 s: far less than 64 KiB a second
                time.sleep(0.2)
                closed = sock.recv(4096, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:  # nothing to read: still open
                pass
            except OSError:  # reset: closed
                closed = True
        assert closed, "a body trickled a byte at a time was never cut off"
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # b"" once closed: after the keep-alive timeout
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b'\r\n\r\n{"status":"ok",' in answer
    with httpx.Client(base_url=server.url, timeout=HANG_S) as http:
        assert http.get("/v1/runs/slow").json()["last_step"] is None  # nothing was decided
    assert "Traceback" not in server.log.read_text()


def test_the_connection_cap_stays_below_the_file_limit_and_refuses_with_503(
    tmp_path: Path,
) -> None:
    # 512 descriptors: the cap is 256, and a thousand connections would have run it out
    url = f"sqlite:///{tmp_path / 'capped.db'}"
    with LiveServer(url, env=SHORT, nofile=512) as server:
        with ConnectionFlood(server.port, idle=1000) as flood:
            assert flood.failed == 0
            # some refused at once, some accepted and closed by the header timeout (how many
            # of each depends on the pace: the silent ones close after 2 s; and some wait in
            # the kernel's full accept queue, up to a minute, which the client cannot tell from
            # open: not the server's descriptors)
            wait_for(lambda: flood.refused > 0 and flood.closed["idle"] > 0, "refused, closed")
            assert flood.refused < 1000, vars(flood)
        wait_for(lambda: fresh_get(server.url, "/healthz").status_code == 200, "healthy")
        refusal = None
        with ConnectionFlood(server.port, idle=300) as full:  # fills the cap again...
            wait_for(lambda: full.refused > 0 or full.closed["idle"] > 0, "full")
            refusal = fresh_get(server.url, "/healthz")  # ... so a new client is refused
        assert refusal.status_code == 503 and refusal.headers["retry-after"] == "1"
        assert "LRPILOT_MAX_CONNECTIONS" in refusal.text
        assert fresh_get(server.url, "/readyz").status_code == 200
        log = server.log.read_text()
    assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]
    assert len(log) < 10_000, log[-3000:]


def test_the_cap_is_the_setting_or_fewer_to_fit_the_descriptors() -> None:
    # what the process holds besides (256 at most) and two accept bursts (the listen backlog)
    assert connection_cap(16384, 1 << 20) == 16384
    assert connection_cap(16384, 20000) == 20000 - 256 - 2 * 2048
    assert connection_cap(16384, 1024) == 1024 - 256 - 2 * 128
    assert connection_cap(16384, 512) == 512 - 128 - 2 * 64
    assert connection_cap(10, 20000) == 10


def test_asyncio_error_reports_are_one_a_second_with_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports = RateLimitedReports(every_s=3600.0)
    loop = asyncio.new_event_loop()
    try:
        error = OSError(24, "Too many open files")
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(10_000):
                reports(loop, {"message": "socket.accept() out of system resource",
                               "exception": error})  # fmt: skip
            reports(loop, {"message": "another kind"})
        assert [r.getMessage() for r in caplog.records] == [
            "socket.accept() out of system resource",
            "another kind",
        ]
        reports.every_s = 0.0  # the next one of the first kind says how many were left out
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            reports(loop, {"message": "socket.accept() out of system resource",
                           "exception": error})  # fmt: skip
        assert "(9999 more like it left out)" in caplog.records[-1].getMessage()
    finally:
        loop.close()
