"""A bundle checked in regions by several processes says what one process says of it.

``lrpilot verify`` splits a long log among processes (``lrpilot.audit.parallel``), each region
starting from the entry before it as written, proven by the region before. Its report must be
the one-process report, whatever was done to the file, and most of all where the regions meet:
an edit of the entry a region starts from, a line deleted or repeated across a boundary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lrpilot.audit.bundle import MAX_LINE_BYTES
from lrpilot.audit.parallel import _plan, check_bundle_file
from lrpilot.audit.verify import BundleCheck
from tests.api.audit_calls import edit_reason, edit_value
from tests.conftest import app_client
from tests.domain.test_entries import rehashed

RUN = "regions"
Edit = Callable[[list[str], int], list[str]]


def exported(api: TestClient, run_id: str, spec: dict, count: int) -> list[str]:
    assert api.put(f"/v1/runs/{run_id}", json=spec).status_code == 201
    for i in range(1, count + 1):
        value: float | str = 1.0 / (1 + i // 7) if i != 3 else "NaN"  # plateaus, a NaN
        body = {"step": 10 * i, "value": value}
        if i % 5 == 0:
            body["client"] = {"host": f"gpu-{i}", "rank": 0}
        assert api.post(f"/v1/runs/{run_id}/observations", json=body).status_code == 200
    return api.get(f"/v1/runs/{run_id}/export").text.splitlines()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Logs exported by the service, which is then stopped: a process with threads (a
    server's) starts verifying processes the slow way (spawn), one without forks them."""
    database = tmp_path_factory.mktemp("regions") / "lrpilot.db"
    spec: dict = {
        "policy": {"name": "plateau", "version": 1, "params": {"patience": 2}},
        "base_lrs": [0.1, 0.02],
        "metric": "val_loss",
    }
    with app_client(f"sqlite:///{database}") as api:
        found = {"plain": exported(api, RUN, spec, 48)}
        spec["policy"]["params"]["patience"] = 1
        exported(api, "rewound", spec, 20)
        assert api.post("/v1/runs/rewound/rewind", json={"to_step": 100}).status_code == 200
        for step in (110, 120):
            api.post("/v1/runs/rewound/observations", json={"step": step, "value": 0.5})
        found["rewound"] = api.get("/v1/runs/rewound/export").text.splitlines()
        scaling = {"rule": "linear", "by": "world_size", "base": 1}
        found["scaled"] = exported(api, "scaled", {**spec, "scaling": scaling}, 20)
        # decisions, and after every fourth three checkpoints (one declared late)
        assert api.put("/v1/runs/saved", json=spec).status_code == 201
        for i in range(1, 41):
            api.post("/v1/runs/saved/observations", json={"step": 10 * i, "value": 1.0 / i})
            if i % 4:
                continue
            for step, ref in ((10 * i, "a"), (10 * i, "b"), (10 * i - 5, "late")):
                body = {"step": step, "ref": f"{ref}-{step}"}
                assert api.post("/v1/runs/saved/checkpoints", json=body).status_code == 201
        found["checkpointed"] = api.get("/v1/runs/saved/export").text.splitlines()
        # an operator's entries where the log stood, before any decision and between them
        wsd = {"num_warmup_steps": 20}  # no planned decay: a cooldown ends it
        cooled = {"policy": {"name": "wsd", "version": 1, "params": wsd}, "base_lrs": [0.1]}
        assert api.put("/v1/runs/cooled", json=cooled).status_code == 201
        cosine = {"policy": {"name": "cosine", "version": 1, "params": {"T_max": 400}}}
        assert api.put("/v1/runs/retimed", json={**cosine, "base_lrs": [0.1]}).status_code == 201
        asked = {"at_step": 5, "horizon": 600, "mode": "keep_fraction"}
        assert api.post("/v1/runs/retimed/retime", json=asked).status_code == 200
        for i in range(1, 41):
            for run_id in ("cooled", "retimed"):
                body = {"step": 10 * i, "value": 1.0 / i}
                api.post(f"/v1/runs/{run_id}/observations", json=body)
            if i == 20:
                asked = {"at_step": 205, "horizon": 800, "mode": "keep_lr"}
                assert api.post("/v1/runs/retimed/retime", json=asked).status_code == 200
                asked = {"at_step": 300, "steps": 100}
                assert api.post("/v1/runs/cooled/cooldown", json=asked).status_code == 200
        for run_id in ("cooled", "retimed"):
            found[run_id] = api.get(f"/v1/runs/{run_id}/export").text.splitlines()
    with app_client(f"sqlite:///{database.with_name('continued.db')}") as api:
        imported = api.post("/v1/runs/import", content="\n".join(found["plain"]) + "\n")
        assert imported.status_code == 201, imported.text
        for i in range(49, 61):
            api.post(f"/v1/runs/{RUN}/observations", json={"step": 10 * i, "value": 0.1})
        found["continued"] = api.get(f"/v1/runs/{RUN}/export").text.splitlines()
    return found


