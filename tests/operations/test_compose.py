"""What a user of `docker compose up` and of the Dockerfile relies on, checked statically.

No Docker engine is needed: docker-compose.yml is parsed with PyYAML, validated against the
Compose specification's JSON Schema, and the Dockerfile is read as text. The entrypoint that
builds the database URL from the password secret is run for real, and so are the healthcheck
commands (python one-liners, slim images have no curl), against a local HTTP server, to show
they pass on 200 and fail on 503.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
import yaml

from tests.harness import REPO_DIR

COMPOSE_FILE = REPO_DIR / "docker-compose.yml"
DOCKERFILE = REPO_DIR / "Dockerfile"
# The Compose specification's JSON Schema, vendored: where from and how to update it,
# docs/operations.md ("Deployment").
COMPOSE_SCHEMA = REPO_DIR / "deploy" / "compose-spec.json"

APP_SERVICES = ("migrate", "service")  # the services that run the lrpilot image


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict), "docker-compose.yml has no services mapping"
    return svcs


def argv(command: str | list[str]) -> list[str]:
    """A compose `command`/`test` or a Dockerfile exec/shell form, as an argv list."""
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either the mapping or the list syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {k: v for k, v in (p if len(p) == 2 else (p[0], "") for p in pairs)}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """dependency -> condition; the list syntax means `service_started`."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck")
    assert check, "no healthcheck"
    assert not check.get("disable", False), "healthcheck disabled"
    test = argv(check["test"])
    assert test[0] in ("CMD", "CMD-SHELL"), f"healthcheck test must start with CMD: {test}"
    return test


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_argv(args: str) -> list[str]:
    """A CMD/ENTRYPOINT argument: the JSON exec form, or the shell form."""
    if args.startswith("["):
        parsed = json.loads(args)
        assert isinstance(parsed, list)
        return [str(a) for a in parsed]
    return shlex.split(args)


def option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in args."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def assert_serves_on_all_interfaces_port_8000(command: list[str]) -> None:
    assert command[:2] == ["lrpilot", "serve"], f"not `lrpilot serve`: {command}"
    assert option(command, "--host") == "0.0.0.0", f"must bind 0.0.0.0: {command}"
    assert option(command, "--port") in (None, "8000"), f"must serve on port 8000: {command}"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_the_three_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"db", "migrate", "service"} <= set(services)


def test_db_is_postgres_16_with_a_pg_isready_healthcheck_and_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    db = services["db"]
    assert str(db["image"]).split(":")[0] == "postgres"
    assert str(db["image"]).split(":")[1].startswith("16")
    test = healthcheck_argv(db)
    assert "pg_isready" in " ".join(test[1:])

    named_volumes = set(compose.get("volumes") or {})
    mounts = [
        str(v).split(":")[0] if not isinstance(v, dict) else v["source"] for v in db["volumes"]
    ]
    assert any(source in named_volumes for source in mounts), "db data is not in a named volume"


def test_migrate_runs_db_upgrade_once_db_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert argv(migrate["command"])[:3] == ["lrpilot", "db", "upgrade"]
    assert depends_on(migrate).get("db") == "service_healthy"
    # a one-shot job: restarting it would keep `service` from ever seeing it complete
    assert str(migrate.get("restart", "no")) in ("no", "on-failure")


def test_service_waits_for_migrate_to_complete_successfully(
    services: dict[str, dict[str, Any]],
) -> None:
    assert depends_on(services["service"]).get("migrate") == "service_completed_successfully"


def test_migrate_and_service_run_the_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    images = set()
    for name in APP_SERVICES:
        svc = services[name]
        assert "build" in svc or "image" in svc, f"{name} has neither build nor image"
        if "build" in svc:
            build = svc["build"]
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert (REPO_DIR / context / dockerfile).resolve() == DOCKERFILE
        images.add(svc.get("image"))
    assert len(images) == 1, f"migrate and service run different images: {images}"


def entrypoint_environment(service: dict[str, Any], secrets_dir: Path) -> dict[str, str]:
    """The environment a command of the lrpilot image gets from the service's entrypoint, run
    for real with the secrets read from ``secrets_dir`` instead of /run/secrets."""
    entrypoint = argv(service["entrypoint"])
    assert entrypoint[:2] == ["python", "-c"], f"not a python -c entrypoint: {entrypoint}"
    code = entrypoint[2].replace("/run/secrets/", f"{secrets_dir}/")
    assert code != entrypoint[2], "the entrypoint reads no secret"
    shown = "import json, os; print(json.dumps(dict(os.environ)))"
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-c", shown],
        capture_output=True, text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    env: dict[str, str] = json.loads(done.stdout)
    return env


