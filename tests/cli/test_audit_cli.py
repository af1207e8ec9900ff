"""The audit commands as users run them (project issue 6): ``lrpilot keygen``, ``export`` and
``import`` against real servers, ``verify`` with signed heads (``--public-key``), and
``replay --set/--policy/--plot`` on an exported bundle.

Servers are real (uvicorn, SQLite files); a few commands run as subprocesses, exactly as typed,
the rest in this process through typer's CliRunner (an unhandled exception fails the test).
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import LiveServer
from tests.helpers import (
    bundle_text,
    lrpilot_cli,
    one_line,
    plateau_stream,
    rechained,
    run_spec,
)

PARAMS = {"patience": 2, "factor": 0.5, "cooldown": 1}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lrpilot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def feed(client: httpx.Client, run_id: str, stream: list[tuple[int, float]]) -> None:
    for step, value in stream:
        r = client.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text


def make_run(url: str, run_id: str) -> None:
    """A run of 30 observations, rewound to step 200 and continued for 5 more."""
    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.put(f"/v1/runs/{run_id}", json=run_spec(PARAMS))
        assert r.status_code == 201, r.text
        feed(client, run_id, plateau_stream(30))
        r = client.post(f"/v1/runs/{run_id}/rewind", json={"to_step": 200})
        assert r.status_code == 200 and r.json()["rewound"] is True, r.text
        feed(client, run_id, plateau_stream(5, seed=2, start_step=210))


# -- keys and servers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lrpilot keygen PREFIX``: PREFIX.pem and PREFIX.pub.pem."""
    prefix = tmp_path_factory.mktemp("keys") / "service"
    done = lrpilot("keygen", str(prefix))
    assert done.returncode == 0, done.stderr
    return prefix


def private(prefix: Path) -> Path:
    return Path(f"{prefix}.pem")


def public(prefix: Path) -> Path:
    return Path(f"{prefix}.pub.pem")


