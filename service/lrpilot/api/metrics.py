"""``GET /metrics``: the service's counters in Prometheus' text format (docs/operations.md,
"Metrics and logs", lists every metric with its labels).

Each app has a registry of its own (never prometheus-client's global one: the tests build many
apps in one process). The request counters and histograms are updated as requests end
(``lrpilot.api.observe``); everything else is read at scrape time from plain counters the
layers below keep (``Store.stats``, ``Waiters``, ``Audit``, ``Authenticator.refusals``), so the
observation path pays nothing for them but an integer increment.

Label values are bounded: a route is its path template (``/v1/runs/{run_id}``, never the raw
path), a method outside HTTP's usual ones is ``OTHER``, a policy is a released version, a
reason or cause one of a fixed list.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF

from lrpilot import __version__
from lrpilot.api.auth import REFUSALS, Authenticator, Peer, Refused, is_local
from lrpilot.api.models import Message
from lrpilot.api.observe import noted
from lrpilot.api.responses import UNAVAILABLE
from lrpilot.domain.logs import Audit
from lrpilot.domain.waiting import Waiters
from lrpilot.store.runs import Store

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# seconds: a decision takes about a millisecond; a long poll or an aggregated rank up to minutes
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, INF,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, INF)

# No ``_created`` series: a timestamp beside each counter, twice the lines of a scrape for what
# the counters' resets already tell (prometheus-client's switch is per process).
disable_created_metrics()  # type: ignore[no-untyped-call]

router = APIRouter(tags=["health"])


class Metrics:
    """An app's registry, its request metrics and the group commit's batch sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "lrpilot_requests",
            "HTTP requests answered, by method, route (its path template) and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "lrpilot_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batches = Histogram(
            "lrpilot_commit_batch_size",
            "Observations decided in one transaction of the group commit",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        # the label children, looked up once: labels() takes a lock and builds a tuple
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            label = method if method in METHODS else "OTHER"
            children = self._children[key] = (
                self._requests.labels(label, route, str(status)),
                self._latency.labels(label, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def batch(self, size: int) -> None:
        self._batches.observe(size)

    def read_from(self, store: Store, waiters: Waiters, audit: Audit, auth: Authenticator) -> None:
        """Register what is read at each scrape from the layers' own counters."""
        self.registry.register(_Counts(store, waiters, audit, auth))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Counts(Collector):
    def __init__(self, store: Store, waiters: Waiters, audit: Audit, auth: Authenticator) -> None:
        self._store = store
        self._waiters = waiters
        self._audit = audit
        self._auth = auth

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("lrpilot_info", "The service's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        retries, unavailable, entries = self._store.stats.snapshot()
        decisions = CounterMetricFamily(
            "lrpilot_decisions",
            "Log entries committed by this process, by policy (name@version) and action (a "
            "policy's decision, or rewind, or scale)",
            labels=["policy", "action"],
        )
        for (policy, action), count in sorted(entries.items()):
            decisions.add_metric([policy, action], count)
        yield decisions
        yield CounterMetricFamily(
            "lrpilot_db_retries",
            "Write transactions run again after another writer won a race",
            value=retries,
        )
        refused = CounterMetricFamily(
            "lrpilot_db_unavailable",
            "Database calls answered 503 (Unavailable), by cause: timeout (the bounded wait "
            "ended), locked, pool (no connection free), retries (bounded retries spent), "
            "unreachable, disk_full",
            labels=["cause"],
        )
        for cause, count in sorted(unavailable.items()):
            refused.add_metric([cause], count)
        yield refused
        readers, steps, ranks = self._waiters.waiting()
        yield GaugeMetricFamily(
            "lrpilot_longpoll_waiters", "Readers waiting in a long poll (GET .../lr?wait)", readers
        )
        yield GaugeMetricFamily(
            "lrpilot_aggregated_steps_waiting",
            "Aggregated steps with ranks waiting here for the other ranks' reports",
            steps,
        )
        yield GaugeMetricFamily(
            "lrpilot_aggregated_ranks_waiting",
            "Ranks waiting here for their step's decision",
            ranks,
        )
        yield CounterMetricFamily(
            "lrpilot_aggregated_steps_timed_out",
            "Aggregated steps decided at their deadline (on_timeout) by a rank waiting here",
            value=self._waiters.steps_timed_out,
        )
        yield CounterMetricFamily(
            "lrpilot_export_bytes", "Bytes of bundles exported", value=self._audit.exported_bytes
        )
        yield CounterMetricFamily(
            "lrpilot_import_bytes",
            "Bytes of bundles imported (stored, or found already stored)",
            value=self._audit.imported_bytes,
        )
        failures = CounterMetricFamily(
            "lrpilot_auth_failures",
            "Requests refused by authentication (401) or authorization (403), by reason",
            labels=["status", "reason"],
        )
        for (status, reason), count in sorted(self._auth.refusals.items()):
            failures.add_metric([str(status), reason], count)
        yield failures


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus' text format"},
        401: REFUSALS[401],  # reader
        403: {
            "model": Message,
            "description": "loopback: not from this machine; reader: a token below reader",
        },
        **UNAVAILABLE,  # reader: the token is looked up
    },
)
async def metrics(request: Request) -> Response:
    """The service's metrics. Who may scrape them: ``LRPILOT_METRICS_ACCESS``, ``loopback``
    (requests from this machine, the default) or ``reader`` (any token of role reader or
    above; in open mode, this machine)."""
    # async on purpose: the waiters are read on the event loop, which alone changes them
    peer = Peer.of(request)
    if request.app.state.settings.metrics_access == "reader":
        auth: Authenticator = request.app.state.auth
        caller = await auth.authorize(request.headers.get("authorization"), "reader", peer)
        noted(request.scope, caller.name, caller.project)
    elif not is_local(peer.address) or not peer.addressed_here():
        raise Refused(
            403,
            "the metrics are served to this machine only, addressed to it (localhost or an "
            "address; LRPILOT_METRICS_ACCESS=loopback: set it to reader to let reader tokens "
            "scrape from elsewhere)",
            "remote",
        )
    body = request.app.state.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
