"""The dashboard in a real browser (Debian's chromium, offline: tests/chromium.py) against the
real service with tokens: log in, the runs list, a run's plot checked point by point and marker
by marker against its decision log, a reason on hover, verify (good, then a database row
edited), what-if, a live run gaining decisions, a guarded run's checkpoints, rollback and a
rank's disagreement marked as its log and summary say; an unauthenticated visitor and another
project's token see none of the runs. Any error in the browser's console fails the test.

One server and one browser for the module, in the order a person would go; the tests share the
browser's session cookie, so they run in this order (pytest keeps a file's order).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lrpilot.api.auth import COOKIE
from lrpilot.store.db import upgrade
from lrpilot_client.models import applied_hash
from tests.chromium import errors
from tests.harness import LiveServer
from tests.helpers import bearer, make_token, plateau_stream, run_spec

WAIT_S = 20  # a bound on a hang, not a claim about speed
RUNS = ("plain", "tampered", "live", "labelled")


@dataclass
class Site:
    url: str
    database: Path
    admin: str  # project alpha's admin token
    stranger: str  # project beta's reader token
    api: httpx.Client  # as alpha's admin

    def decisions(self, run_id: str, **query: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.api.get(
                f"/v1/runs/{run_id}/decisions", params={"after": after, "limit": 1000, **query}
            ).json()
            items += page["items"]
            if page["next"] is None:
                return items
            after = page["next"]


def observe(api: httpx.Client, run_id: str, stream: list[tuple[int, float]]) -> None:
    for step, value in stream:
        r = api.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    database = tmp_path_factory.mktemp("ui") / "ui.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    admin = make_token(url, "alpha", "admin", name="alice")
    stranger = make_token(url, "beta", "reader", name="bob")
    with (
        LiveServer(url) as server,
        httpx.Client(base_url=server.url, headers=bearer(admin), timeout=30) as api,
    ):
        for run_id in RUNS:
            labels = {"team": "vision"} if run_id == "labelled" else {}
            spec = run_spec(params={"patience": 2, "factor": 0.5}, labels=labels)
            stream = plateau_stream(12 if run_id == "live" else 40)
            if run_id == "labelled":  # an elastic job, resized halfway
                spec["scaling"] = {"rule": "linear", "by": "world_size", "base": 8}
            assert api.put(f"/v1/runs/{run_id}", json=spec).status_code == 201
            if run_id == "labelled":
                observe(api, run_id, stream[:20])
                resize = {"step": stream[20][0], "world_size": 16}
                assert api.post(f"/v1/runs/{run_id}/resize", json=resize).status_code == 200
                stream = stream[20:]
            observe(api, run_id, stream)
        aggregated = run_spec() | {"aggregate": {"timeout_s": 30, "on_timeout": "decide"}}
        assert api.put("/v1/runs/ranks", json=aggregated).status_code == 201
        with ThreadPoolExecutor(2) as pool:  # a step is decided once both ranks reported
            reports = [
                {"step": 10, "value": 0.5 + rank, "rank": rank, "world_size": 2, "weight": 1 + rank}
                for rank in (0, 1)
            ]
            posted = pool.map(lambda r: api.post("/v1/runs/ranks/observations", json=r), reports)
            assert all(r.status_code == 200 for r in posted)
        yield Site(server.url, database, admin, stranger, api)


@pytest.fixture(autouse=True)
def console_clean(browser: WebDriver) -> Iterator[None]:
    errors(browser)  # what an earlier module's pages logged is read and gone
    yield
    assert not errors(browser), "the page logged errors"


@pytest.fixture
def as_admin(browser: WebDriver, site: Site) -> None:
    """The browser holds project alpha's admin cookie (as the login test leaves it), so that a
    test also runs alone (``-k``)."""
    if browser.get_cookie(COOKIE) is None or not browser.current_url.startswith(site.url):
        browser.get(f"{site.url}/healthz")  # a cookie is set on the site it belongs to
        browser.add_cookie({"name": COOKIE, "value": site.admin, "path": "/", "httpOnly": True})
        errors(browser)  # that page's missing favicon


def until(browser: WebDriver, script: str, what: str) -> Any:
    """The value of ``script`` once it is truthy."""
    try:
        return WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(
            lambda d: d.execute_script(script)
        )
    except TimeoutException:
        pytest.fail(f"never {what}; the console: {browser.get_log('browser')}")


def text_of(browser: WebDriver, selector: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, selector).text)


def hover(browser: WebDriver, marker: dict[str, Any]) -> str:
    """The tooltip's text once the mouse is over ``marker`` (a marker of window.lrpilotPlot)."""
    over = browser.find_element(By.CSS_SELECTOR, "#chart .u-over")
    size = over.size
    ActionChains(browser).move_to_element_with_offset(
        over, int(marker["left"] - size["width"] / 2), int(marker["top"] - size["height"] / 2)
    ).perform()
    until(browser, "return !document.getElementById('tip').hidden", "showed a tooltip")
    return text_of(browser, "#tip")


