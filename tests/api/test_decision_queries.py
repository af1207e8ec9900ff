"""The decision log's queries (project issue 6): filters, the summary, client identity."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import (
    CLIENT,
    PARAMS,
    create,
    export,
    feed,
    get_run,
    live,
    log,
    observe,
    rewind,
    verify,
)
from tests.helpers import plateau_stream


def test_decision_filters(api: TestClient) -> None:
    create(api, "queried")
    feed(api, "queried", plateau_stream(40))  # steps 10..400
    rewind(api, "queried", 250)  # seqs 26..40 superseded, entry seq 41
    feed(api, "queried", plateau_stream(10, seed=2, start_step=260))  # seqs 42..51
    everything = log(api, "queried")
    assert [d["seq"] for d in everything] == list(range(1, 52))
    superseded_seqs = set(range(26, 41))

    def seqs(**query: Any) -> list[int]:
        got = [d["seq"] for d in log(api, "queried", **query)]
        assert got == [d["seq"] for d in log(api, "queried", limit=3, **query)]  # paging
        return got

    reduce = [d["seq"] for d in everything if d["action"] == "reduce"]
    assert len(reduce) >= 3
    assert seqs(action="reduce") == reduce
    assert seqs(action="rewind") == [41]
    assert seqs(action="hold") == [d["seq"] for d in everything if d["action"] == "hold"]
    assert seqs(from_step=100, to_step=200) == [
        d["seq"] for d in everything if 100 <= d["step"] <= 200
    ]
    assert seqs(from_step=300) == [d["seq"] for d in everything if d["step"] >= 300]
    assert seqs(to_step=50) == [1, 2, 3, 4, 5]
    assert seqs(from_step=250, to_step=250) == [25, 41]
    assert seqs(superseded="true") == sorted(superseded_seqs)
    assert seqs(superseded="false") == [s for s in range(1, 52) if s not in superseded_seqs]
    assert seqs(superseded="false", from_step=260) == list(range(42, 52))
    assert seqs(superseded="true", action="reduce") == [s for s in reduce if s in superseded_seqs]
    assert seqs(from_step=201, to_step=199) == []
    assert api.get("/v1/runs/queried/decisions", params={"action": "nope"}).status_code == 422
    assert api.get("/v1/runs/queried/decisions", params={"from_step": -1}).status_code == 422
    assert api.get("/v1/runs/nosuch/decisions", params={"action": "reduce"}).status_code == 404


def expected_summary(decisions: list[dict], mode: str) -> dict[str, Any]:
    values = [
        (d["step"], d["value"])
        for d in decisions
        if not isinstance(d["value"], str)  # NaN never is the best
    ]
    best = min(values, key=lambda sv: sv[1]) if mode == "min" else max(values, key=lambda sv: sv[1])
    return {
        "best": {"value": best[1], "step": best[0], "mode": mode},
        "lr_changes": [(d["step"], d["lrs"]) for d in decisions if d["lrs"] != d["previous_lrs"]],
        "first_step": decisions[0]["step"],
        "decisions": len(decisions),
    }


@pytest.mark.parametrize("mode", ["min", "max"])
def test_summary(api: TestClient, mode: str) -> None:
    sign = 1.0 if mode == "min" else -1.0
    stream = [(s, sign * v) for s, v in plateau_stream(40)]
    stream[17] = (stream[17][0], math.nan)
    create(api, "summed", {**PARAMS, "mode": mode})
    decided = feed(api, "summed", stream)
    assert decided[17]["value"] == "NaN"
    got = api.get("/v1/runs/summed/summary").json()
    want = expected_summary(decided, mode)
    assert len(want["lr_changes"]) >= 3
    assert got["best"] == want["best"]
    assert [(c["step"], c["lrs"]) for c in got["lr_changes"]] == want["lr_changes"]
    assert all(c["action"] == "reduce" for c in got["lr_changes"])
    assert (got["first_step"], got["last_step"]) == (10, 400)
    assert got["decisions"] == 40 and got["superseded"] == 0
    assert got["lrs"] == decided[-1]["lrs"]

    # the best value and a reduction on the superseded branch are no longer the run's
    best_step = want["best"]["step"]
    to_step = best_step - 10
    rewind(api, "summed", to_step)
    worse = [(s, sign * (10.0 + i)) for i, (s, _) in enumerate(stream) if s > to_step][:5]
    feed(api, "summed", worse)
    got = api.get("/v1/runs/summed/summary").json()
    want = expected_summary(live(api, "summed"), mode)
    assert got["best"] == want["best"]
    assert got["best"]["step"] != best_step
    assert [(c["step"], c["lrs"]) for c in got["lr_changes"]] == want["lr_changes"]
    assert got["superseded"] == 40 - to_step // 10
    assert got["decisions"] == to_step // 10 + 5
    assert got["last_step"] == worse[-1][0]
    assert api.get("/v1/runs/nosuch/summary").status_code == 404


def test_summary_of_a_run_without_decisions(api: TestClient) -> None:
    create(api, "empty")
    got = api.get("/v1/runs/empty/summary")
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["decisions"] == 0 and doc["lr_changes"] == [] and doc["first_step"] is None
    assert doc["best"]["value"] is None


def test_client_identity_is_stored_with_the_decision(api: TestClient) -> None:
    create(api, "who")
    with_client = observe(api, "who", 10, 0.5, CLIENT)
    assert with_client.status_code == 200, with_client.text
    assert with_client.json()["client"] == CLIENT
    partial = observe(api, "who", 20, 0.4, {"rank": 3})
    assert partial.json()["client"] == {"rank": 3}
    without = observe(api, "who", 30, 0.3)
    assert "client" not in without.json()
    stored = log(api, "who")
    assert stored[0]["client"] == CLIENT and stored[1]["client"] == {"rank": 3}
    assert "client" not in stored[2]
    lines = export(api, "who").splitlines()
    assert json.loads(lines[1])["client"] == CLIENT
    assert verify(api, "who")["ok"] is True
    # a retry from another client answers the decision as it was made
    again = observe(api, "who", 10, 0.5, {"host": "elsewhere", "process": 1, "rank": 1})
    assert again.status_code == 200 and again.text == with_client.text


@pytest.mark.parametrize(
    "client",
    [
        {"host": "gpu\u0000node"},
        {"host": "h", "pid": 4242},
        {"hostname": "h"},
        {"rank": -1},
        {"process": "4242"},
        {"host": ""},
        {"host": "h" * 256},
        "gpu-node-3",
    ],
)
def test_a_bad_client_field_is_422(api: TestClient, client: Any) -> None:
    create(api, "bad-client")
    r = api.post(
        "/v1/runs/bad-client/observations", json={"step": 10, "value": 0.5, "client": client}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", "client"], r.text
    assert get_run(api, "bad-client")["last_seq"] == 0
