"""docker-compose.yml's admin token: a one-shot bootstrap service stores the secret file's token
as an admin token on first start, before the service (which binds 0.0.0.0, so needs one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lrpilot.store.db import upgrade
from tests.harness import REPO_DIR
from tests.helpers import bearer, lrpilot_cli
from tests.operations.test_compose import argv, depends_on

COMPOSE = yaml.safe_load((REPO_DIR / "docker-compose.yml").read_text(encoding="utf-8"))


def bootstrap() -> dict[str, Any]:
    service: dict[str, Any] = COMPOSE["services"]["bootstrap"]
    return service


def test_bootstrap_creates_the_admin_token_from_a_secret_before_the_service() -> None:
    command = argv(bootstrap()["command"])
    assert command[:3] == ["lrpilot", "token", "create"]
    assert "--if-absent" in command and "--secret-file" in command
    secret = command[command.index("--secret-file") + 1]
    assert secret == "/run/secrets/lrpilot_admin_token"
    assert "lrpilot_admin_token" in bootstrap()["secrets"]
    assert COMPOSE["secrets"]["lrpilot_admin_token"]["file"] == "./secrets/lrpilot_admin_token"
    assert depends_on(bootstrap()).get("migrate") == "service_completed_successfully"
    service = COMPOSE["services"]["service"]
    assert depends_on(service).get("bootstrap") == "service_completed_successfully"
    assert bootstrap()["image"] == service["image"]
    assert "secrets/" in (REPO_DIR / ".gitignore").read_text().splitlines()


def test_the_bootstrap_command_stores_the_secret_once(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lrpilot.app import create_app
    from lrpilot.settings import Settings

    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    secret_file = tmp_path / "lrpilot_admin_token"
    secret = "lrp_" + "k" * 43
    secret_file.write_text(secret + "\n")
    command = argv(bootstrap()["command"])
    command[command.index("--secret-file") + 1] = str(secret_file)
    for _ in range(2):  # every `docker compose up` runs it; the first one creates the token
        done = lrpilot_cli(*command[1:], "--database-url", url)
        assert done.exit_code == 0, done.output
        assert secret not in done.output
    with TestClient(create_app(Settings(database_url=url))) as client:
        assert client.get("/v1/runs").status_code == 401
        assert client.get("/v1/runs", headers=bearer(secret)).status_code == 200
        r = client.post("/v1/runs/import", content=b"{}\n", headers=bearer(secret))
        assert r.status_code not in (401, 403)  # an admin