@pytest.fixture(scope="module")
def lines(logs: dict[str, list[str]]) -> list[str]:
    return logs["plain"]


def written(tmp_path: Path, lines: list[str], name: str = "bundle.ndjson") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def both(path: Path, workers: int) -> tuple[BundleCheck, BundleCheck]:
    one = check_bundle_file(path, workers=1)
    # fork asked for: pytest -n runs a thread beside the tests, where regions would not fork
    split = check_bundle_file(path, workers=workers, parallel_from=0, method="fork")
    return one, split


def same(one: BundleCheck, split: BundleCheck) -> None:
    assert split.report.as_dict() == one.report.as_dict()
    for member in ("state", "lrs", "scale", "reductions", "count", "head_hash", "last_step"):
        assert getattr(split.report, member) == getattr(one.report, member), member
    assert split.lines == one.lines
    assert split.end == one.end


def boundaries(path: Path, workers: int) -> list[int]:
    """The indexes (0: the header) of the lines the regions of ``workers`` begin at."""
    plan = _plan(path, path.stat().st_size, workers, MAX_LINE_BYTES)
    assert plan is not None
    data = path.read_bytes()
    return [data[:start].count(b"\n") for start in plan.starts[1:]]


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_a_good_log_split_says_what_one_process_says(
    lines: list[str], tmp_path: Path, workers: int
) -> None:
    path = written(tmp_path, lines)
    one, split = both(path, workers)
    assert one.ok, one.report.mismatch
    same(one, split)
    assert split.regions == workers and one.regions == 1
    assert split.report.reductions > 0 and split.report.count == len(lines) - 2


def _edit(fn: Callable[[str], str]) -> Edit:
    return lambda ls, k: [*ls[:k], fn(ls[k]), *ls[k + 1 :]]