@pytest.fixture(scope="module")
def signing_server(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[LiveServer]:
    where = tmp_path_factory.mktemp("signing")
    server = LiveServer(
        f"sqlite:///{where / 'signing.db'}",
        env={"LRPILOT_SIGNING_KEY": str(private(keys))},
        log=where / "serve.log",
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server without a signing key."""
    where = tmp_path_factory.mktemp("plain")
    server = LiveServer(f"sqlite:///{where / 'plain.db'}", log=where / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def signed(signing_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lrpilot export`` of a rewound run from the signing server."""
    make_run(signing_server.url, "signed")
    path = tmp_path_factory.mktemp("export") / "signed.ndjson"
    done = lrpilot("export", "signed", "--url", signing_server.url, "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_keygen_writes_a_key_pair_and_never_overwrites_one(keys: Path) -> None:
    assert private(keys).read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public(keys).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(private(keys).stat().st_mode) == 0o600
    before = private(keys).read_bytes()
    result = lrpilot_cli("keygen", str(keys))
    assert result.exit_code == 1, result.output
    assert "exists" in result.output
    assert private(keys).read_bytes() == before


# -- 5. signed heads ----------------------------------------------------------------------------


def test_export_is_the_bundle_the_service_serves_signed(
    signing_server: LiveServer, signed: Path
) -> None:
    text = signed.read_text()
    served = httpx.get(f"{signing_server.url}/v1/runs/signed/export", timeout=30)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/x-ndjson")
    assert served.text == text  # Ed25519 signatures are deterministic
    lines = text.splitlines()
    run = httpx.get(f"{signing_server.url}/v1/runs/signed", timeout=30).json()
    end = json.loads(lines[-1])["end"]
    assert end["count"] == run["last_seq"] == len(lines) - 2 == 36
    assert end["head_hash"] == run["head_hash"]
    signature = end["signature"]
    assert signature["algorithm"] == "ed25519"
    assert len(base64.b64decode(signature["value"])) == 64


def test_signed_bundle_verifies_with_the_public_key(signed: Path, keys: Path) -> None:
    done = lrpilot("verify", str(signed), "--public-key", str(public(keys)))
    assert done.returncode == 0, done.stdout + done.stderr
    out = one_line(done.stdout)
    assert "OK 36 decisions" in out and "signature is valid" in out, out
    without = lrpilot_cli("verify", str(signed))  # no key: checked but the signature
    assert without.exit_code == 0, without.output
    assert "not checked" in one_line(without.output)


def flip_char(text: str, index: int, alphabet: str) -> str:
    old = text[index]
    new = alphabet[(alphabet.index(old) + 1) % len(alphabet)]
    return text[:index] + new + text[index + 1 :]


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
HEX = "0123456789abcdef"


def with_end(lines: list[str], change: Any) -> list[str]:
    doc = json.loads(lines[-1])
    change(doc["end"])
    return [*lines[:-1], json.dumps(doc, separators=(",", ":"), sort_keys=True)]


def signature_char(lines: list[str]) -> list[str]:
    def change(end: dict) -> None:
        end["signature"]["value"] = flip_char(end["signature"]["value"], 10, B64)

    return with_end(lines, change)


def signature_bit(lines: list[str]) -> list[str]:
    def change(end: dict) -> None:
        raw = bytearray(base64.b64decode(end["signature"]["value"]))
        raw[5] ^= 0x01
        end["signature"]["value"] = base64.b64encode(bytes(raw)).decode()

    return with_end(lines, change)


def head_char(lines: list[str]) -> list[str]:
    def change(end: dict) -> None:
        end["head_hash"] = flip_char(end["head_hash"], 20, HEX)

    return with_end(lines, change)


def decision_char(lines: list[str]) -> list[str]:
    out = list(lines)
    m = re.search(r'"value":0\.(\d)', out[5])
    assert m is not None, out[5]
    out[5] = out[5][: m.start(1)] + flip_char(m.group(1), 0, "0123456789") + out[5][m.end(1) :]
    return out


def unsigned(lines: list[str]) -> list[str]:
    return with_end(lines, lambda end: end.pop("signature"))


def prefix_keeping_signature(lines: list[str]) -> list[str]:
    """The last decision cut off, the trailer's count and head made right again, the old
    signature kept: a signature must not carry over to a prefix of the log."""
    signature = json.loads(lines[-1])["end"]["signature"]
    shorter = rechained([*lines[:-2], lines[-1]])
    return with_end(shorter, lambda end: end.update(signature=signature))


def other_key_id(lines: list[str]) -> list[str]:
    def change(end: dict) -> None:
        end["signature"]["key_id"] = flip_char(end["signature"]["key_id"], 0, HEX)

    return with_end(lines, change)


CHANGES = {
    "signature_char": signature_char,
    "signature_bit": signature_bit,
    "head_char": head_char,
    "decision_char": decision_char,
    "unsigned": unsigned,
    "prefix_keeping_signature": prefix_keeping_signature,
    "other_key_id": other_key_id,
}
# What only the key can tell: without --public-key these still verify.
SIGNATURE_ONLY = {
    "signature_char",
    "signature_bit",
    "unsigned",
    "prefix_keeping_signature",
    "other_key_id",
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_changed_signed_bundle_fails_with_the_public_key(
    signed: Path, keys: Path, tmp_path: Path, name: str
) -> None:
    lines = signed.read_text().splitlines()
    changed = CHANGES[name](lines)
    assert changed != lines
    path = tmp_path / f"{name}.ndjson"
    path.write_text(bundle_text(changed))
    result = lrpilot_cli("verify", str(path), "--public-key", str(public(keys)))
    assert result.exit_code != 0, result.output
    assert "FAILED" in result.output
    if name in SIGNATURE_ONLY:
        assert lrpilot_cli("verify", str(path)).exit_code == 0  # the key is what caught it
    if name == "unsigned":
        assert "not signed" in one_line(result.output)


def test_the_wrong_public_key_fails(signed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert lrpilot_cli("keygen", str(other)).exit_code == 0
    result = lrpilot_cli("verify", str(signed), "--public-key", str(public(other)))
    assert result.exit_code != 0, result.output
    assert "FAILED" in result.output and "key" in result.output
    # a file that is no key at all: a clear refusal
    result = lrpilot_cli("verify", str(signed), "--public-key", str(signed))
    assert result.exit_code != 0, result.output
    assert "public key" in one_line(result.output)


def test_import_export_through_the_cli(
    signed: Path, keys: Path, plain_server: LiveServer, tmp_path: Path
) -> None:
    done = lrpilot("import", str(signed), "--url", plain_server.url)
    assert done.returncode == 0, done.stderr
    assert "imported run signed: 36 decisions" in one_line(done.stdout)
    again = lrpilot_cli("import", str(signed), "--url", plain_server.url)
    assert again.exit_code == 0, again.output
    assert "already there" in again.output

    # the copy exported again by a server without a key: the bundle as it was imported, with
    # the signature it came with (a service signs only what it decided)
    back = tmp_path / "back.ndjson"
    result = lrpilot_cli("export", "signed", "--url", plain_server.url, "-o", str(back))
    assert result.exit_code == 0, result.output
    assert back.read_text() == signed.read_text()
    assert lrpilot_cli("verify", str(back)).exit_code == 0
    result = lrpilot_cli("verify", str(back), "--public-key", str(public(keys)))
    assert result.exit_code == 0, result.output

    # a tampered bundle: refused with the line, no traceback, nothing stored
    lines = signed.read_text().replace('"run_id":"signed"', '"run_id":"tampered"').splitlines()
    lines = rechained(lines)
    lines[7] = lines[7].replace('"reason":"', '"reason":"x', 1)
    bad = tmp_path / "bad.ndjson"
    bad.write_text(bundle_text(lines))
    done = lrpilot("import", str(bad), "--url", plain_server.url)
    assert done.returncode == 1, done.stdout + done.stderr
    no_traceback(done.stdout, done.stderr)
    assert "line 8" in one_line(done.stderr), done.stderr
    assert httpx.get(f"{plain_server.url}/v1/runs/tampered", timeout=30).status_code == 404


def test_export_and_import_failures_are_one_line(plain_server: LiveServer, tmp_path: Path) -> None:
    result = lrpilot_cli("export", "nosuch", "--url", plain_server.url, "-o", str(tmp_path / "x"))
    assert result.exit_code == 1 and "404" in result.output, result.output
    result = lrpilot_cli(
        "export", "signed", "--url", "http://127.0.0.1:9", "-o", str(tmp_path / "y")
    )
    assert result.exit_code == 1 and "cannot reach" in result.output, result.output
    result = lrpilot_cli("import", str(tmp_path / "missing.ndjson"), "--url", plain_server.url)
    assert result.exit_code == 1 and "no such file" in result.output, result.output
    result = lrpilot_cli("verify", str(tmp_path / "missing.ndjson"))
    assert result.exit_code == 1 and "no such file" in result.output, result.output


# -- 8. lrpilot replay ----------------------------------------------------------------------------


@dataclass
class Recorded:
    path: Path
    count: int  # observations on the live branch
    differing: int  # with patience 5
    first_diff_step: int
    recorded_changes: int
    replayed_changes: int
    recorded_final: list[float]
    replayed_final: list[float]


def lr_changes(decisions: list[dict]) -> int:
    return sum(d["lrs"] != d["previous_lrs"] for d in decisions)


@pytest.fixture(scope="module")
def recorded(plain_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A rewound run's bundle and, for patience 5, what a real run fed its live branch's
    stream decides."""
    stream = plateau_stream(60)
    tail = plateau_stream(20, seed=2, start_step=410)
    with httpx.Client(base_url=plain_server.url, timeout=30) as client:
        assert client.put("/v1/runs/what-if", json=run_spec(PARAMS)).status_code == 201
        feed(client, "what-if", stream)
        assert client.post("/v1/runs/what-if/rewind", json={"to_step": 400}).status_code == 200
        feed(client, "what-if", tail)
        live = [
            d
            for d in client.get(
                "/v1/runs/what-if/decisions", params={"superseded": "false", "limit": 1000}
            ).json()["items"]
            if d["action"] != "rewind"
        ]
        assert client.put("/v1/runs/patient", json=run_spec({**PARAMS, "patience": 5})).status_code
        feed(client, "patient", stream[:40] + tail)
        patient = client.get("/v1/runs/patient/decisions", params={"limit": 1000}).json()["items"]
        text = client.get("/v1/runs/what-if/export").text
    assert [d["step"] for d in live] == [d["step"] for d in patient]
    diffs = [
        a["step"]
        for a, b in zip(live, patient, strict=True)
        if a["action"] != b["action"] or a["lrs"] != b["lrs"]
    ]
    assert diffs
    path = tmp_path_factory.mktemp("replay") / "what-if.ndjson"
    path.write_text(text)
    return Recorded(
        path,
        len(live),
        len(diffs),
        diffs[0],
        lr_changes(live),
        lr_changes(patient),
        live[-1]["lrs"],
        patient[-1]["lrs"],
    )


def test_replay_with_another_patience_prints_the_differences_and_plots(
    recorded: Recorded, tmp_path: Path
) -> None:
    png = tmp_path / "out.png"
    done = lrpilot("replay", str(recorded.path), "--set", "patience=5", "--plot", str(png))
    assert done.returncode == 0, done.stdout + done.stderr
    no_traceback(done.stdout, done.stderr)
    out = one_line(done.stdout)
    r = recorded
    assert f"{r.count} observations replayed under plateau@1 (patience=5)" in out, out
    assert f"of {r.differing})" in out, out
    assert f" {r.first_diff_step} " in out, out
    assert (
        f"lr changes: recorded {r.recorded_changes}, what-if {r.replayed_changes}; final lrs: "
        f"recorded {r.recorded_final}, what-if {r.replayed_final}"
    ) in out, out
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 200, (width, height)


def test_replay_with_the_recorded_params_finds_no_difference(recorded: Recorded) -> None:
    result = lrpilot_cli("replay", str(recorded.path))
    assert result.exit_code == 0, result.output
    out = one_line(result.output)
    assert "the same decisions at every step" in out
    assert f"{recorded.count} observations replayed" in out
    result = lrpilot_cli(
        "replay",
        str(recorded.path),
        "--policy",
        "plateau@1",
        "--set",
        "patience=2",
        "--set",
        "factor=0.5",
        "--set",
        "cooldown=1",
    )
    assert result.exit_code == 0, result.output
    assert "the same decisions at every step" in one_line(result.output)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "nosuch=1"], "nosuch"),
        (["--set", "patience=-1"], "patience"),
        (["--set", "patience=abc"], "patience"),
        (["--set", "patience=2.5"], "patience"),
        (["--set", "factor=2"], "factor"),
        (["--set", "mode=sideways"], "mode"),
        (["--set", "patience"], "name=value"),
        (["--set", "=5"], "name=value"),
        (["--policy", "plateau@99"], "plateau"),
        (["--policy", "nonsense"], "name@version"),
    ],
)
def test_replay_refuses_a_bad_setting_in_one_line(
    recorded: Recorded, args: list[str], named: str
) -> None:
    result = lrpilot_cli("replay", str(recorded.path), *args)
    assert result.exit_code == 1, result.output
    out = result.output
    no_traceback(out)
    assert out.startswith("lrpilot: "), out
    assert named in out, out


def test_replay_refusal_as_typed_has_no_traceback(recorded: Recorded, tmp_path: Path) -> None:
    png = tmp_path / "never.png"
    done = lrpilot("replay", str(recorded.path), "--set", "nosuch=1", "--plot", str(png))
    assert done.returncode == 1, done.stdout + done.stderr
    no_traceback(done.stdout, done.stderr)
    assert "nosuch" in done.stderr
    assert not png.exists()
    done = lrpilot("replay", str(tmp_path / "missing.ndjson"))
    assert done.returncode == 1
    no_traceback(done.stdout, done.stderr)
    assert "no such file" in done.stderr
