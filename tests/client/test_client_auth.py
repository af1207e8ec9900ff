"""The client and the CLI with tokens, against the real service (uvicorn on 127.0.0.1) on a
database that holds tokens: `token=`, LRPILOT_TOKEN, a 401/403 raised at once (never retried,
never buffered), --token of the commands that call the service, the torch integration."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrpilot.store.db import upgrade
from lrpilot_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    NotFoundError,
    PermissionDeniedError,
)
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer
from tests.helpers import lrpilot_cli, make_token

SPEC = {"policy": "plateau", "version": 1, "params": {"patience": 1}, "base_lrs": [0.1]}


class Served:
    def __init__(self, server: LiveServer, tokens: dict[str, str]) -> None:
        self.url = server.url
        self.tokens = tokens


@pytest.fixture(params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    """A server on a database with tokens, holding project p1's run "r" (made by "trainer");
    LRPILOT_TOKEN unset."""
    monkeypatch.delenv("LRPILOT_TOKEN", raising=False)
    url = empty_database(request.param, tmp_path)
    upgrade(url)
    tokens = {role: make_token(url, "p1", role) for role in ("reader", "admin")}
    tokens["writer"] = make_token(url, "p1", "writer", name="trainer")
    tokens["other"] = make_token(url, "p2", "admin")
    with LiveServer(url, migrate=False) as server:
        with quick(server.url, token=tokens["writer"]) as c:
            c.create_run("r", **SPEC)  # type: ignore[arg-type]
        yield Served(server, tokens)


def quick(url: str, **kwargs: object) -> Client:
    return Client(url, retries=3, backoff=0.01, rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def test_token_argument_and_environment_variable(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    with quick(served.url, token=served.tokens["writer"]) as c:
        assert c.observe("r", step=1, value=0.5).action == "hold"
    monkeypatch.setenv("LRPILOT_TOKEN", served.tokens["reader"])
    with quick(served.url) as c:
        assert c.get_run("r").last_step == 1
    with quick(served.url, token="") as c, pytest.raises(AuthenticationError) as no_token:
        c.get_run("r")  # "" sends none, whatever the environment says
    assert no_token.value.status_code == 401
    with quick(served.url, token=served.tokens["other"]) as c, pytest.raises(NotFoundError):
        c.get_run("r")  # another project's run


def test_401_and_403_are_raised_at_once_never_buffered(served: Served) -> None:
    for token, error, says in (
        ("lrp_wrong", AuthenticationError, "unknown token"),
        (served.tokens["reader"], PermissionDeniedError, "needs the role writer"),
    ):
        with quick(served.url, token=token, on_unavailable="buffer") as c:
            with pytest.raises(error) as raised:
                c.observe("r", step=1, value=0.5)
            assert says in str(raised.value)
            assert c.pending == () and not c.offline  # not an outage
    with quick(served.url, token=served.tokens["writer"]) as c:
        assert c.get_run("r").last_step is None  # nothing of it reached the run


def test_async_client_sends_the_token(served: Served) -> None:
    async def main() -> int | None:
        async with AsyncClient(served.url, token=served.tokens["writer"]) as c:
            await c.create_run("a", **SPEC)  # type: ignore[arg-type]
            await c.observe("a", step=3, value=0.5)
            return (await c.get_run("a")).last_step

    assert asyncio.run(main()) == 3


def test_cli_commands_take_token_or_the_environment(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with quick(served.url, token=served.tokens["writer"]) as c:
        c.observe("r", step=1, value=0.5)
    out = tmp_path / "r.ndjson"
    refused = lrpilot_cli("export", "r", "--url", served.url, "-o", str(out))
    assert refused.exit_code == 1 and "(401)" in refused.output, refused.output
    done = lrpilot_cli(
        "export", "r", "--url", served.url, "-o", str(out), "--token", served.tokens["reader"]
    )
    assert done.exit_code == 0, done.output
    monkeypatch.setenv("LRPILOT_TOKEN", served.tokens["writer"])
    writer = lrpilot_cli("import", str(out), "--url", served.url)
    assert writer.exit_code == 1 and "needs the role admin" in writer.output, writer.output
    monkeypatch.setenv("LRPILOT_TOKEN", served.tokens["admin"])
    admin = lrpilot_cli("import", str(out), "--url", served.url)
    assert admin.exit_code == 0 and "already there, identical" in admin.output, admin.output


def test_torch_scheduler_through_a_client_with_a_token(served: Served) -> None:
    torch = pytest.importorskip("torch")
    from lrpilot_client.integrations.torch import LrpilotScheduler

    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with quick(served.url, token=served.tokens["writer"]) as c:
        sched = LrpilotScheduler(opt, c, "torch-run", params={"patience": 0}, metric="val_loss")
        for value in (1.0, 1.0, 1.0):
            sched.step(value)
    with quick(served.url, token=served.tokens["reader"]) as c:
        run = c.get_run("torch-run")
        assert run.last_step is not None and run.lrs[0] < 0.1
        logged = list(c.iter_decisions("torch-run"))
        assert logged and all(d.by == {"token": "trainer", "project": "p1"} for d in logged)


def test_an_admin_client_creates_lists_and_revokes_tokens(served: Served) -> None:
    with quick(served.url, token=served.tokens["admin"]) as admin:
        made = admin.create_token("writer", name="job-1", expires_days=30)
        assert made.project == "p1" and made.token.startswith("lrp_") and made.expires_at
        assert "job-1" in {t.name for t in admin.list_tokens()}
        with quick(served.url, token=made.token) as job:
            assert job.observe("r", step=5, value=0.5).by == {"token": "job-1", "project": "p1"}
        revoked = admin.revoke_token("job-1")
        assert revoked.revoked_at is not None
        with pytest.raises(NotFoundError):
            admin.revoke_token("no-such-token")
    writer = quick(served.url, token=served.tokens["writer"])
    with writer, pytest.raises(PermissionDeniedError, match="needs the role admin"):
        writer.list_tokens()

    async def listed() -> list[str]:
        async with AsyncClient(served.url, token=served.tokens["admin"]) as c:
            return [t.name for t in await c.list_tokens()]

    assert "job-1" in asyncio.run(listed())
