"""Hostile input gets a 4xx naming what is wrong, never a 5xx, and nothing is stored.

Strings UTF-8 or a database cannot hold (a lone surrogate, which JSON's "\\ud800" parses to;
NUL, which PostgreSQL text refuses), too many filters, bodies past the size limit (declared or
streamed), booleans and numeric strings where numbers belong. The real app over the real
database on both backends, and the real server under uvicorn for what goes over a socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.harness import LiveServer
from tests.helpers import run_spec, strict_json

UNSTORABLE = {"surrogate": "a\ud800b", "low surrogate": "\udfff", "nul": "a\x00b"}
LIMIT = 1 << 20  # Settings.max_body_bytes' default
JSON = {"content-type": "application/json"}


def send(api: TestClient, method: str, url: str, body: Any) -> httpx.Response:
    # json.dumps escapes a surrogate as \ud800 and NUL as \u0000: the bytes a client sends
    return api.request(method, url, content=json.dumps(body).encode(), headers=JSON)


def refused(r: httpx.Response, status: int = 422) -> list[dict[str, Any]]:
    assert r.status_code == status, r.text
    assert len(r.content) < 2000, len(r.content)  # an error answer stays small
    detail: list[dict[str, Any]] = strict_json(r.text)["detail"]
    return detail


def names(detail: list[dict[str, Any]], *loc: str | int, word: str | None = None) -> None:
    """Some item's loc is ``loc`` (or starts with it) and, if given, its msg contains ``word``."""
    hits = [d for d in detail if tuple(d["loc"][: len(loc)]) == loc]
    assert hits, (loc, detail)
    if word is not None:
        assert any(word in d["msg"] for d in hits), (word, detail)


def nothing_stored(api: TestClient, run_id: str = "h") -> None:
    assert api.get(f"/v1/runs/{run_id}").status_code == 404
    assert strict_json(api.get("/v1/runs").text)["items"] == []


# -- strings -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_unstorable_strings_in_a_run_spec_are_422_naming_the_field(
    api: TestClient, bad: str
) -> None:
    spec = run_spec()
    cases: list[tuple[dict[str, Any], tuple[str | int, ...], str | None]] = [
        ({**spec, "metric": bad}, ("body", "metric"), None),
        ({**spec, "labels": {"team": bad}}, ("body", "labels", "team"), None),
        ({**spec, "labels": {bad: "x"}}, ("body", "labels"), None),
        ({**spec, "policy": {**spec["policy"], "name": bad}}, ("body", "policy", "name"), None),
    ]
    for param in ("flavor", "mode", "threshold_mode"):
        params = {"policy": {**spec["policy"], "params": {param: bad}}}
        cases.append(({**spec, **params}, ("body", "policy", "params"), param))
    key = {"policy": {**spec["policy"], "params": {bad: 1}}}
    cases.append(({**spec, **key}, ("body", "policy", "params"), "key"))
    nested = {"policy": {**spec["policy"], "params": {"min_lr": [0.0, {"x": [bad]}]}}}
    cases.append(({**spec, **nested}, ("body", "policy", "params"), "min_lr"))
    for body, loc, word in cases:
        names(refused(send(api, "PUT", "/v1/runs/h", body)), *loc, word=word)
    nothing_stored(api)


@pytest.mark.parametrize("bad", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_unstorable_strings_in_an_observation_are_422(api: TestClient, bad: str) -> None:
    assert api.put("/v1/runs/h", json=run_spec()).status_code == 201
    url = "/v1/runs/h/observations"
    names(refused(send(api, "POST", url, {"step": 1, "value": bad})), "body", "value")
    names(refused(send(api, "POST", url, {"step": 1, "value": 1.0, bad: 1})), "body")
    assert strict_json(api.get("/v1/runs/h").text)["counts"]["decisions"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("label=team:a%00b", "label"),
        ("label=te%00am:x", "label"),
        ("after=a%00b", "after"),
        ("after=" + "x" * 129, "after"),
        ("label=nocolon", "label"),
        ("label=" + "k" * 129 + ":v", "label"),
        ("label=k:" + "v" * 257, "label"),
    ],
)
def test_unstorable_or_malformed_list_filters_are_422(
    api: TestClient, query: str, field: str
) -> None:
    names(refused(api.get(f"/v1/runs?{query}")), "query", field)