def test_every_app_service_builds_the_database_url_from_the_db_password_secret(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    password = "p@ss:w/rd with spaces%"  # every character a URL would otherwise misread
    (tmp_path / "postgres_password").write_text(password + "\n")
    db_env = environment(services["db"])
    assert "POSTGRES_PASSWORD" not in db_env, "the password must come from the secret"
    assert db_env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "postgres_password" in services["db"]["secrets"]
    assert compose["secrets"]["postgres_password"]["file"] == "./secrets/postgres_password"
    for name in (*APP_SERVICES, "bootstrap"):
        assert "postgres_password" in services[name]["secrets"], name
        assert "LRPILOT_DATABASE_URL" not in environment(services[name]), name
        url = sa.make_url(entrypoint_environment(services[name], tmp_path)["LRPILOT_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg2"
        assert url.host == "db" and (url.port or 5432) == 5432
        assert url.username == db_env.get("POSTGRES_USER", "postgres")
        assert url.password == password
        assert url.database == db_env.get("POSTGRES_DB", url.username)


def test_only_the_proxy_is_published_and_the_rest_is_internal(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"proxy"}, published
    (port,) = services["proxy"]["ports"]
    # the default of ${LRPILOT_PUBLISH:-...}: loopback, until TLS is put in front
    assert str(port) == "${LRPILOT_PUBLISH:-127.0.0.1:8000}:8080"
    networks = compose["networks"]
    internal = {name for name, net in networks.items() if (net or {}).get("internal")}
    for name, svc in services.items():
        joined = set(svc.get("networks") or ["default"])
        if name == "proxy":
            assert joined - internal, "the proxy has no network to publish on"
            continue
        assert joined <= internal, f"{name} is on a network that reaches outside: {joined}"
    # the proxy reaches the service, never the database
    db_networks = set(services["db"]["networks"])
    assert set(services["proxy"]["networks"]) & set(services["service"]["networks"])
    assert not set(services["proxy"]["networks"]) & db_networks
    assert set(services["service"]["networks"]) & db_networks


def test_the_compose_file_is_valid_by_the_compose_specification_schema(
    compose: dict[str, Any],
) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # the schema does refuse what Compose refuses
    broken = {**compose, "services": {**compose["services"], "db": {"image": 16, "bogus": 1}}}
    assert len(list(validator.iter_errors(broken))) == 2


def test_service_has_a_readyz_healthcheck_and_the_proxy_waits_for_it(
    services: dict[str, dict[str, Any]],
) -> None:
    test = healthcheck_argv(services["service"])
    assert "/readyz" in " ".join(test)
    depends = services["proxy"]["depends_on"]["service"]
    assert depends == {"condition": "service_healthy", "restart": True}
    assert "/healthz" in " ".join(healthcheck_argv(services["proxy"]))


def test_service_serves_on_0_0_0_0_without_migrating(
    services: dict[str, dict[str, Any]],
) -> None:
    # The migrate service owns the schema; the service (and any replica of it) must not race it
    # or change the schema behind its back, so it overrides the image's CMD with --no-migrate.
    command = services["service"].get("command")
    assert command is not None, "service runs the image's CMD, which migrates"
    assert_serves_on_all_interfaces_port_8000(argv(command))
    assert "--no-migrate" in argv(command), f"service must not migrate: {command}"


def test_lrpilot_serve_accepts_every_option_compose_passes(
    services: dict[str, dict[str, Any]],
) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", "serve", "--help"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},  # rich must not cut option names
    ).stdout  # fmt: skip
    for name in APP_SERVICES:
        command = argv(services[name]["command"])
        if command[:2] == ["lrpilot", "serve"]:
            for arg in command[2:]:
                if arg.startswith("--"):
                    assert arg.split("=", 1)[0] in help_text, f"{name}: unknown option {arg}"


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_cmd_runs_lrpilot_serve_on_0_0_0_0() -> None:
    instructions = dockerfile_instructions()
    cmds = [args for keyword, args in instructions if keyword == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    assert not [a for k, a in instructions if k == "ENTRYPOINT"], "an ENTRYPOINT would wrap CMD"
    assert_serves_on_all_interfaces_port_8000(dockerfile_argv(cmds[-1]))


def test_dockerfile_is_slim_python_311_non_root_exposing_8000_with_a_healthz_healthcheck() -> None:
    instructions = dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert froms[-1].split()[0] == "python:3.11-slim"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER: the service would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any("8000" in args.split() for keyword, args in instructions if keyword == "EXPOSE")
    checks = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert checks and "/healthz" in checks[-1]
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert ".[postgres]" in runs, "the image must install the postgres extra"


# ---------------------------------------------------------------------------------------------
# the healthcheck one-liners, run for real


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"status":"ok"}'
        self.send_response(type(self).status if self.path in ("/healthz", "/readyz") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_service() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def python_healthcheck(test: list[str]) -> list[str]:
    """The argv of a `python -c CODE` healthcheck (exec form), without the CMD marker."""
    cmd = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
    if len(cmd) == 1:
        cmd = shlex.split(cmd[0])
    assert cmd[0] in ("python", "python3") and cmd[1] == "-c", f"not a python -c check: {cmd}"
    return cmd


def dockerfile_healthcheck() -> list[str]:
    args = next(a for k, a in reversed(dockerfile_instructions()) if k == "HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    return ["CMD", *dockerfile_argv(command.strip())]


def run_check(cmd: list[str], port: int) -> int:
    code = cmd[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    assert code != cmd[2], "the check does not target 127.0.0.1:8000"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("which", ["dockerfile /healthz", "compose service /readyz"])
def test_healthcheck_passes_on_200_and_fails_on_503(
    which: str,
    services: dict[str, dict[str, Any]],
    fake_service: tuple[int, type[_Handler]],
) -> None:
    port, handler = fake_service
    test = (
        dockerfile_healthcheck()
        if which.startswith("dockerfile")
        else healthcheck_argv(services["service"])
    )
    cmd = python_healthcheck(test)
    handler.status = 200
    assert run_check(cmd, port) == 0
    handler.status = 503
    assert run_check(cmd, port) != 0
