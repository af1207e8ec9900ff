"""The client as a new user meets it (issue 15): a URL without a scheme is a ValueError at once;
an outage while creating a run is reported as what it is, not as "buffering"; every call has a
total deadline, so a server that trickles bytes cannot hold a training step (a real socket
server on 127.0.0.1 that trickles); a non-finite lr from the service is never applied by the
integrations (real torch, the real service, its /lrs answers altered on the way)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from lrpilot_client import AsyncClient, Client, ResponseError, ServiceUnavailableError
from tests.harness import LiveServer, free_port


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8000", "localhost", "ftp://127.0.0.1:8000", "http://", "http://[bad"]
)
def test_a_malformed_url_is_a_value_error_at_once(url: str) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(ValueError, match=r"base_url .*(http://|host)"):
            make(url)


def test_an_outage_while_creating_a_run_is_no_buffering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="lrpilot_client")
    with Client(down, retries=1, backoff=0.01, max_backoff=0.01) as client:
        with pytest.raises(ServiceUnavailableError, match="ConnectError"):
            client.create_run("r", "plateau", 1, {}, [0.1])
        assert "buffering" not in caplog.text, caplog.text


class Trickler:
    """A server on 127.0.0.1 that answers every request with `head` and then one byte of
    body every `every` seconds, never finishing: what httpx's per-read timeouts never end."""

    def __init__(self, head: bytes, every: float = 0.1) -> None:
        self.head, self.every = head, every
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                for byte in self.head:  # the head too, byte by byte
                    conn.sendall(bytes([byte]))
                    if self.stop.wait(self.every / 10):
                        return
                while not self.stop.wait(self.every):
                    conn.sendall(b" ")
            except OSError:
                return  # the client gave up and closed

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    server = Trickler(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    )
    yield server
    server.close()


def test_a_trickling_server_cannot_hold_a_call_past_its_deadline(trickler: Trickler) -> None:
    with (
        Client(
            trickler.url, timeout=5.0, retries=3, on_unavailable="raise", deadline=1.0
        ) as client,
        pytest.raises(ServiceUnavailableError, match="deadline of 1 s passed") as raised,
    ):
        client.get_run("r")
    assert "the call's deadline of 1 s passed" in str(raised.value)


def test_the_async_client_has_the_deadline_too(trickler: Trickler) -> None:
    async def main() -> None:
        async with AsyncClient(
            trickler.url, timeout=5.0, retries=3, on_unavailable="raise", deadline=1.0
        ) as client:
            with pytest.raises(ServiceUnavailableError, match="deadline of 1 s passed"):
                await client.get_run("r")

    asyncio.run(main())


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="deadline"):
        Client(deadline=0)


# -- a non-finite lr ---------------------------------------------------------------------------


class NaNFrom(httpx.BaseTransport):
    """The real transport to the real service, except that the rates /lrs answers for the
    steps from `step` on are NaN (a fault of the service, or of what stands in between)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/lrs") or response.status_code != 200:
            return response
        doc = json.loads(response.read())
        doc["lrs"] = [
            ["NaN" for _ in row] if doc["from"] + i >= self.step else row
            for i, row in enumerate(doc["lrs"])
        ]
        return httpx.Response(200, json=doc)

    def close(self) -> None:
        self.inner.close()


def test_torch_never_applies_a_non_finite_lr(
    module_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from lrpilot_client.integrations.torch import LrpilotScheduler

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    caplog.set_level(logging.WARNING, logger="lrpilot_client")
    with Client(module_server.url, transport=NaNFrom(3), on_unavailable="raise") as client:
        scheduler = LrpilotScheduler(optimizer, client, "nan-later", params={"patience": 1})
        lrs = []
        for _ in range(6):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        assert lrs == [0.1] * 6 and all(math.isfinite(x) for x in lrs)
        assert caplog.text.count("not finite numbers; keeping the last lrs [0.1]") == 1

    # with no rate applied yet there is none to keep: a clear error, before any training step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        Client(module_server.url, transport=NaNFrom(0), on_unavailable="raise") as client,
        pytest.raises(ResponseError, match="not finite numbers"),
    ):
        LrpilotScheduler(optimizer, client, "nan-at-once", params={"patience": 1})
