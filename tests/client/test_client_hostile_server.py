"""The client behind a misbehaving proxy: what sits between a training job and lrpilot.

The service always answers its own errors as JSON `{"detail": ...}`. A captive portal, a
misrouted ingress, a rate-limiting gateway or a proxy that cuts a body short answers something
else: an HTML page with a 200, a 404 or a 413, a 200 whose JSON is cut off or is not a
decision, a 429 or a 408 asking to be sent again. None of these is the service refusing the
observation, so in "buffer" mode none may reach the training loop or lose the observation: it
stays buffered and goes out, once, when the proxy passes requests through again.

Everything here is real: the service under uvicorn, and in front of it a small HTTP proxy on
127.0.0.1 (sockets, no mocks) that forwards each request or answers the hostile bytes it is
told to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from lrpilot_client import (
    AsyncClient,
    Client,
    ConflictError,
    ResponseError,
    ServiceUnavailableError,
)
from lrpilot_client.integrations.torch import LrpilotScheduler
from tests.harness import LiveServer

PARAMS = {"patience": 0}  # every evaluation that does not improve reduces the lr
BASE_LRS = [0.1]


def answer(status: int, body: bytes, content_type: str = "text/html", extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} Whatever\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class Proxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream`: forwards every request while
    `hostile` is None, else answers those bytes (and closes the connection)."""

    def __init__(self, upstream: str) -> None:
        self.hostile: bytes | None = None
        self.answered = 0  # hostile answers given
        self._upstream = httpx.Client(base_url=upstream, timeout=30.0)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()
        self._upstream.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _request(conn: socket.socket) -> tuple[str, str, bytes] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        return method, target, body

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while (request := self._request(conn)) is not None:
                hostile = self.hostile
                if hostile is not None:
                    self.answered += 1
                    conn.sendall(hostile)
                    return
                method, target, body = request
                up = self._upstream.request(
                    method, target, content=body, headers={"content-type": "application/json"}
                )
                conn.sendall(answer(up.status_code, up.content, "application/json"))


@pytest.fixture
def proxy(module_server: LiveServer) -> Iterator[Proxy]:
    front = Proxy(module_server.url)
    yield front
    front.close()


def quick(url: str, **options: Any) -> Client:
    settings: dict[str, Any] = {"timeout": 5.0, "retries": 2, "backoff": 0.05, "max_backoff": 0.2}
    return Client(url, **{**settings, "rng": random.Random(0), **options})


def logged(url: str, run_id: str) -> list[tuple[int, float]]:
    items = httpx.get(f"{url}/v1/runs/{run_id}/decisions", params={"limit": 1000}).json()
    return [(d["step"], d["value"]) for d in items["items"]]