EDITS: dict[str, Edit] = {
    "value edited": _edit(edit_value),
    "value edited, rehashed": _edit(lambda line: rehashed(edit_value(line))),
    "reason edited, rehashed": _edit(lambda line: rehashed(edit_reason(line))),
    "deleted": lambda ls, k: [*ls[:k], *ls[k + 1 :]],
    "repeated": lambda ls, k: [*ls[: k + 1], *ls[k:]],
    "swapped with the next": lambda ls, k: [*ls[:k], ls[k + 1], ls[k], *ls[k + 2 :]],
    "a blank line before": lambda ls, k: [*ls[:k], "", *ls[k:]],
    "a trailer before": lambda ls, k: [*ls[:k], ls[-1], *ls[k:]],
    "cut after it": lambda ls, k: ls[: k + 1],
    "not JSON": _edit(lambda line: line[:-3]),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_where_regions_meet_is_found_as_one_process_finds_it(
    lines: list[str], tmp_path: Path, edit: str
) -> None:
    path = written(tmp_path, lines)
    for workers in (3,):
        where = {1, len(lines) - 2}  # the first and the last entry
        for k in boundaries(path, workers):
            where |= {k - 1, k, k + 1}
        for k in sorted(where):
            edited = written(tmp_path, EDITS[edit](lines, k), f"{edit}-{workers}-{k}.ndjson")
            one, split = both(edited, workers)
            assert one.ok == (edit == "a blank line before"), (edit, k)  # blanks: skipped
            same(one, split)


def test_a_continued_import_is_checked_in_regions_as_in_one(
    logs: dict[str, list[str]], tmp_path: Path
) -> None:
    log = logs["continued"]
    assert "imported" in json.loads(log[-1])["end"]
    one, split = both(written(tmp_path, log), 4)
    assert one.ok and split.regions == 4
    same(one, split)
    for k in (47, 48, 49, 50):  # about the entry the imported trailer names
        edited = written(tmp_path, EDITS["value edited, rehashed"](log, k), f"c{k}.ndjson")
        same(*both(edited, 4))


def test_the_trailer_edited_or_an_entry_signed_off_are_found_alike(
    lines: list[str], tmp_path: Path
) -> None:
    end = json.loads(lines[-1])
    end["end"]["count"] += 1
    path = written(tmp_path, [*lines[:-1], json.dumps(end, separators=(",", ":"))])
    one, split = both(path, 3)
    assert not one.ok and "trailer" in str(one.report.mismatch)
    same(one, split)
    one, split = both(written(tmp_path, lines, "good.ndjson"), 3)
    assert one.ok
    wrong_head = check_bundle_file(path, head="0" * 64, workers=3, parallel_from=0, method="fork")
    assert not wrong_head.ok


def test_a_log_with_a_rewind_or_a_scaling_rule_is_checked_in_one_process(
    logs: dict[str, list[str]], tmp_path: Path
) -> None:
    for name in ("rewound", "scaled"):
        log = logs[name]
        path = written(tmp_path, log, f"{name}.ndjson")
        one, split = both(path, 3)
        assert one.ok, one.report.mismatch
        same(one, split)
        assert split.regions == 1, name
        bad = written(tmp_path, EDITS["value edited"](log, 5), f"{name}-bad.ndjson")
        same(*both(bad, 3))


def test_a_region_is_never_seeded_from_a_checkpoint_nor_a_guarded_log_split(
    logs: dict[str, list[str]], tmp_path: Path
) -> None:
    """A checkpoint entry does not say the run's last decided step: a region that would begin
    after one makes the log one for a single process (the same verdict, edits included); a
    region with checkpoints inside it is checked as one process checks it. A guarded run's
    rollback goes back to a checkpoint far before it: its log is never split."""
    log = logs["checkpointed"]
    path = written(tmp_path, log, "checkpointed.ndjson")
    seeded = split_at = None
    for workers in range(2, 9):
        seeds = [log[k] for k in boundaries(path, workers)]
        if any('"action":"checkpoint"' in line for line in seeds):
            seeded = workers
        elif split_at is None:
            split_at = workers
    assert seeded is not None and split_at is not None
    one, split = both(path, seeded)
    assert one.ok, one.report.mismatch
    same(one, split)
    assert split.regions == 1
    one, split = both(path, split_at)
    same(one, split)
    assert split.regions == split_at
    bad = written(tmp_path, EDITS["value edited"](log, 9), "checkpointed-bad.ndjson")
    same(*both(bad, seeded))

    golden = Path(__file__).resolve().parents[1] / "golden" / "bundles" / "guard.ndjson"
    one, split = both(golden, 3)
    assert one.ok and split.ok and split.regions == 1
    same(one, split)


def test_a_region_is_never_seeded_from_a_cooldown_or_a_retime(
    logs: dict[str, list[str]], tmp_path: Path
) -> None:
    """A cooldown or a retime stands where the log stood, a step it does not decide (step 0
    before any decision): a region after one is not seeded from it, and every split of such a
    log says what one process says."""
    for name, action in (("cooled", "start_cooldown"), ("retimed", "retime")):
        log = logs[name]
        path = written(tmp_path, log, f"{name}.ndjson")
        seeded = False
        for workers in range(2, 17):
            seeded |= any(f'"action":"{action}"' in log[k] for k in boundaries(path, workers))
            one, split = both(path, workers)
            assert one.ok, one.report.mismatch
            same(one, split)
        assert seeded, f"no split of {name} begins after its {action}"


def test_the_cli_verifies_with_workers_and_says_the_same(lines: list[str], tmp_path: Path) -> None:
    from tests.helpers import lrpilot_cli

    path = written(tmp_path, lines)
    bad = written(tmp_path, EDITS["value edited, rehashed"](lines, 20), "bad.ndjson")
    for workers in ("1", "3"):
        good = lrpilot_cli("verify", str(path), "-j", workers, "--json")
        assert good.exit_code == 0 and json.loads(good.output)["ok"]
        failed = lrpilot_cli("verify", str(bad), "-j", workers, "--json")
        assert failed.exit_code == 1
        assert json.loads(failed.output)["mismatch"]["seq"] == 20
    refused = lrpilot_cli("verify", str(path), "-j", "0")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