def test_unstorable_action_filter_is_422(api: TestClient) -> None:
    assert api.put("/v1/runs/h", json=run_spec()).status_code == 201
    for action in ("ho%00ld", "%00", "x" * 33, "reduced"):
        names(refused(api.get(f"/v1/runs/h/decisions?action={action}")), "query", "action")


def test_bytes_that_are_not_utf8_in_a_query_never_give_a_5xx(api: TestClient) -> None:
    # A percent-encoded surrogate is not UTF-8; the server decodes it to U+FFFD, storable text.
    assert api.put("/v1/runs/h", json=run_spec()).status_code == 201
    for url in ("/v1/runs?label=team:%ED%A0%80", "/v1/runs/h/decisions?action=%ED%A0%80",
                "/v1/runs?after=%ED%A0%80", "/v1/runs?label=%FF:%FE"):  # fmt: skip
        r = api.get(url)
        assert r.status_code in (200, 422), (url, r.text)
        strict_json(r.text)


def test_label_filters_are_capped_at_16(api: TestClient) -> None:
    labels = {f"k{i}": "v" for i in range(17)}
    assert api.put("/v1/runs/h", json=run_spec(labels=labels)).status_code == 201
    sixteen = "&".join(f"label=k{i}:v" for i in range(16))
    assert [r["run_id"] for r in api.get(f"/v1/runs?{sixteen}").json()["items"]] == ["h"]
    names(refused(api.get(f"/v1/runs?{sixteen}&label=k16:v")), "query", "label", word="16")
    many = "&".join(["label=k:v"] * 500)
    names(refused(api.get(f"/v1/runs?{many}")), "query", "label", word="16")


def test_an_error_never_echoes_a_large_input(api: TestClient) -> None:
    assert api.put("/v1/runs/h", json=run_spec()).status_code == 201
    big = "x" * 900_000  # under the body limit: the validation answers, and stays small
    for r in (
        send(api, "POST", "/v1/runs/h/observations", {"step": 1, "value": big}),
        send(api, "POST", "/v1/runs/h/observations", {"step": big, "value": 1.0}),
        send(api, "POST", "/v1/runs/h/observations", {"step": 1, "value": 1.0, big: 1}),
        send(api, "PUT", "/v1/runs/g", {**run_spec(), "labels": {"k": big}}),
        send(api, "PUT", "/v1/runs/g", {**run_spec(), "metric": big}),
        send(api, "PUT", "/v1/runs/g", {**run_spec(), "base_lrs": [0.1] * 100_000}),
        send(api, "PUT", "/v1/runs/g", run_spec({"flavor": big})),
    ):
        refused(r)
    assert api.get("/v1/runs/g").status_code == 404


def test_undecodable_bodies_are_422_naming_the_body(api: TestClient) -> None:
    assert api.put("/v1/runs/h", json=run_spec()).status_code == 201
    url = "/v1/runs/h/observations"
    for raw in (
        b'{"step": 1, "value": "\xff"}',  # not UTF-8
        b"[" * 100_000,  # nested past what a JSON parser recurses into
        b'{"step": 1' + b"0" * 5000 + b', "value": 1}',  # more digits than Python converts
    ):
        names(refused(api.post(url, content=raw, headers=JSON)), "body")
    assert strict_json(api.get("/v1/runs/h").text)["counts"]["decisions"] == 0


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [True, False, "0.2", "1e-3", None, [0.1], {"x": 1}])
def test_numbers_are_strict_in_base_lrs_and_float_params(api: TestClient, bad: Any) -> None:
    cases: list[tuple[dict[str, Any], tuple[str | int, ...], str | None]] = [
        (run_spec(base_lrs=[0.1, bad]), ("body", "base_lrs", 1), None),
    ]
    for param in ("factor", "threshold", "eps", "min_lr"):
        cases.append((run_spec({param: bad}), ("body", "policy", "params", param), None))
    cases.append((run_spec({"min_lr": [bad]}), ("body", "policy", "params", "min_lr"), None))
    for param in ("factor", "min_delta", "min_lr"):
        body = run_spec({"flavor": "keras", param: bad})
        cases.append((body, ("body", "policy", "params", param), None))
    for body, loc, word in cases:
        if bad == [0.1] and loc[-1] == "min_lr":
            continue  # a one-item list is a valid min_lr (one value per param group)
        names(refused(send(api, "PUT", "/v1/runs/h", body)), *loc, word=word)
    nothing_stored(api)