HOSTILE = {
    "captive portal 200 html": answer(200, b"<html><body>Sign in to the network</body></html>"),
    "200 json cut short": answer(200, b'{"run_id": "x", "seq', "application/json"),
    "200 json that is no decision": answer(200, b'{"status": "ok"}', "application/json"),
    "ingress 404 html": answer(404, b"<html><center>404 Not Found</center>nginx</html>"),
    "proxy 413 html": answer(413, b"<html>413 Request Entity Too Large</html>"),
    "gateway 429": answer(429, b"slow down", "text/plain", "retry-after: 0\r\n"),
    "proxy 408": answer(408, b"request timeout", "text/plain"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_proxys_answer_is_an_outage_not_a_refusal(
    module_server: LiveServer, proxy: Proxy, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = HOSTILE[name]
    run_id = "hostile-" + name.replace(" ", "-")
    with quick(proxy.url) as lrpilot:
        lrpilot.create_run(run_id, params=PARAMS, base_lrs=BASE_LRS)
        assert lrpilot.observe(run_id, 0, 1.0).lrs == (0.1,)
        proxy.hostile = hostile
        with caplog.at_level(logging.WARNING, logger="lrpilot_client"):
            held = lrpilot.observe(run_id, 1, 2.0)  # would reduce: not decided yet
        assert proxy.answered >= 1
        assert held.provisional and held.action == "hold" and held.lrs == (0.1,)
        assert [o.step for o in lrpilot.pending] == [1]
        assert lrpilot.offline
        status = hostile.split(b" ", 2)[1].decode()
        warned = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warned) == 1 and f"last failure: {status} " in warned[0], warned
        # a read while the proxy misbehaves: the last known rates
        assert lrpilot.lrs_in_force(run_id).lrs == (0.1,)
        proxy.hostile = None
        assert lrpilot.flush(10) == 0
        after = lrpilot.observe(run_id, 2, 3.0)
        assert not after.provisional and after.seq == 3
    assert logged(module_server.url, run_id) == [(0, 1.0), (1, 2.0), (2, 3.0)]


def test_the_services_own_refusal_through_the_proxy_is_still_raised(
    module_server: LiveServer, proxy: Proxy
) -> None:
    with quick(proxy.url) as lrpilot:
        lrpilot.create_run("own-refusal", params=PARAMS, base_lrs=BASE_LRS)
        lrpilot.observe("own-refusal", 0, 1.0)
        with pytest.raises(ConflictError):
            lrpilot.observe("own-refusal", 0, 2.0)
        assert lrpilot.pending == () and not lrpilot.offline


def test_raise_mode_retries_a_429_and_raises_unavailable(proxy: Proxy) -> None:
    with quick(proxy.url, on_unavailable="raise") as lrpilot:
        lrpilot.create_run("raise-429", params=PARAMS, base_lrs=BASE_LRS)
        proxy.hostile = answer(429, b"slow down", "text/plain", "retry-after: 0\r\n")
        with pytest.raises(ServiceUnavailableError, match="429 slow down") as info:
            lrpilot.observe("raise-429", 0, 1.0)
        assert info.value.attempts == 3 and proxy.answered == 3
        # a body it cannot read is still raised as it was in "raise" mode: no guessing
        proxy.hostile = HOSTILE["captive portal 200 html"]
        with pytest.raises(ResponseError, match="not JSON"):
            lrpilot.observe("raise-429", 0, 1.0)


def test_async_client_keeps_training_behind_a_captive_portal(
    module_server: LiveServer, proxy: Proxy
) -> None:
    async def job() -> None:
        options: dict[str, Any] = {"retries": 2, "backoff": 0.05, "max_backoff": 0.2}
        async with AsyncClient(proxy.url, **options) as lrpilot:
            await lrpilot.create_run("async-portal", params=PARAMS, base_lrs=BASE_LRS)
            await lrpilot.observe("async-portal", 0, 1.0)
            proxy.hostile = HOSTILE["captive portal 200 html"]
            held = await lrpilot.observe("async-portal", 1, 2.0)
            assert held.provisional and held.lrs == (0.1,)
            assert [o.step for o in lrpilot.pending] == [1]
            proxy.hostile = None
            assert await lrpilot.flush(10) == 0

    asyncio.run(job())
    assert logged(module_server.url, "async-portal") == [(0, 1.0), (1, 2.0)]


def test_torch_scheduler_trains_through_a_captive_portal(
    module_server: LiveServer, proxy: Proxy, tmp_path: Path
) -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    lrpilot = quick(proxy.url, outbox_path=tmp_path / "outbox.jsonl")
    scheduler = LrpilotScheduler(optimizer, lrpilot, "torch-portal", params=PARAMS, ahead=4)
    scheduler.observe(1.0)
    proxy.hostile = HOSTILE["200 json cut short"]
    for step in range(1, 7):
        optimizer.step()
        scheduler.step()
        if step % 3 == 0:
            assert scheduler.observe(float(step)).provisional  # 3.0 and 6.0: no improvement
        assert optimizer.param_groups[0]["lr"] == 0.1  # the last decided rate, kept
    assert [o.step for o in lrpilot.pending] == [3, 6]
    proxy.hostile = None
    assert lrpilot.flush(10) == 0  # 3 and 6, in order: two reductions
    optimizer.step()
    scheduler.step()
    decision = scheduler.observe(0.5)
    assert not decision.provisional and decision.action == "hold"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 * 0.1)
    assert logged(module_server.url, "torch-portal") == [(0, 1.0), (3, 3.0), (6, 6.0), (7, 0.5)]
    lrpilot.close()
    assert not (tmp_path / "outbox.jsonl").exists()


def test_a_paused_service_holds_the_training_loop_a_small_share_of_its_time(
    live_server: LiveServer,
) -> None:
    """SIGSTOP: the kernel still accepts connections, nobody answers, so every try lasts the
    whole read timeout. Tries every `max_backoff` (0.2 s here) held the loop about three
    quarters of the time; after a try that waited 0.5 s in vain, the next comes 4.5 s later.
    Counted as the calls that waited out the read timeout (not as a share of wall-clock time,
    which a busy machine stretches): two in 6 s, where tries every max_backoff made eight."""
    lrpilot = quick(live_server.url, timeout=0.5, retries=0)
    lrpilot.create_run("paused", params=PARAMS, base_lrs=BASE_LRS)
    lrpilot.observe("paused", 0, 1.0)
    group = os.getpgid(live_server.pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        started = time.monotonic()
        held: list[float] = []  # each call that waited out the read timeout: a try
        step = 1
        while time.monotonic() - started < 6.0:
            before = time.monotonic()
            if step % 20 == 0:
                assert lrpilot.observe("paused", step, 2.0 + step).provisional
            else:
                assert lrpilot.lrs("paused", step) == [0.1]
            if (took := time.monotonic() - before) >= 0.45:
                held.append(round(took, 2))
            step += 1
            time.sleep(0.01)
        assert lrpilot.offline and lrpilot.pending
        assert 1 <= len(held) <= 3, f"calls that waited on the paused service: {held}"
    finally:
        os.killpg(group, signal.SIGCONT)
    posted = [(o.step, o.value) for o in lrpilot.pending]
    assert lrpilot.flush(15) == 0
    lrpilot.close()
    # the tries the paused service took in before it stopped answering count once, like the rest
    assert logged(live_server.url, "paused") == [(0, 1.0), *posted]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_fit_after_fit_goes_on_while_the_service_is_away(live_server: LiveServer) -> None:
    """A loop of `model.fit(epochs=1)`: each fit begins with the run (GET) and a rewind to where
    the callback already is. While the service was away that raised into the job."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import numpy as np

    from lrpilot_client.integrations.keras import LrpilotCallback

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    lrpilot = quick(live_server.url, timeout=1.0, retries=1)
    callback = LrpilotCallback(lrpilot, "keras-fits", params={"patience": 5})

    def fit() -> None:
        model.fit(x, y, validation_data=(x, y), epochs=1, batch_size=16, verbose=0,
                  callbacks=[callback])  # fmt: skip

    fit()
    assert callback.last_decision is not None and not callback.last_decision.provisional
    live_server.kill()
    for _ in range(2):
        fit()  # raised ServiceUnavailableError from on_train_begin
        assert callback.last_decision.provisional
    assert [o.step for o in lrpilot.pending] == [4, 6]
    live_server.start()
    fit()
    assert not callback.last_decision.provisional
    lrpilot.close()
    assert [step for step, _ in logged(live_server.url, "keras-fits")] == [2, 4, 6, 8]
