"""Signatures mean what they say (issue 14): a service signs only what it decided.

A bundle signed by another key and imported is exported again with the signature it came with,
never under the service's own; once the service decides more, the trailer records the imported
one and the service's signature covers that record and the entries after it. With
LRPILOT_TRUSTED_KEYS, an import must be signed, every entry, by one of those keys.

Real apps (TestClient) on SQLite and PostgreSQL, each with its own key; offline checks run the
real ``lrpilot verify`` in this process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import create, export, feed, import_, offline_verify, sql, verify
from tests.conftest import app_client
from tests.helpers import lrpilot_cli, plateau_stream

N = 12  # decisions of the origin's run


def keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    prefix = tmp_path / name
    assert lrpilot_cli("keygen", str(prefix)).exit_code == 0
    return Path(f"{prefix}.pem"), Path(f"{prefix}.pub.pem")


@contextmanager
def service(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    key: Path | None = None,
    trusted: str | None = None,
    migrate: bool = True,
) -> Iterator[TestClient]:
    with monkeypatch.context() as env:
        for name, value in (("LRPILOT_SIGNING_KEY", key), ("LRPILOT_TRUSTED_KEYS", trusted)):
            if value is None:
                env.delenv(name, raising=False)
            else:
                env.setenv(name, str(value))
        with app_client(url, migrate=migrate) as api:
            yield api


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: keypair(tmp_path, name) for name in ("origin", "service", "other")}


def origin_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: Path | None, name: str = "origin"
) -> str:
    """Run "moved" decided by another service (its own SQLite file), exported: signed by
    ``key``, or unsigned."""
    with service(f"sqlite:///{tmp_path / f'{name}.db'}", monkeypatch, key) as origin:
        create(origin, "moved")
        feed(origin, "moved", plateau_stream(N))
        return export(origin, "moved")


def offline(tmp_path: Path, bundle: str, *public: Path) -> tuple[int, str]:
    args = [arg for key in public for arg in ("--public-key", str(key))]
    return offline_verify(tmp_path, bundle, *args)


def test_an_imported_run_keeps_the_signature_it_came_with(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: dict[str, tuple[Path, Path]],
) -> None:
    origin_pub, service_pub = keys["origin"][1], keys["service"][1]
    bundle = origin_bundle(tmp_path, monkeypatch, keys["origin"][0])
    with service(database_url, monkeypatch, keys["service"][0], migrate=False) as api:
        assert import_(api, bundle).status_code == 201
        # nothing decided here yet: the bundle as it came, under its signer's signature only
        again = export(api, "moved")
        assert again == bundle
        assert offline(tmp_path, again, origin_pub)[0] == 0
        code, out = offline(tmp_path, again, service_pub)
        assert code == 1 and "not signed by the given public key" in out, out

        # the service decides four more: it signs those, and says which it imported
        feed(api, "moved", plateau_stream(4, start_step=10 * N + 10))
        assert verify(api, "moved")["ok"] is True
        continued = export(api, "moved")
        lines = continued.splitlines()
        assert lines[: N + 1] == bundle.splitlines()[:-1]
        end = json.loads(lines[-1])["end"]
        assert end["count"] == N + 4
        assert end["imported"] == json.loads(bundle.splitlines()[-1])["end"]
        assert end["signature"]["key_id"] != end["imported"]["signature"]["key_id"]
        code, out = offline(tmp_path, continued, origin_pub, service_pub)
        assert code == 0, out
        assert f"entries {N + 1} to {N + 4}: the signature by key" in out, out
        assert f"entries 1 to {N} (imported): the signature by key" in out, out
        code, out = offline(tmp_path, continued, service_pub)
        assert code == 1 and f"entries 1 to {N} (imported) are not signed" in out, out
        code, out = offline(tmp_path, continued, origin_pub)
        assert code == 1 and f"entries {N + 1} to {N + 4} are not signed" in out, out

        # the imported record is inside what the service signed: without it, no signature holds
        del end["imported"]
        stripped = "\n".join([*lines[:-1], json.dumps({"end": end})]) + "\n"
        code, out = offline(tmp_path, stripped, origin_pub, service_pub)
        assert code == 1, out


def test_verify_catches_an_edited_import_record(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = origin_bundle(tmp_path, monkeypatch, None)
    with service(database_url, monkeypatch, migrate=False) as api:
        assert import_(api, bundle).status_code == 201
        assert verify(api, "moved")["ok"] is True
        end = json.loads(bundle.splitlines()[-1])["end"]
        header = bundle.splitlines()[0]
        edited = {"end": {**end, "head_hash": "ab" * 32}, "header": header}
        sql(
            database_url,
            "UPDATE runs SET imported = :v WHERE run_id = 'moved'",
            v=json.dumps(edited, sort_keys=True, separators=(",", ":")),
        )
        report = verify(api, "moved")
        assert report["ok"] is False and "imported" in report["mismatch"]["message"], report


def test_trusted_keys_refuse_what_they_did_not_sign(
    keys: dict[str, tuple[Path, Path]],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    (_, origin_pub), (_, service_pub) = keys["origin"], keys["service"]
    unsigned = origin_bundle(tmp_path, monkeypatch, None, "unsigned")
    by_other = origin_bundle(tmp_path, monkeypatch, keys["other"][0], "by-other")
    by_origin = origin_bundle(tmp_path, monkeypatch, keys["origin"][0], "by-origin")
    # the origin's run imported by a service that decided four more, and exported
    with service(f"sqlite:///{tmp_path / 'b.db'}", monkeypatch, keys["service"][0]) as b:
        assert import_(b, by_origin).status_code == 201
        feed(b, "moved", plateau_stream(4, start_step=10 * N + 10))
        continued = export(b, "moved")

    with service(database_url, monkeypatch, trusted=str(origin_pub), migrate=False) as api:
        for bundle, why in (
            (unsigned, "not signed at all"),
            (by_other, "signed by key"),
            (continued, f"entries {N + 1} to {N + 4} are not signed by a key of"),
        ):
            r = import_(api, bundle)
            assert r.status_code == 422, r.text
            detail = r.json()["detail"][0]
            assert detail["loc"] == ["body", len(bundle.splitlines())], r.text
            assert why in detail["msg"] and "LRPILOT_TRUSTED_KEYS" in detail["msg"], r.text
            assert api.get("/v1/runs/moved").status_code == 404
        assert import_(api, by_origin).status_code == 201

    # both signers trusted (PEM text this time): the continued log imports
    both = origin_pub.read_text() + service_pub.read_text()
    with service(database_url, monkeypatch, trusted=both, migrate=False) as api:
        r = import_(api, continued)
        # checked and trusted (else a 422): only its run id is taken, by the import above
        assert r.status_code == 409, r.text


def test_verify_says_whether_the_service_signs_and_with_which_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: dict[str, tuple[Path, Path]]
) -> None:
    private, public = keys["service"]
    with service(f"sqlite:///{tmp_path / 'signs.db'}", monkeypatch, private) as api:
        create(api, "signed")
        feed(api, "signed", plateau_stream(3))
        answer = verify(api, "signed")
        bundle = export(api, "signed")
    assert answer["ok"] and answer["signed"] is True
    # the fingerprint the service gives is the one its exports' signatures name
    assert answer["key_id"] == json.loads(bundle.splitlines()[-1])["end"]["signature"]["key_id"]
    assert offline(tmp_path, bundle, public)[0] == 0
    with service(f"sqlite:///{tmp_path / 'plain.db'}", monkeypatch) as api:
        create(api, "plain")
        answer = verify(api, "plain")
    assert answer["ok"] and answer["signed"] is False and answer["key_id"] is None
