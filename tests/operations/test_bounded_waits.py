"""Bounded waits: a database locked by someone else (a backup, an sqlite3 shell) costs each
request a bounded wait and a 503 with Retry-After, never a hang; the probes never wait behind
writes; and once the lock is gone, everything works and nothing was lost or counted twice."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.harness import DatabaseLock, LiveServer
from tests.helpers import run_spec, strict_json

DB_TIMEOUT_S = 1.0
# For the tests of what must not wait behind a locked database (the probes, the event loop): a
# server that waits this long, so that a generous bound (half of it) tells "not held up" from
# "held up until the lock's wait ran out", however loaded the machine.
PATIENT_TIMEOUT_S = 10.0


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    path = tmp_path / "locked.db"
    with LiveServer(f"sqlite:///{path}", env={"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)}) as server:
        yield server, path


def test_a_write_lock_held_outside_the_server_gives_prompt_503s_and_no_hang(
    locked_server: tuple[LiveServer, Path],
) -> None:
    server, path = locked_server
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        assert http.put("/v1/runs/held", json=run_spec(params={"patience": 1})).status_code == 201
        first = http.post("/v1/runs/held/observations", json={"step": 1, "value": 0.5})
        assert first.status_code == 200

        with DatabaseLock(path):

            def post(step: int) -> tuple[int, float, httpx.Response]:
                started = time.monotonic()
                r = http.post("/v1/runs/held/observations", json={"step": step, "value": 0.4})
                return step, time.monotonic() - started, r

            with ThreadPoolExecutor(8) as pool:
                waiting = [pool.submit(post, 2) for _ in range(8)]
                # the probes answer while eight writers wait for the lock
                started = time.monotonic()
                assert http.get("/healthz").status_code == 200
                health_s = time.monotonic() - started
                assert http.get("/readyz").status_code == 200  # WAL: reads go on
                assert http.get("/v1/runs/held").status_code == 200
                put = http.put("/v1/runs/other", json=run_spec())
                answers = [f.result() for f in waiting]

            # (a generous bound: test_the_first_observation_... checks the loop is never held)
            assert health_s < DB_TIMEOUT_S * 5, f"/healthz waited {health_s:.2f} s behind writes"
            assert put.status_code == 503, put.text
            for _, waited, r in answers:
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"]
                assert "retry later" in r.json()["detail"]
                # bounded: the configured wait, not the 40 s of old, nor forever
                assert waited < DB_TIMEOUT_S * 5, f"a request waited {waited:.2f} s"

        # the lock is gone: the step is decided once, whoever asks
        again = [http.post("/v1/runs/held/observations", json={"step": 2, "value": 0.4})]
        again.append(http.post("/v1/runs/held/observations", json={"step": 2, "value": 0.4}))
        assert [r.status_code for r in again] == [200, 200]
        assert again[0].content == again[1].content
        log = strict_json(http.get("/v1/runs/held/decisions").content)["items"]
        assert [d["step"] for d in log] == [1, 2]
        assert log[0] == strict_json(first.content)
        assert http.put("/v1/runs/other", json=run_spec()).status_code == 201


class Proxy:
    """A TCP forwarder to PostgreSQL that the test can cut: the database "goes away"."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self.open = False
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.mark.postgres
def test_a_postgres_that_goes_away_gives_prompt_503s_that_do_not_name_it(
    postgres_url: str,
) -> None:
    real = sa.make_url(postgres_url)
    assert real.host and real.port and real.username
    proxy = Proxy(real.host, real.port)
    url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = LiveServer(url, env={"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            assert http.put("/v1/runs/r", json=run_spec()).status_code == 201
            assert http.post("/v1/runs/r/observations", json={"step": 1, "value": 0.5}).is_success
            proxy.cut()
            for method, path, body in (
                ("POST", "/v1/runs/r/observations", {"step": 2, "value": 0.5}),
                ("GET", "/v1/runs/r", None),
                ("PUT", "/v1/runs/s", run_spec()),
                ("GET", "/readyz", None),
            ):
                started = time.monotonic()
                r = http.request(method, path, json=body)
                waited = time.monotonic() - started
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert waited < DB_TIMEOUT_S * 10, f"{path} waited {waited:.1f} s"
                for secret in (str(proxy.port), real.username, "127.0.0.1", "psycopg2"):
                    assert secret not in r.text, (path, secret, r.text)
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()
        proxy.cut()


def test_the_first_observation_of_a_server_waits_for_a_lock_without_stalling_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "patient.db"
    env = {"LRPILOT_DB_TIMEOUT_S": str(PATIENT_TIMEOUT_S)}
    with (
        LiveServer(f"sqlite:///{path}", env=env) as server,
        httpx.Client(base_url=server.url, timeout=PATIENT_TIMEOUT_S * 3) as http,
    ):
        assert http.put("/v1/runs/first", json=run_spec()).status_code == 201
        lock = DatabaseLock(path)
        try:
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(
                    http.post, "/v1/runs/first/observations", json={"step": 1, "value": 0.5}
                )
                time.sleep(0.5)  # the post is waiting for the lock now
                started = time.monotonic()
                assert http.get("/healthz").status_code == 200
                health_s = time.monotonic() - started
                # a loop held by the waiting post would answer only once its wait ran out
                assert not waiting.done(), waiting.result().text
                lock.release()
                first = waiting.result()  # it waited for the lock, then decided
        finally:
            lock.release()
        assert health_s < PATIENT_TIMEOUT_S / 2, f"/healthz took {health_s:.2f} s"
        assert first.status_code == 200, first.text
        r = http.post("/v1/runs/first/observations", json={"step": 1, "value": 0.5})
        assert r.status_code == 200 and r.content == first.content, r.text