def test_json_ints_are_still_numbers(api: TestClient) -> None:
    params = {"threshold": 0, "eps": 0, "min_lr": [0, 0]}
    r = api.put("/v1/runs/h", json=run_spec(params, base_lrs=[1, 0]))
    assert r.status_code == 201, r.text
    run = strict_json(r.text)
    assert run["base_lrs"] == [1.0, 0.0] and run["policy"]["params"]["threshold"] == 0.0
    keras = api.put("/v1/runs/k", json=run_spec({"flavor": "keras", "min_delta": 0}))
    assert keras.status_code == 201, keras.text


# -- body size -----------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_with_a_small_answer(api: TestClient) -> None:
    body = json.dumps({**run_spec(), "metric": "m" * (2 * LIMIT)}).encode()
    r = api.put("/v1/runs/h", content=body, headers=JSON)
    assert r.status_code == 413 and len(r.content) < 500, (r.status_code, len(r.content))
    assert str(LIMIT) in strict_json(r.text)["detail"]
    nothing_stored(api)


def oversized_chunks() -> Iterator[bytes]:
    """A 2.5 MB observation from a generator: no Content-Length, the body is sent chunked."""
    yield b'{"step": 1, "value": "'
    for _ in range(40):
        yield b"x" * 65536
    yield b'"}'


def test_a_streamed_body_over_the_limit_is_413(api: TestClient) -> None:
    assert api.put("/v1/runs/h", json=run_spec()).status_code == 201
    r = api.post("/v1/runs/h/observations", content=oversized_chunks(), headers=JSON)
    assert r.status_code == 413 and len(r.content) < 500, (r.status_code, r.text[:200])
    assert str(LIMIT) in strict_json(r.text)["detail"]
    assert strict_json(api.get("/v1/runs/h").text)["counts"]["decisions"] == 0


def test_the_real_server_refuses_large_bodies_declared_or_streamed(
    backend_server: LiveServer,
) -> None:
    with httpx.Client(base_url=backend_server.url, timeout=30.0) as client:
        assert client.put("/v1/runs/h", json=run_spec()).status_code == 201
        url = "/v1/runs/h/observations"
        declared = b'{"step": 1, "value": "' + b"x" * (2 * LIMIT) + b'"}'
        r = client.post(url, content=declared, headers=JSON)
        assert r.status_code == 413 and len(r.content) < 500, (r.status_code, r.text[:200])
        r = client.post(url, content=oversized_chunks(), headers=JSON)
        assert r.status_code == 413 and len(r.content) < 500, (r.status_code, r.text[:200])
        # under the limit, chunked or not, the service answers as usual
        ok = client.post(url, content=iter([b'{"step": 1, ', b'"value": 0.5}']), headers=JSON)
        assert ok.status_code == 200, ok.text
        assert strict_json(client.get("/v1/runs/h").text)["counts"]["decisions"] == 1


# -- the document and HEAD -----------------------------------------------------------------


def test_head_answers_like_get_without_a_body(api: TestClient) -> None:
    assert api.put("/v1/runs/h", json=run_spec()).status_code == 201
    for url in ("/v1/runs", "/v1/runs/h", "/v1/runs/nope", "/v1/runs/h/lr", "/v1/policies",
                "/v1/runs/h/decisions?limit=0", "/healthz"):  # fmt: skip
        get, head = api.get(url), api.head(url)
        assert head.status_code == get.status_code, url
        assert head.content == b"", url
        assert head.headers["content-type"] == get.headers["content-type"], url
        assert head.headers["content-length"] == str(len(get.content)), url


def test_the_document_declares_every_refusal(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    operations = {
        (method, path): op for path, item in doc["paths"].items() for method, op in item.items()
    }
    for (method, path), op in operations.items():
        assert "413" in op["responses"], (method, path)
        if method == "get":
            assert ("head", path) in operations, path
        if path.startswith("/v1/runs"):
            for code in ("422", "503"):
                assert code in op["responses"], (method, path, code)
            assert "Retry-After" in op["responses"]["503"]["headers"]
        if "{run_id}" in path and method != "put":  # PUT creates the run
            assert "404" in op["responses"], (method, path)
    put, post = (
        operations["put", "/v1/runs/{run_id}"],
        operations["post", "/v1/runs/{run_id}/observations"],
    )
    assert {"200", "201", "409"} <= put["responses"].keys()
    assert "409" in post["responses"]
    item = doc["components"]["schemas"]["ValidationItem"]
    assert set(item["required"]) == {"loc", "msg", "type"}