def open_run(browser: WebDriver, site: Site, run_id: str) -> dict[str, Any]:
    """The run page, once its plot is drawn with the run's data: what the chart shows. A new
    document each time (a URL that differs only by its fragment would keep the old one)."""
    browser.get("about:blank")
    browser.get(f"{site.url}/ui/#/runs/{run_id}")
    until(browser, "return window.lrpilotReady === true", f"drew {run_id}")
    return dict(browser.execute_script("return window.lrpilotPlot"))


def log_in(browser: WebDriver, secret: str) -> None:
    """The login form (shown) filled with ``secret`` and sent."""
    browser.find_element(By.NAME, "token").send_keys(secret)
    browser.find_element(By.CSS_SELECTOR, "form#login button[type=submit]").click()


def fetch_status(browser: WebDriver, path: str) -> int:
    """The status the page's own fetch of ``path`` gets (with whatever cookie it holds)."""
    return int(
        browser.execute_async_script(
            "const done = arguments[1];"
            "fetch(new URL(arguments[0], location.href)).then(r => done(r.status));",
            path,
        )
    )


def test_an_unauthenticated_visitor_sees_the_login_and_no_runs(
    browser: WebDriver, site: Site
) -> None:
    browser.get(f"{site.url}/")
    until(browser, "return document.querySelector('form#login')", "showed the login")
    assert browser.current_url.startswith(f"{site.url}/ui/")
    assert not browser.find_elements(By.CSS_SELECTOR, "#runs")
    assert fetch_status(browser, "../v1/runs") == 401
    logged = errors(browser)  # whoami's 401 (nobody logged in) and the refused fetch above
    assert logged and all("status of 401" in e["message"] for e in logged), logged


def test_log_in_and_list_the_runs_by_activity(browser: WebDriver, site: Site) -> None:
    browser.get(f"{site.url}/ui/#/login")
    until(browser, "return document.querySelector('form#login')", "showed the login")
    errors(browser)  # whoami's 401: nobody is logged in yet
    log_in(browser, site.admin)
    until(
        browser,
        "return document.querySelectorAll('#runs tr[data-run]').length === 5",
        "listed the runs",
    )
    listed = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tr[data-run]'), r => r.dataset.run)"
    )
    assert listed == ["ranks", "labelled", "live", "tampered", "plain"]  # the last active first
    assert "alice" in text_of(browser, "#who") and "alpha" in text_of(browser, "#who")
    row = text_of(browser, "#runs tr[data-run=plain]")
    run = site.api.get("/v1/runs/plain").json()
    assert str(run["last_step"]) in row and f"{run['lrs'][0]:.4g}"[:5] in row
    # a sparkline drawn for each run: its canvas has ink
    until(
        browser,
        "return Array.from(document.querySelectorAll('canvas.spark')).every(c => "
        "c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v))",
        "drew every sparkline",
    )
    browser.get(f"{site.url}/ui/#/runs?label=team:vision")
    until(
        browser,
        "return document.querySelectorAll('#runs tr[data-run]').length === 1",
        "filtered by label",
    )
    assert text_of(browser, "#runs tbody").startswith("labelled")


