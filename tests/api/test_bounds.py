"""Bounded work per request (issue 14): whatever a request's fields hold, it costs a bounded
amount of CPU, memory, database time and answer size, and past a bound it gets a 4xx naming
the bound (and its setting); every error answer stays under 16 kB.

Each test is an attack as it was first seen against main, now refused (or answered small) on
both databases, and the run it aimed at still decides afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrpilot.api.errors import bounded, validation_item
from lrpilot.api.responses import MAX_PAGE_CHARS
from lrpilot.domain.guarding import SUMMARY_CHECKPOINTS
from lrpilot.entries import MAX_LISTED_MISSING, Ranks, missing_ranges
from lrpilot_client.models import Decision
from tests.api.audit_calls import import_
from tests.conftest import app_client
from tests.helpers import lrpilot_cli, run_spec, strict_json

MAX_ERROR = 16 * 1024  # the largest error answer, whatever the request
JSON = {"content-type": "application/json"}


def aggregated(timeout_s: float = 1.0, on_timeout: str = "decide") -> dict[str, Any]:
    spec = run_spec()
    spec["aggregate"] = {"timeout_s": timeout_s, "on_timeout": on_timeout}
    return spec


def refused(r: httpx.Response, status: int, *words: str) -> Any:
    """``r`` is a ``status`` refusal, small, whose text names each of ``words``."""
    assert r.status_code == status, r.text[:2000]
    assert len(r.content) < MAX_ERROR, len(r.content)
    for word in words:
        assert word in r.text, (word, r.text[:2000])
    return strict_json(r.text)["detail"]


def still_decides(api: TestClient, run_id: str, step: int, **ranks: int) -> None:
    body = {"step": step, "value": 0.5, **ranks}
    r = api.post(f"/v1/runs/{run_id}/observations", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["step"] == step
    assert api.post(f"/v1/runs/{run_id}/verify", json={}).json()["ok"] is True


# -- world sizes: a decision's size follows the ranks that reported ----------------------------


@pytest.mark.parametrize("world", [10**7, 2**31 - 1])
def test_a_world_size_past_the_bound_is_refused_before_any_work(
    api: TestClient, world: int
) -> None:
    # main: 10**7 stalled the service 17 s and stored a 168 MB decision; 2**31-1 a MemoryError
    assert api.put("/v1/runs/agg", json=aggregated()).status_code == 201
    path = "/v1/runs/agg/observations"
    r = api.post(path, json={"step": 1, "value": 1.0, "rank": 0, "world_size": world})
    refused(r, 422, "world_size", "65536", "LRPILOT_MAX_WORLD_SIZE")
    r = api.post(path, json={"step": 1, "value": 1.0, "rank": 70_000})
    refused(r, 422, "rank", "LRPILOT_MAX_WORLD_SIZE")
    assert api.get("/v1/runs/agg/decisions").json()["items"] == []
    still_decides(api, "agg", 1, rank=0, world_size=1)


def test_a_resize_past_the_world_bound_is_refused(api: TestClient) -> None:
    spec = run_spec()
    spec["scaling"] = {"rule": "linear", "by": "world_size", "base": 8}
    assert api.put("/v1/runs/elastic", json=spec).status_code == 201
    r = api.post("/v1/runs/elastic/resize", json={"step": 0, "world_size": 2**31 - 1})
    refused(r, 422, "world_size", "LRPILOT_MAX_WORLD_SIZE")
    r = api.post(
        "/v1/runs/elastic/observations", json={"step": 1, "value": 1.0, "world_size": 10**6}
    )
    refused(r, 422, "LRPILOT_MAX_WORLD_SIZE")
    still_decides(api, "elastic", 1, world_size=16)
    assert api.get("/v1/runs/elastic").json()["scale"]["size"] == 16


def test_one_rank_of_the_largest_world_decides_a_small_entry(
    api: TestClient, tmp_path: Path
) -> None:
    # at the bound itself, one report and the timeout: the missing ranks are one range
    assert api.put("/v1/runs/lone", json=aggregated()).status_code == 201
    r = api.post(
        "/v1/runs/lone/observations",
        json={"step": 5, "value": 2.0, "rank": 3, "world_size": 65_536},
    )
    assert r.status_code == 200, r.text[:2000]
    assert len(r.content) < 4096, len(r.content)
    decision = r.json()
    assert decision["missing_ranges"] == [[0, 2], [4, 65_535]]
    read = Decision.from_json(decision)  # as the client reads it
    assert read.missing_ranges == ((0, 2), (4, 65_535)) and read.missing == 65_535
    assert "missing_ranks" not in decision and decision["timeout_s"] == 1.0
    assert (
        "ranks 3 of 65536 counted; 65535 ranks (0-2, 4-65535) did not report" in decision["reason"]
    )
    assert api.post("/v1/runs/lone/verify", json={}).json()["ok"] is True
    exported = api.get("/v1/runs/lone/export")
    assert exported.status_code == 200 and len(exported.content) < 8192
    # the ranges shape is checked by import as by verify, and `lrpilot verify` offline
    with app_client(f"sqlite:///{tmp_path / 'copy.db'}") as copy:
        assert import_(copy, exported.text).status_code == 201
        assert copy.post("/v1/runs/lone/verify", json={}).json()["ok"] is True
    bundle = tmp_path / "lone.ndjson"
    bundle.write_bytes(exported.content)
    assert lrpilot_cli("verify", str(bundle)).exit_code == 0
    # an edit of the ranges is found
    edited = exported.text.replace("[4,65535]", "[4,65534]")
    assert edited != exported.text
    with app_client(f"sqlite:///{tmp_path / 'edited.db'}") as copy:
        assert import_(copy, edited).status_code == 422
    still_decides(api, "lone", 6, rank=0, world_size=1)


def test_a_refused_timeout_names_the_missing_ranks_as_ranges(api: TestClient) -> None:
    assert api.put("/v1/runs/strict", json=aggregated(on_timeout="refuse")).status_code == 201
    body = {"step": 5, "value": 2.0, "rank": 0, "world_size": 65_536}
    r = api.post("/v1/runs/strict/observations", json=body)
    refused(r, 409, "ranks 1-65535 of 65536 did not report")
    assert len(r.content) < 1024


def test_a_service_that_takes_any_world_stays_bounded_by_the_reports(database_url: str) -> None:
    # the bound is a setting; raised to the largest, the entry still follows the reports
    with app_client(database_url, migrate=False, max_world_size=2**31 - 1) as api:
        assert api.put("/v1/runs/huge", json=aggregated()).status_code == 201
        body = {"step": 1, "value": 1.0, "rank": 0, "world_size": 2**31 - 1}
        r = api.post("/v1/runs/huge/observations", json=body)
        assert r.status_code == 200, r.text[:2000]
        assert len(r.content) < 4096 and r.json()["missing_ranges"] == [[1, 2**31 - 2]]
        assert api.post("/v1/runs/huge/verify", json={}).json()["ok"] is True
    with app_client(database_url, migrate=False, max_world_size=8) as api:
        r = api.post("/v1/runs/huge/observations", json={**body, "step": 2, "world_size": 9})
        refused(r, 422, "largest world size 8")


def test_few_missing_ranks_keep_the_listed_shape() -> None:
    # entries written before ranges keep their bytes: up to MAX_LISTED_MISSING they are listed
    counted = [{"rank": 0, "value": 1.0, "weight": 1.0}]
    listed = Ranks.at_timeout(counted, MAX_LISTED_MISSING + 1, 1.0)
    assert listed.missing == list(range(1, MAX_LISTED_MISSING + 1))
    assert listed.missing_ranges is None
    ranged = Ranks.at_timeout(counted, MAX_LISTED_MISSING + 2, 1.0)
    assert ranged.missing == [] and ranged.missing_ranges == [[1, MAX_LISTED_MISSING + 1]]
    assert missing_ranges([0, 1, 5, 9], 10) == [(2, 4), (6, 8)]
    assert missing_ranges([], 3) == [(0, 2)] and missing_ranges([0, 1, 2], 3) == []


# -- simulate and policy params: what sizes an answer is bounded --------------------------------


def test_simulate_values_times_param_groups_is_bounded(api: TestClient) -> None:
    # main: 100,000 values x 1,024 groups, a 24 kB request (as JSON integers, "values": [1, ...]
    # is 2 bytes a value), made an 835 MB answer
    policy = {"name": "plateau", "version": 1, "params": {}}
    body = {"policy": policy, "base_lrs": [0.1] * 1024, "values": [1] * 100_000}
    r = api.post("/v1/simulate", json=body)
    detail = refused(r, 422, "100000 values x 1024 param groups", "100000 (values x param groups)")
    assert detail[0]["type"] == "simulate_size"
    # at the bound, it answers
    r = api.post("/v1/simulate", json={**body, "values": [1] * 97})
    assert r.status_code == 200 and r.json()["count"] == 97
    # a run's own stream: its observations x the groups the what-if replays it with
    assert api.put("/v1/runs/s", json=run_spec()).status_code == 201
    for step in range(1, 98):
        assert api.post("/v1/runs/s/observations", json={"step": step, "value": 1.0}).is_success
    r = api.post("/v1/simulate", json={"run_id": "s", "base_lrs": [0.1] * 1024})
    assert r.status_code == 200 and r.json()["count"] == 97, r.text[:500]  # 99,328 values
    still_decides(api, "s", 98)
    r = api.post("/v1/simulate", json={"run_id": "s", "base_lrs": [0.1] * 1024})
    refused(r, 409, "98 observations x 1024 param groups", "bound of 100000")
    assert api.post("/v1/simulate", json={"run_id": "s"}).json()["count"] == 98


def test_a_run_of_many_milestones_and_groups_costs_its_params_only(api: TestClient) -> None:
    # main held milestones x groups lrs at once (10,001 x 1,024 floats, ~0.8 GB, from one PUT);
    # now each level is made when a step needs it, the same floats
    params = {"milestones": list(range(1, 10_001)), "gamma": 0.5}
    spec = {
        "policy": {"name": "multistep", "version": 1, "params": params},
        "base_lrs": [0.1] * 1024,
    }
    assert api.put("/v1/runs/ms", json=spec).status_code == 201
    r = api.get("/v1/runs/ms/lr", params={"step": 3})
    assert r.status_code == 200 and r.json()["lrs"] == [0.1 * 0.5**3] * 1024
    r = api.get("/v1/runs/ms/lrs", params={"from": 9_999, "count": 3})
    assert r.json()["lrs"][2] == [0.1 * 0.5**10_000] * 1024
    # a per-group list longer than the most groups a run can have is refused before its values
    plateau = run_spec({"min_lr": [0.0] * 100_000})
    refused(api.put("/v1/runs/p", json=plateau), 422, "min_lr", "1024")


def test_a_page_of_large_items_is_cut_and_next_goes_on_from_it(api: TestClient) -> None:
    # main: limit=1000 decisions of 1,024 param groups made a ~90 MB page; now a page answers
    # what fits in MAX_PAGE_CHARS (at least one item), and `next` reads on without a gap
    spec = run_spec({"patience": 0}, base_lrs=[0.1 * (i + 1) for i in range(1024)])
    assert api.put("/v1/runs/wide", json=spec).status_code == 201
    for step in range(1, 61):
        value = 1.0 / step if step % 2 else 2.0
        assert api.post(
            "/v1/runs/wide/observations", json={"step": step, "value": value}
        ).is_success
    seen: list[int] = []
    after, pages = 0, 0
    while after is not None:
        r = api.get("/v1/runs/wide/decisions", params={"after": after, "limit": 1000})
        assert r.status_code == 200 and len(r.content) <= MAX_PAGE_CHARS + 100_000
        page = r.json()
        seen += [d["seq"] for d in page["items"]]
        after, pages = page["next"], pages + 1
    assert seen == list(range(1, 61)) and pages == 2
    # the runs list likewise (a run's document carries its base lrs)
    for i in range(60):
        assert api.put(f"/v1/runs/w{i:02}", json=spec).status_code == 201
    runs: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        params = {"limit": 1000, **({"after": cursor} if cursor else {})}
        page = api.get("/v1/runs", params=params).json()
        runs += [run["run_id"] for run in page["items"]]
        cursor = page["next"]
    assert runs == [f"w{i:02}" for i in range(60)] + ["wide"]


def test_checkpoints_are_read_a_page_at_a_time_and_the_summary_keeps_the_newest(
    api: TestClient,
) -> None:
    # main answered every checkpoint of a run in one list, and listed them all in its summary:
    # a job that saves one every 100 steps for a week has thousands. Now GET /checkpoints pages
    # as GET /decisions does, and the summary shows the newest SUMMARY_CHECKPOINTS and a count
    assert api.put("/v1/runs/saves", json=run_spec()).status_code == 201
    assert api.post("/v1/runs/saves/observations", json={"step": 230, "value": 0.5}).is_success
    for step in range(1, 231):  # declared late, below the last decided step, as async saves are
        body = {"step": step, "ref": f"ckpt-{step}"}
        assert api.post("/v1/runs/saves/checkpoints", json=body).status_code == 201
    assert api.post("/v1/runs/saves/rewind", json={"to_step": 200}).json()["rewound"] is True
    statements: list[str] = []
    engine = api.app.state.store.engine  # type: ignore[attr-defined]
    listen = (engine, "before_cursor_execute", lambda *a: statements.append(a[2].upper()))
    sa.event.listen(*listen)
    try:
        seen: list[dict[str, Any]] = []
        after: int | None = 0
        pages = 0
        while after is not None:
            page = api.get("/v1/runs/saves/checkpoints", params={"after": after}).json()
            assert len(page["items"]) <= 100  # the default limit, as GET /decisions'
            seen += page["items"]
            after, pages = page["next"], pages + 1
        summary = api.get("/v1/runs/saves/summary").json()
    finally:
        sa.event.remove(*listen)
    # every checkpoint once, in seq order, the rewind's on their branch
    assert pages == 3 and [c["step"] for c in seen] == list(range(1, 231))
    assert [c["seq"] for c in seen] == sorted({c["seq"] for c in seen})
    assert [c["superseded"] for c in seen] == [False] * 200 + [True] * 30
    whole = api.get("/v1/runs/saves/checkpoints", params={"limit": 1000}).json()
    assert whole["items"] == seen and whole["next"] is None
    page = api.get("/v1/runs/saves/checkpoints", params={"after": seen[99]["seq"], "limit": 2})
    assert page.json()["items"] == seen[100:102] and page.json()["next"] == seen[101]["seq"]
    # the summary: the live branch's newest, oldest first, and how many it has (a COUNT)
    assert [c["ref"] for c in summary["checkpoints"]] == [
        f"ckpt-{step}" for step in range(201 - SUMMARY_CHECKPOINTS, 201)
    ]
    assert summary["checkpoint_count"] == 200
    # each read of the checkpoints names a LIMIT (or the seqs of a page, or counts them)
    read = [q for q in statements if "ACTION =" in q and "FROM DECISIONS" in q]
    assert read and all("LIMIT" in q or " IN (" in q or "COUNT(" in q for q in read), read
    # out of range: 422, naming the parameter and the bound
    for params, loc, words in (
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"limit": 1001}, "limit", "less than or equal to 1000"),
        ({"after": -1}, "after", "greater than or equal to 0"),
    ):
        detail = refused(api.get("/v1/runs/saves/checkpoints", params=params), 422, words)
        assert detail[0]["loc"] == ["query", loc], detail
    still_decides(api, "saves", 201)


# -- every error answer stays under 16 kB -------------------------------------------------------


def test_a_request_with_many_errors_gets_the_first_and_a_count(api: TestClient) -> None:
    # main: one item per wrong value, 100,000 values "x" made a ~9 MB 422
    policy = {"name": "plateau", "version": 1, "params": {}}
    body = {"policy": policy, "base_lrs": [0.1], "values": ["x"] * 100_000}
    detail = refused(api.post("/v1/simulate", json=body), 422)
    assert detail[-1]["type"] == "too_many_errors"
    assert detail[-1]["msg"].startswith(f"... and {100_000 - (len(detail) - 1):,} more")
    assert detail[0]["loc"] == ["body", "values", 0]
    # long strings, long keys, deep locs: each item is cut, and the list is
    spec = run_spec(labels={"k" * 128 + str(i): "v" * 300 for i in range(64)})
    detail = refused(api.put("/v1/runs/r", json=spec), 422)
    assert len(detail) < 64 and detail[-1]["type"] == "too_many_errors"
    params = {f"{'p' * 2000}{i}": "\U0001f600" * 2000 for i in range(50)}
    refused(api.put("/v1/runs/r", json=run_spec(params)), 422)
    refused(api.post("/v1/runs/r/observations", json={"step": [[[[1] * 10] * 10] * 10] * 100}), 422)
    refused(api.get("/v1/runs", params={"label": ["x" * 300] * 150}), 422)


def test_error_items_of_control_characters_are_cut_to_fit() -> None:
    # JSON writes a control character as 6 bytes: 1,000 of them in a message, 16 locs of 128
    bad = "\x01" * 5000
    errors = [
        {"loc": ("body", *[bad] * 30), "msg": bad, "type": "t", "input": bad} for _ in range(9)
    ]
    detail = bounded((validation_item(e) for e in errors), len(errors))
    assert len(json.dumps({"detail": detail}, ensure_ascii=False).encode()) < MAX_ERROR
    assert detail[0]["loc"][0] == "body" and detail[-1]["type"] == "too_many_errors"


# -- the smaller holes ----------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [True, "2", "1e3", [1]])
def test_weight_is_as_strict_as_the_other_numbers(api: TestClient, weight: object) -> None:
    assert api.put("/v1/runs/agg", json=aggregated()).status_code == 201
    body = {"step": 1, "value": 1.0, "rank": 0, "world_size": 1, "weight": weight}
    refused(api.post("/v1/runs/agg/observations", json=body), 422, "weight")
    assert api.get("/v1/runs/agg/decisions").json()["items"] == []
    body["weight"] = 2  # a JSON integer is a number
    assert api.post("/v1/runs/agg/observations", json=body).json()["ranks"][0]["weight"] == 2.0


def test_the_import_413_names_its_own_setting(database_url: str) -> None:
    with app_client(database_url, migrate=False, max_import_bytes=4096) as api:
        r = api.post(
            "/v1/runs/import",
            content=b"{}\n" * 2000,
            headers={"content-type": "application/x-ndjson"},
        )
        refused(r, 413, "LRPILOT_MAX_IMPORT_BYTES", "4096")
        assert "LRPILOT_MAX_BODY_BYTES" not in r.text
        r = api.put("/v1/runs/x", content=b" " * (2 << 20), headers=JSON)
        refused(r, 413, "LRPILOT_MAX_BODY_BYTES")
        doc = api.get("/openapi.json").json()
        said = doc["paths"]["/v1/runs/import"]["post"]["responses"]["413"]["description"]
        assert "LRPILOT_MAX_IMPORT_BYTES" in said


@pytest.mark.parametrize("run_id", [".", ".."])
def test_dot_run_ids_are_refused(api: TestClient, run_id: str) -> None:
    # a path cannot carry them: every HTTP client resolves /v1/runs/../x to /v1/x. Sent raw:
    r = api.put(f"/v1/runs/{run_id.replace('.', '%2E')}", json=run_spec())
    refused(r, 422, "run_id")
    r = api.post("/v1/simulate", json={"run_id": run_id})
    refused(r, 422, "run_id")
    for fine in ("...", ".a", "a.", "..b"):
        assert api.put(f"/v1/runs/{fine}", json=run_spec()).status_code == 201, fine
    assert api.get("/v1/runs").json()["next"] is None


DUPLICATED = [
    ("PUT", "/v1/runs/d2", b'{"policy": {"name": "plateau", "version": 1}, "base_lrs": [0.1], '
     b'"base_lrs": [9.0]}', "base_lrs"),
    ("POST", "/v1/runs/d/observations", b'{"step": 1, "value": 0.1, "value": 9}', "value"),
    ("POST", "/v1/runs/d/observations", b'{"step":1,"value":0.1,"client":{"host":"a","host":"b"}}',
     "host"),
    ("POST", "/v1/runs/d/observations", b'{"step": 1, "value": 0.1, "step": 2}', "step"),
    ("POST", "/v1/runs/d/rewind", b'{"to_step": 0, "to_step": 1}', "to_step"),
    ("POST", "/v1/runs/d/verify", b'{"head": null, "head": null}', "head"),
    ("POST", "/v1/simulate", b'{"run_id": "d", "run_id": "d"}', "run_id"),
]  # fmt: skip


def test_a_duplicated_key_is_refused_on_every_json_route(database_url: str) -> None:
    both = []
    for fast_path in (True, False):  # the fast path answers the same bytes as the route
        with app_client(database_url, migrate=False, fast_path=fast_path) as api:
            api.put("/v1/runs/d", json=run_spec())
            before = api.get("/v1/runs/d/decisions").json()["items"]
            answers = []
            for method, path, body, key in DUPLICATED:
                r = api.request(method, path, content=body, headers=JSON)
                detail = refused(r, 422, repr(key))
                assert detail == [
                    {
                        "loc": ["body"],
                        "msg": f"the key {key!r} appears twice in one object of the body: "
                        "give each key once",
                        "type": "json_duplicate_key",
                        "input": key,
                    }
                ]
                answers.append(r.content)
            both.append(answers)
            assert api.get("/v1/runs/d/decisions").json()["items"] == before
            assert api.get("/v1/runs/d2").status_code == 404
            # the same keys in different objects, and a colon inside a string, are fine
            body = b'{"step": 1, "rank": null, "value": 0.1, "client": {"rank": 0, "host": "a:b"}}'
            r = api.post("/v1/runs/d/observations", content=body, headers=JSON)
            assert r.status_code == 200, r.text
            assert api.post("/v1/runs/d/rewind", json={"to_step": 0}).status_code == 200
    assert both[0] == both[1]


def test_an_import_is_streamed_past_the_duplicate_key_check(api: TestClient) -> None:
    # the import spools its body to disk under its own limit (1 GiB): the check, which reads a
    # body whole, leaves it to the import's own, line by line, whatever its content type says
    body = b'{"a": 1, "a": 2}\n' + b" " * (2 << 20)
    r = api.post("/v1/runs/import", content=body, headers=JSON)
    assert r.status_code in (400, 409, 422) and r.status_code != 413, r.text[:500]
    assert "json_duplicate_key" not in r.text


# A JSON value whose errors are many and long: lists of thousands of wrong items, long strings
# (keys too), non-ASCII, nesting. Whatever of it lands in a field, the answer stays small.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=3000),
    st.text(alphabet="\U0001f600é\u200b", min_size=500, max_size=1500),
)
_HOSTILE = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        # long lists of one scalar (a list of such lists of lists would be 3000^3 items: the
        # test's own json.dumps ran out of memory before the body limit could refuse it)
        st.builds(lambda x, n: [x] * n, _SCALARS, st.integers(0, 3000)),
        st.dictionaries(st.text(max_size=600), inner, max_size=4),
    ),
    max_leaves=8,
)
_FIELDS = {
    ("PUT", "/v1/runs/h"): [
        "policy",
        "base_lrs",
        "metric",
        "labels",
        "aggregate",
        "scaling",
        "guard",
        "clock",
    ],
    ("POST", "/v1/runs/h/observations"): [
        "step",
        "value",
        "rank",
        "world_size",
        "weight",
        "client",
        "applied",
    ],
    ("POST", "/v1/simulate"): ["policy", "base_lrs", "values", "steps", "run_id", "metric"],
    ("POST", "/v1/runs/h/rewind"): ["to_step", "client"],
    ("POST", "/v1/runs/h/resize"): ["step", "world_size", "batch_size"],
    ("POST", "/v1/runs/h/applied"): ["rank", "world_size", "step", "seq", "lrs_hash"],
    ("POST", "/v1/runs/h/checkpoints"): ["step", "ref", "client"],
    ("POST", "/v1/runs/h/cooldown"): ["at_step", "steps", "shape", "reason", "client"],
    ("POST", "/v1/runs/h/retime"): ["at_step", "horizon", "mode", "client"],
}


@pytest.fixture(scope="module")
def hostile_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'h.db'}"
    with app_client(url, raise_server_exceptions=False) as api:
        spec = run_spec()
        spec["scaling"] = {"rule": "linear", "by": "world_size", "base": 8}
        assert api.put("/v1/runs/h", json=spec).status_code == 201
        yield api


@given(
    route=st.sampled_from(sorted(_FIELDS)),
    data=st.data(),
)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_error_answer_exceeds_16_kb(
    hostile_api: TestClient, route: tuple[str, str], data: st.DataObject
) -> None:
    method, path = route
    fields = data.draw(st.lists(st.sampled_from(_FIELDS[route]), unique=True, max_size=4))
    body = {field: data.draw(_HOSTILE) for field in fields}
    for name, value in data.draw(
        st.dictionaries(st.text(max_size=300), _HOSTILE, max_size=2)
    ).items():
        body.setdefault(name, value)
    content = json.dumps(body).encode()
    if len(content) > 1 << 20:
        return  # a 413, tested elsewhere
    r = hostile_api.request(method, path, content=content, headers=JSON)
    assert r.status_code < 500, r.text[:2000]
    if r.status_code >= 400:
        assert len(r.content) < MAX_ERROR, (r.status_code, len(r.content))
