"""The audit routes as the tests call them (create, observe, feed, the decision log, export,
import, verify, rewind), each asserting the status it expects: for test_audit.py,
test_decision_queries.py and test_simulate.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.helpers import lrpilot_cli, one_line, raw_items, run_spec

PARAMS = {"patience": 2, "factor": 0.5, "cooldown": 1}
CLIENT = {"host": "gpu-node-3", "process": 4242, "rank": 0}
# What a decision is, apart from where it sits in the chain and when it was made.
ESSENCE = ("step", "value", "lrs", "previous_lrs", "action", "reason", "state")

Stream = list[tuple[int, float]]


def create(api: TestClient, run_id: str, params: dict[str, Any] | None = None, **spec: Any) -> dict:
    r = api.put(f"/v1/runs/{run_id}", json=run_spec(PARAMS if params is None else params, **spec))
    assert r.status_code == 201, r.text
    return r.json()


def observe(
    api: TestClient, run_id: str, step: int, value: float | str, client: dict | None = None
) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        value = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    body: dict[str, Any] = {"step": step, "value": value}
    if client is not None:
        body["client"] = client
    return api.post(f"/v1/runs/{run_id}/observations", json=body)


def feed(api: TestClient, run_id: str, stream: Stream, client: dict | None = None) -> list[dict]:
    out = []
    for step, value in stream:
        r = observe(api, run_id, step, value, client)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def log_raw(api: TestClient, run_id: str, limit: int = 1000, **query: Any) -> list[str]:
    """Every decision the filters select, through every page, as the service wrote each."""
    items: list[str] = []
    after = 0
    while True:
        r = api.get(
            f"/v1/runs/{run_id}/decisions", params={**query, "after": after, "limit": limit}
        )
        assert r.status_code == 200, r.text
        items += raw_items(r.text)
        after = r.json()["next"]
        if after is None:
            return items


def log(api: TestClient, run_id: str, **query: Any) -> list[dict]:
    return [json.loads(item) for item in log_raw(api, run_id, **query)]


def live(api: TestClient, run_id: str) -> list[dict]:
    """The live branch's decisions, without rewind entries."""
    return [d for d in log(api, run_id, superseded="false") if d["action"] != "rewind"]


def essence(decisions: list[dict], keys: tuple[str, ...] = ESSENCE) -> list[dict]:
    return [{k: d[k] for k in keys} for d in decisions]


def export(api: TestClient, run_id: str) -> str:
    r = api.get(f"/v1/runs/{run_id}/export")
    assert r.status_code == 200, r.text
    return r.text


def import_(api: TestClient, text: str) -> Any:
    return api.post(
        "/v1/runs/import", content=text.encode(), headers={"content-type": "application/x-ndjson"}
    )


def verify(api: TestClient, run_id: str, head: str | None = None) -> dict:
    r = api.post(f"/v1/runs/{run_id}/verify", json={"head": head} if head else None)
    assert r.status_code == 200, r.text
    return r.json()


def rewind(api: TestClient, run_id: str, to_step: int, client: dict | None = CLIENT) -> dict:
    body: dict[str, Any] = {"to_step": to_step}
    if client is not None:
        body["client"] = client
    r = api.post(f"/v1/runs/{run_id}/rewind", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def get_run(api: TestClient, run_id: str) -> dict:
    r = api.get(f"/v1/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def fresh_run_equals(api: TestClient, rewound: str, fresh: str, stream: Stream) -> None:
    """A new run fed ``stream`` decides exactly what the live branch of ``rewound`` holds."""
    create(api, fresh)
    feed(api, fresh, stream)
    got = essence(live(api, rewound))
    want = essence(log(api, fresh))
    assert len(got) == len(want) == len(stream)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"live decision {i} (step {w['step']}) differs from the fresh run's"


def offline_verify(tmp_path: Path, text: str, *args: str) -> tuple[int, str]:
    path = tmp_path / f"bundle-{abs(hash(text))}.ndjson"
    path.write_text(text)
    result = lrpilot_cli("verify", str(path), *args)
    return result.exit_code, one_line(result.output)


# -- edits of a bundle's lines, as whoever can write the file makes them ----------------------


def edit_value(line: str) -> str:
    m = re.search(r'"value":([-0-9.e+]+)', line)
    assert m is not None, line
    changed = repr(float(m.group(1)) * 0.5)
    return line[: m.start(1)] + changed + line[m.end(1) :]


def edit_reason(line: str) -> str:
    m = re.search(r'"reason":"([^"]*)"', line)
    assert m is not None, line
    return line[: m.end(1)] + " (edited)" + line[m.end(1) :]


def at(lines: list[str], seq: int, edit: Any) -> list[str]:
    out = list(lines)
    out[seq] = edit(out[seq])
    return out


# -- edits made in the database, as whoever can write it makes them ----------------------------


def sql(database_url: str, statement: str, **params: Any) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            return int(conn.execute(sa.text(statement), params).rowcount)
    finally:
        engine.dispose()


def body_of(database_url: str, run_id: str, seq: int) -> str:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text("SELECT body FROM decisions WHERE run_id = :r AND seq = :s"),
                    {"r": run_id, "s": seq},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def set_decision(database_url: str, run_id: str, seq: int, **columns: Any) -> None:
    """Set ``columns`` of one stored decision, as whoever can write the database does."""
    sets = ", ".join(f"{name} = :{name}" for name in columns)
    where = "run_id = :run_id AND seq = :seq"
    statement = f"UPDATE decisions SET {sets} WHERE {where}"
    assert sql(database_url, statement, run_id=run_id, seq=seq, **columns) == 1