def test_the_plot_is_the_decision_log(browser: WebDriver, site: Site, as_admin: None) -> None:
    shown = open_run(browser, site, "plain")
    log = site.decisions("plain", superseded="false")
    assert shown["x"] == [d["step"] for d in log]  # fewer decisions than points: one each
    assert shown["lr"][0] == [d["lrs"][0] for d in log]
    assert shown["metric"] == [d["value"] for d in log]
    changed = [d["seq"] for d in log if d["action"] != "hold"]
    assert changed and [m["seq"] for m in shown["markers"]] == changed
    browser.find_element(By.ID, "log-scale").click()  # the lr axis in log scale: same points
    logged = until(browser, "const p = window.lrpilotPlot; return p.log && p", "went log scale")
    assert logged["x"] == shown["x"] and [m["seq"] for m in logged["markers"]] == changed


def test_a_resize_is_marked_with_its_world_size(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    shown = open_run(browser, site, "labelled")
    scale = next(d for d in site.decisions("labelled") if d["action"] == "scale")
    event = next(e for e in shown["events"] if e["seq"] == scale["seq"])
    assert event["resize"]["by"] == "world_size" and event["resize"]["to"] == 16
    assert scale["seq"] in [m["seq"] for m in shown["markers"]]


def test_hovering_a_marker_reads_its_reason_and_a_click_opens_the_decision(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    shown = open_run(browser, site, "plain")
    marker = shown["markers"][0]
    decision = next(d for d in site.decisions("plain") if d["seq"] == marker["seq"])
    assert decision["reason"] in hover(browser, marker)
    ActionChains(browser).click().perform()
    until(browser, "return document.getElementById('decision-json')", "opened the decision")
    whole = text_of(browser, "#decision-json")
    assert decision["hash"] in whole and decision["prev_hash"] in whole


def test_verify_a_good_run_then_one_whose_row_was_edited(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    for run_id, good in (("tampered", True), ("tampered", False)):
        if not good:  # an entry's stored bytes changed behind the service's back
            with sqlite3.connect(site.database) as db:
                db.execute(
                    'UPDATE decisions SET body = replace(body, \'"reason":"\', '
                    '\'"reason":"edited: \') WHERE run_id = ? AND seq = 7',
                    (run_id,),
                )
        open_run(browser, site, run_id)
        browser.find_element(By.ID, "verify").click()
        badge = until(
            browser,
            "const b = document.getElementById('verify-badge');"
            "return (b.classList.contains('good') || b.classList.contains('bad')) && b",
            "showed the badge",
        )
        head = site.api.get(f"/v1/runs/{run_id}").json()
        if good:
            assert "good" in badge.get_attribute("class").split()
            assert f"verified through seq {head['last_seq']}" in badge.text
            assert head["head_hash"][:16] in badge.text
        else:
            assert "bad" in badge.get_attribute("class").split()
            assert "seq 7" in badge.text, badge.text


def submitted(
    browser: WebDriver, site: Site, run_id: str, params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The what-if form, as filled, sent: the overlay it drew, and what POST /v1/simulate
    answers for the run under ``params`` (the params the form should have sent)."""
    browser.find_element(By.CSS_SELECTOR, "#whatif-form button[type=submit]").click()
    overlay = until(browser, "return window.lrpilotPlot.whatif", "overlaid the what-if")
    run = site.api.get(f"/v1/runs/{run_id}").json()["policy"]
    policy = {"name": run["name"], "version": run["version"], "params": params}
    expected = site.api.post("/v1/simulate", json={"run_id": run_id, "policy": policy}).json()
    return overlay, expected


def test_what_if_overlays_its_lr_and_lists_where_decisions_differ(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    open_run(browser, site, "plain")
    until(
        browser, "return document.querySelector('#whatif-form [name=patience]')", "built the form"
    )
    patience = browser.find_element(By.CSS_SELECTOR, "#whatif-form [name=patience]")
    assert patience.get_attribute("value") == "2"  # the run's own value
    patience.clear()
    patience.send_keys("0")
    params = {**site.api.get("/v1/runs/plain").json()["policy"]["params"], "patience": 0}
    overlay, expected = submitted(browser, site, "plain", params)
    assert overlay["x"] == [i["step"] for i in expected["items"]]
    assert overlay["lr"][0] == [i["lrs"][0] for i in expected["items"]]
    assert expected["differing"] > 0
    assert f"differ at {expected['differing']} steps" in text_of(browser, "#whatif-summary")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#whatif-differ tbody tr")) == min(
        200, expected["differing"]
    )


def test_what_if_of_a_groups_run_changes_one_groups_params_in_the_form(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    """groups@1's params are a list of groups: the form shows it as JSON, filled with the run's
    resolved groups; one group's params edited there are what the what-if replays."""
    cosine = {"name": "cosine", "version": 1, "params": {"T_max": 400}}
    plateau = {"name": "plateau", "version": 1, "params": {"patience": 2, "factor": 0.5}}
    groups = [{"name": "backbone", "policy": cosine}, {"name": "head", "policy": plateau}]
    spec = {
        "policy": {"name": "groups", "version": 1, "params": {"groups": groups}},
        "base_lrs": [0.01, 0.1],
        "metric": "val_loss",
    }
    if site.api.put("/v1/runs/groups", json=spec).status_code == 201:
        observe(site.api, "groups", plateau_stream(40))
    open_run(browser, site, "groups")
    until(browser, "return document.querySelector('#whatif-form [name=groups]')", "built the form")
    box = browser.find_element(By.CSS_SELECTOR, "#whatif-form [name=groups]")
    shown = json.loads(box.get_attribute("value") or "")
    stored = site.api.get("/v1/runs/groups").json()["policy"]["params"]["groups"]
    assert shown == stored and [g["name"] for g in shown] == ["backbone", "head"]
    shown[1]["policy"]["params"]["patience"] = 0
    browser.execute_script("arguments[0].value = arguments[1]", box, json.dumps(shown))
    overlay, expected = submitted(browser, site, "groups", {"groups": shown})
    assert overlay["lr"] == [[i["lrs"][g] for i in expected["items"]] for g in (0, 1)]
    assert expected["differing"] > 0
    assert f"differ at {expected['differing']} steps" in text_of(browser, "#whatif-summary")


def test_a_live_run_gains_decisions_without_a_reload(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    shown = open_run(browser, site, "live")
    browser.execute_script("window.notReloaded = true")
    more = plateau_stream(20)[12:]
    observe(site.api, "live", more)
    last = more[-1][0]
    until(browser, f"return window.lrpilotPlot.x.includes({last})", "drew the new decisions")
    until(
        browser,
        f"return document.querySelector('#decisions tbody').textContent.includes('{last}')",
        "listed the new decisions",
    )
    assert browser.execute_script("return window.notReloaded") is True
    assert len(browser.execute_script("return window.lrpilotPlot.x")) > len(shown["x"])


def test_an_aggregated_step_lists_each_ranks_report_and_weight(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    open_run(browser, site, "ranks")
    row = until(browser, "return document.querySelector('#decisions tr[data-seq]')", "listed it")
    row.click()
    until(browser, "return document.getElementById('decision-ranks')", "listed the ranks")
    cells = browser.execute_script(
        "const t = document.getElementById('decision-ranks');"
        "const keys = Array.from(t.querySelectorAll('th'), th => th.textContent);"
        "return Array.from(t.querySelectorAll('tbody tr'), tr => Object.fromEntries("
        "Array.from(tr.children, (td, i) => [keys[i], td.textContent])));"
    )
    assert [(c["rank"], c["value"], c["weight"]) for c in cells] == [
        ("0", "0.5", "1"),
        ("1", "1.5", "2"),
    ]


def test_the_policies_page_shows_and_plots_each_version(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    versions = site.api.get("/v1/policies").json()["items"]
    browser.get(f"{site.url}/ui/#/policies")
    until(
        browser,
        f"return document.querySelectorAll('section.policy .uplot').length === {len(versions)}",
        "plotted every example",
    )
    for p in versions:
        section = text_of(browser, f"#policy-{p['name']}-{p['version']}")
        assert p["description"][:40] in section


def test_zoom_asks_for_the_range_pan_moves_it_and_a_double_click_shows_the_whole_run(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    whole = open_run(browser, site, "plain")
    over = browser.find_element(By.CSS_SELECTOR, "#chart .u-over")
    width = over.size["width"]
    # drag across the second quarter of the plot: uPlot's drag-zoom
    drag = ActionChains(browser).move_to_element_with_offset(over, -width // 4, 0)
    drag.click_and_hold().move_by_offset(width // 4, 0).release().perform()
    zoomed = until(
        browser,
        f"const p = window.lrpilotPlot; return p.range.from > {whole['range']['from']} && p",
        "asked for the zoomed range",
    )
    lo, hi = zoomed["range"]["from"], zoomed["range"]["to"]
    assert whole["x"][0] < lo < hi < whole["x"][-1]
    inside = [d for d in site.decisions("plain", superseded="false") if lo <= d["step"] <= hi]
    assert zoomed["x"] == [d["step"] for d in inside]
    browser.find_element(By.ID, "pan-later").click()  # pan: half a window on, same width
    panned = until(
        browser,
        f"const p = window.lrpilotPlot; return p.range.from > {lo} && p",
        "asked for the range half a window later",
    )
    assert panned["range"]["to"] - panned["range"]["from"] == hi - lo
    assert panned["range"]["from"] == lo + (hi - lo) // 2
    ActionChains(browser).double_click(over).perform()
    until(
        browser,
        f"return window.lrpilotPlot.range.from === {whole['range']['from']}",
        "asked for the whole run again",
    )
    assert browser.execute_script("return window.lrpilotPlot.x") == whole["x"]


def test_an_admin_rewinds_after_confirming_and_the_old_branch_is_drawn_faded(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    open_run(browser, site, "live")
    steps = [d["step"] for d in site.decisions("live", superseded="false")]
    to_step = steps[len(steps) // 2]
    browser.find_element(By.ID, "rewind-step").send_keys(str(to_step))
    browser.find_element(By.ID, "rewind").click()
    alert = WebDriverWait(browser, WAIT_S).until(lambda d: d.switch_to.alert)
    assert f"to step {to_step}" in alert.text
    alert.accept()
    shown = until(
        browser,
        "const p = window.lrpilotPlot; return p.superseded.length && p",
        "drew the superseded branch",
    )
    assert max(shown["x"]) == to_step  # the live branch ends where the job resumes
    rewinds = [d for d in site.decisions("live") if d["action"] == "rewind"]
    assert len(rewinds) == 1 and rewinds[0]["rewind"]["to_step"] == to_step
    assert rewinds[0]["seq"] in [m["seq"] for m in shown["markers"]]


@pytest.fixture(scope="module")
def tokens_run(site: Site) -> str:
    """A run clocked in tokens (made before the test's browser fixtures, as the others are)."""
    spec = run_spec(params={"patience": 1}) | {"clock": "tokens"}
    assert site.api.put("/v1/runs/tokens", json=spec).status_code == 201
    observe(site.api, "tokens", [(k * 2**30, 1.0 + k % 3) for k in range(1, 9)])
    return "tokens"


def test_a_run_clocked_in_tokens_is_plotted_against_tokens(
    browser: WebDriver, site: Site, tokens_run: str, as_admin: None
) -> None:
    shown = open_run(browser, site, tokens_run)
    assert shown["xLabel"] == "tokens" and shown["x"][-1] == 8 * 2**30
    legend = text_of(browser, "#chart .u-legend")  # (the axes' labels are drawn, not text)
    assert legend.startswith("tokens") and "step" not in legend, legend
    assert text_of(browser, "#last-step").endswith("(tokens)")
    assert open_run(browser, site, "plain")["xLabel"] == "step"


@pytest.fixture(scope="module")
def guarded_run(site: Site) -> str:
    """A guarded run with two checkpoints, a spike rolled back to the second, and two ranks
    acknowledging step 50: rank 0 the run's lrs, rank 1 others (a disagreement)."""
    guard = {"on": ["nan", "spike"], "spike": {"rule": "ratio", "ratio": 3.0}}
    spec = run_spec(params={"patience": 5}) | {"guard": guard}
    assert site.api.put("/v1/runs/guarded", json=spec).status_code == 201
    for step, value, ref in ((10, 1.0, None), (20, 0.9, "ckpt/step-20.pt"),
                             (30, 0.8, "ckpt/step-30.pt"), (40, 5.0, None)):  # fmt: skip
        observe(site.api, "guarded", [(step, value)])
        if ref is not None:
            r = site.api.post("/v1/runs/guarded/checkpoints", json={"step": step, "ref": ref})
            assert r.status_code == 201, r.text
    observe(site.api, "guarded", [(40, 0.7), (50, 0.6)])  # the branch after the rollback
    at = site.api.get("/v1/runs/guarded/lr", params={"step": 50}).json()
    for rank, lrs in ((0, at["lrs"]), (1, [x * 2 for x in at["lrs"]])):
        ack = {"rank": rank, "world_size": 2, "step": 50, "seq": at["seq"],
               "lrs_hash": applied_hash(50, at["seq"], lrs)}  # fmt: skip
        assert site.api.post("/v1/runs/guarded/applied", json=ack).status_code == 200
    return "guarded"


def test_checkpoints_rollbacks_and_disagreements_are_marked_on_the_plot(
    browser: WebDriver, site: Site, guarded_run: str, as_admin: None
) -> None:
    shown = open_run(browser, site, guarded_run)
    marked = {(m["action"], m["step"], m["seq"]) for m in shown["markers"]}
    log = site.decisions(guarded_run)
    checkpoints = site.decisions(guarded_run, superseded="false", action="checkpoint")
    assert [d["checkpoint"]["ref"] for d in checkpoints] == ["ckpt/step-20.pt", "ckpt/step-30.pt"]
    rollbacks = [d for d in log if d["action"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == 40
    for d in [*checkpoints, *rollbacks]:
        assert (d["action"], d["step"], d["seq"]) in marked, d
    # one marker each: the plot's own checkpoint events are not drawn a second time
    assert sorted(m["step"] for m in shown["markers"] if m["action"] == "checkpoint") == [20, 30]
    summary = site.api.get(f"/v1/runs/{guarded_run}/summary").json()
    (bad,) = summary["agreement"]["disagreements"]
    assert bad["rank"] == 1 and ("disagreement", 50, bad["seq"]) in marked

    # the rollback's hover: its trigger, value and checkpoint
    tip = hover(browser, next(m for m in shown["markers"] if m["action"] == "rollback"))
    assert "rollback at step 40" in tip and "spike" in tip and "ckpt/step-30.pt" in tip, tip

    # the summary's lines beside the plot
    assert text_of(browser, "#checkpoints").startswith("checkpoints 2")
    assert "rollbacks 1" in text_of(browser, "#rollbacks")
    assert "ckpt/step-30.pt (step 30)" in text_of(browser, "#rollbacks")
    agreement = text_of(browser, "#agreement")
    assert "2 of 2 ranks" in agreement and "rank 1 at step 50" in agreement, agreement
    assert open_run(browser, site, "plain")["markers"] and not browser.find_elements(
        By.CSS_SELECTOR, "#guard-facts span"
    )


def test_another_projects_token_sees_none_of_the_runs(
    browser: WebDriver, site: Site, as_admin: None
) -> None:
    browser.get("about:blank")  # a new document: nothing of a run page still polls
    browser.get(f"{site.url}/ui/#/runs")
    until(browser, "return !document.getElementById('logout').hidden", "offered the logout")
    until(browser, "return document.querySelectorAll('#runs tr[data-run]').length", "listed runs")
    browser.find_element(By.ID, "logout").click()
    until(browser, "return document.querySelector('form#login')", "showed the login")
    log_in(browser, site.stranger)
    until(
        browser,
        "return document.querySelector('#runs tbody')?.textContent === 'No runs.'",
        "listed no runs",
    )
    assert "bob" in text_of(browser, "#who")
    assert fetch_status(browser, "../v1/runs/plain") == 404
    logged = errors(browser)  # whoami's 401 once logged out, and the refused fetch above
    assert logged and all(
        "status of 404" in e["message"] or "whoami" in e["message"] for e in logged
    ), [e["message"] for e in logged]
