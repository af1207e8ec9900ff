"""A policy per param group (groups@1): eight groups on eight policies against one group.

    python bench/bench_groups.py [--observations 100000] [--requests 300] [--repeat 5]
        [--out bench/results/<name>.json]

Two runs of eight param groups (the same eight base lrs), the same stream (bench/common.py's
``metric_value``: a loss that falls slowly under noise, so the plateau groups reduce now and
then):

  1 group     groups@1 with one group: cosine@1 over the eight param groups
  8 groups    groups@1 with eight groups on eight policies (cosine, plateau@1, linear,
              one_cycle, plateau@2, exponential, wsd, step; the golden log's eight-group line,
              scripts/make_golden_groups.py), one param group each

Timed, one after the other in each of ``--repeat`` passes:

  advance     the replay's hot loop (``lrpilot.replay.Replay``): one ``advance()`` an
              observation, ``--observations`` of them, µs each; with, for scale, the eight
              policies each run alone over the same stream (the sum: the work the eight groups
              do, so "8 groups / 8 alone" is what the composite adds)
  HTTP        ``POST /v1/runs/{id}/observations`` one after another (one connection, keep-alive)
              to a real ``lrpilot serve`` on a fresh SQLite file (tests.harness.LiveServer), a
              new run each pass, ``--requests`` observations, ms each: a decision's whole path

Each row reports the median pass (and the range over passes); each ratio (8 groups / 1 group,
and 8 groups / the eight policies alone) is the median of the passes' own ratios
(docs/performance.md: the target is within 2x).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import httpx

from common import (
    REPO_DIR,
    command_line,
    console,
    figures_table,
    machine_info,
    metric_value,
    print_header,
    servers_line,
    spread_cell,
    timed_bench_parser,
    write_result,
)
from lrpilot.policies import Policy, get_policy
from lrpilot.replay import Replay
from tests.harness import LiveServer, sqlite_server

sys.path.insert(0, str(REPO_DIR / "scripts"))
from make_golden_groups import EIGHT  # the eight policies, written once

BASE_LRS = (0.1, 0.05, 0.02, 0.01, 0.1, 0.3, 0.003, 0.2)
GROUPS = get_policy("groups", 1)


ONE: dict[str, Any] = {"groups": [{"name": "all", "policy": EIGHT[0], "param_groups": 8}]}
EIGHT_GROUPS: dict[str, Any] = {
    "groups": [{"name": f"g{i}", "policy": p} for i, p in enumerate(EIGHT)]
}


def advance_seconds(
    policy: Policy, params: dict[str, Any], base: tuple[float, ...], stream: list[tuple[int, float]]
) -> float:
    replay = Replay(policy, policy.resolve(params, base), base, "val_loss")
    advance = replay.stepper.advance
    start = time.perf_counter()
    for step, value in stream:
        advance(step, value)
    return time.perf_counter() - start


def alone_seconds(stream: list[tuple[int, float]]) -> float:
    """The eight policies, each over the stream alone: the work the eight groups do."""
    total = 0.0
    for ref, lr in zip(EIGHT, BASE_LRS, strict=True):
        policy = get_policy(ref["name"], ref["version"])
        total += advance_seconds(policy, ref["params"], (lr,), stream)
    return total


def http_seconds(server: LiveServer, run_id: str, params: dict[str, Any], n: int) -> float:
    spec = {"policy": {"name": "groups", "version": 1, "params": params}, "base_lrs": BASE_LRS}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.put(f"/v1/runs/{run_id}", json=spec).status_code == 201
        url = f"/v1/runs/{run_id}/observations"
        http.post(url, json={"step": 0, "value": 1.0})  # the run's first read, not timed
        start = time.perf_counter()
        for step in range(1, n + 1):
            r = http.post(url, json={"step": step, "value": metric_value(1, step)})
            assert r.status_code == 200, r.text
        return time.perf_counter() - start


def row(seconds: list[float], calls: int, unit: float) -> dict[str, Any]:
    per = [s / calls * unit for s in seconds]
    return {"median": statistics.median(per), "min": min(per), "max": max(per), "passes": per}


def main(argv: list[str] | None = None) -> int:
    parser = timed_bench_parser(__doc__ or "", repeat=5)
    parser.add_argument("--observations", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    if args.observations < 1 or args.requests < 1 or args.repeat < 1:
        parser.error("--observations, --requests and --repeat take a positive count")
    info = machine_info()
    print_header(info, servers_line(info))
    stream = [(step, metric_value(1, step)) for step in range(1, args.observations + 1)]
    one, eight = ONE, EIGHT_GROUPS
    timed: dict[str, list[float]] = {k: [] for k in ("adv1", "adv8", "alone", "http1", "http8")}
    with sqlite_server("bench-groups") as srv:
        for n in range(args.repeat):
            timed["adv1"].append(advance_seconds(GROUPS, one, BASE_LRS, stream))
            timed["adv8"].append(advance_seconds(GROUPS, eight, BASE_LRS, stream))
            timed["alone"].append(alone_seconds(stream))
            timed["http1"].append(http_seconds(srv, f"one-{n}", one, args.requests))
            timed["http8"].append(http_seconds(srv, f"eight-{n}", eight, args.requests))
    rows = {
        "advance_1_group_us": row(timed["adv1"], args.observations, 1e6),
        "advance_8_groups_us": row(timed["adv8"], args.observations, 1e6),
        "advance_8_policies_alone_us": row(timed["alone"], args.observations, 1e6),
        "http_1_group_ms": row(timed["http1"], args.requests, 1e3),
        "http_8_groups_ms": row(timed["http8"], args.requests, 1e3),
    }

    # each pass times both runs back to back: the median of the passes' ratios is steadier
    # than a ratio of medians on a machine whose load drifts
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(timed[a], timed[b], strict=True))

    ratios = {
        "advance_8_over_1": ratio("adv8", "adv1"),
        "advance_8_over_alone": ratio("adv8", "alone"),
        "http_8_over_1": ratio("http8", "http1"),
    }
    table = figures_table(
        f"groups@1: {args.observations} advance()s and {args.requests} POSTs a pass, "
        f"{args.repeat} passes",
        ["what", "median", "range"],
    )
    for name, r in rows.items():
        unit = "µs" if name.endswith("_us") else "ms"
        table.add_row(
            name.rsplit("_", 1)[0].replace("_", " "),
            f"{r['median']:.2f} {unit}",
            spread_cell(r["min"], r["max"], args.repeat),
        )
    console.print(table)
    for name, ratio in ratios.items():
        console.print(f"{name.replace('_', ' ')}: {ratio:.2f}")
    write_result(
        args.out,
        "groups",
        {
            "info": info,
            "command": command_line("bench_groups.py", argv),
            "rows": rows,
            "ratios": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
