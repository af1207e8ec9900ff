"""Every released policy version, as GET /v1/policies shows it: a params JSON Schema with an
example that the policy itself takes, a golden file, and a run the service creates from it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lrpilot.policies import POLICIES
from tests.harness import GOLDEN_DIR

BASE_LRS = (0.1, 0.01)


@pytest.mark.parametrize("key", sorted(POLICIES))
def test_every_version_has_an_example_it_takes_and_a_golden_file(key: str) -> None:
    policy = POLICIES[key]
    schema = policy.params_schema()
    examples = schema.get("examples")
    assert examples, f"{key}: its params schema shows no example"
    for example in examples:
        policy.resolve(example, BASE_LRS)  # raises PolicyError if the example is refused
    assert (GOLDEN_DIR / f"{key}.jsonl").is_file(), f"{key} has no golden file"
    assert policy.description and policy.open_loop in (True, False)


def test_the_catalog_lists_them_all_and_each_example_makes_a_run(api: TestClient) -> None:
    items = api.get("/v1/policies").json()["items"]
    assert {f"{i['name']}@{i['version']}" for i in items} == set(POLICIES)
    for item in items:
        example = item["params_schema"]["examples"][0]
        spec = {
            "policy": {"name": item["name"], "version": item["version"], "params": example},
            "base_lrs": list(BASE_LRS),
        }
        r = api.put(f"/v1/runs/example-{item['name']}-{item['version']}", json=spec)
        assert r.status_code == 201, (item["name"], r.text)
        r = api.get(
            f"/v1/runs/example-{item['name']}-{item['version']}/lrs", params={"from": 0, "count": 5}
        )
        assert r.status_code == 200 and len(r.json()["lrs"]) == 5
