"""A run's plot at a screen's resolution (GET /v1/runs/{run_id}/plot): the database reduces the
log to buckets of steps, so that what leaves it is O(points), never the whole log.

Per bucket of steps of the live branch: the min and max of each param group's lr (the lrs in
force after each entry) and of the metric (finite values only); per superseded branch (a run
of consecutive seqs that a rewind superseded), the same over its own steps; and every entry
that changed something, whole (the markers): every entry but ``hold``, except that a phase
repeating its action step after step (warmup, decay, a stopped run's every stop) is one
marker where it begins. A reduce is a marker each time, and so are rewinds and resizes.

The reduction is SQL over the ``(project, run_id, superseded, step)`` index: it reads each
entry of the range once, in the database, with its JSON functions (SQLite's json1,
PostgreSQL's jsonb). A long run (``CACHED_FROM`` entries) keeps its tiles in the process
(``Tiles``: the same reduction over blocks of steps at a few widths, and its markers), caught
up with the entries appended since at each plot, which answer any range from a few tiles a
bucket (bench/bench_plot.py measures both). Those tiles come from the database's own
(``fold``, ``cut``: tables plot_tiles and plot_marks, written with the entries a ``CHUNK`` of
seqs at a time and cut back by a rewind, in the writer's transaction), read a level at a time
as plots need it, plus the entries after the last chunk: a process's first plot of a long run
(after a start, after a rewind) never reads its whole log (bench/bench_ui.py, cold). The
buckets' floats are the database's reading of the stored numbers; the markers are the entries
themselves.
"""

from __future__ import annotations

import json
import threading
from typing import Any, NamedTuple

import sqlalchemy as sa

from lrpilot.canonical import parse_float
from lrpilot.entries import NOT_DECISIONS
from lrpilot.policies.base import MAX_STEP
from lrpilot.store.db import renew
from lrpilot.store.records import RunKey
from lrpilot.store.runs import _RUN, _param

MAX_GROUPS = 64  # param groups a plot draws (a run may have up to 1,024: the first 64)
MAX_BRANCHES = 20  # superseded branches drawn (the newest)
# an action that is a marker every time it comes, even twice in a row
_ALWAYS = ("reduce", *NOT_DECISIONS)


class _Rows(list[Any]):
    """A statement's rows, read as SQLAlchemy's results are (one, first, all)."""

    def one(self) -> Any:
        assert len(self) == 1
        return self[0]

    def first(self) -> Any:
        return self[0] if self else None

    def all(self) -> list[Any]:
        return list(self)


def _sql(conn: sa.Connection, statement: str, params: Any) -> _Rows:
    """Run ``statement`` (placeholders already the driver's) on the driver's cursor, in the
    transaction the connection is in, whoever began it: the store's write paths drive theirs
    on the driver itself (store.runs.WriteTx), the plot's reads through SQLAlchemy. A list of
    tuples runs it once each."""
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        if isinstance(params, list):
            cursor.executemany(statement, params)
            return _Rows()
        cursor.execute(statement, params)
        return _Rows(cursor.fetchall() if cursor.description is not None else [])
    finally:
        cursor.close()


def _columns(conn: sa.Connection, groups: int) -> tuple[str, str]:
    """The per-entry select list (each group's lr as lr0.., the metric as metric) and the
    source it reads (a WHERE clause to fill in). Each entry's body is parsed once: into jsonb
    (PostgreSQL), or by one json_extract of the lrs and the value together (SQLite, whose
    json functions parse their argument at each call); OFFSET 0 keeps the planner from
    pulling the parse up into every expression that uses it."""
    if conn.dialect.name == "postgresql":
        lrs = [f"(j -> 'lrs' ->> {i})::float8" for i in range(groups)]
        metric = "CASE WHEN jsonb_typeof(j -> 'value') = 'number' THEN (j ->> 'value')::float8 END"
        source = (
            "(SELECT seq, step, action, body::jsonb AS j FROM decisions WHERE {where} OFFSET 0) e"
        )
    else:
        lrs = [f"json_extract(x, '$[0][{i}]')" for i in range(groups)]
        metric = (
            "CASE WHEN json_type(x, '$[1]') IN ('real', 'integer') THEN json_extract(x, '$[1]') END"
        )
        source = (
            "(SELECT seq, step, action, json_extract(body, '$.lrs', '$.value') AS x FROM decisions "
            "WHERE {where} LIMIT -1 OFFSET 0) e"
        )
    named = [f"{e} AS lr{i}" for i, e in enumerate(lrs)]
    return ", ".join([*named, f"{metric} AS metric"]), source


# a branch's entries (superseded = ?) of a run in a range of steps
_RANGE = f"{_RUN} AND superseded = ? AND step >= ? AND step <= ?"
# a branch's entries in a range of seqs (after, through]: a range of the primary key
_SEQS = f"{_RUN} AND superseded = ? AND seq > ? AND seq <= ?"


def _selected(conn: sa.Connection, groups: int, where: str) -> tuple[str, str, str]:
    """``_columns`` for the entries ``where`` picks: the select list, the names it gives
    (lr0.., metric) and the source."""
    values, source = _columns(conn, groups)
    names = ", ".join([*(f"lr{i}" for i in range(groups)), "metric"])
    return values, names, source.format(where=where)


def _bucket_doc(row: Any, groups: int, first: int) -> dict[str, Any]:
    # row: (bucket, [island,] step_lo, step_hi, count, lr_min.., lr_max.., metric_min, metric_max)
    values = row[first:]
    return {
        "step_lo": int(values[0]),
        "step_hi": int(values[1]),
        "count": int(values[2]),
        "lr_min": [float(v) for v in values[3 : 3 + groups]],
        "lr_max": [float(v) for v in values[3 + groups : 3 + 2 * groups]],
        "metric_min": None if values[3 + 2 * groups] is None else float(values[3 + 2 * groups]),
        "metric_max": None if values[4 + 2 * groups] is None else float(values[4 + 2 * groups]),
    }


def extent(conn: sa.Connection, run: RunKey) -> tuple[int | None, int | None]:
    """The lowest and highest step of the run's entries, either branch (four index probes)."""
    one = "(SELECT {f}(step) FROM decisions WHERE " + _RUN + " AND superseded = ?)"
    statement = "SELECT " + ", ".join(
        one.format(f=f) for f in ("min", "min", "max", "max")
    )  # one aggregate a subquery: each is an index probe on both databases
    params = (*run, False, *run, True, *run, False, *run, True)
    row = _sql(conn, _param(conn, statement), params).one()
    lows = [v for v in row[:2] if v is not None]
    highs = [v for v in row[2:] if v is not None]
    return (min(lows) if lows else None, max(highs) if highs else None)


def aligned_width(first: int, last: int, points: int, at_least: int = 1) -> int:
    """The narrowest bucket width (``at_least`` or more) whose buckets, aligned on its
    multiples, cover ``first``..``last`` in at most ``points`` buckets."""
    width = max(at_least, -(-(last - first + 1) // points))
    while last // width - first // width + 1 > points:
        width += max(1, width // 64)
    return width


def _aggregates(groups: int) -> str:
    return ", ".join(
        [
            "min(step)",
            "max(step)",
            "count(*)",
            *(f"min(lr{i})" for i in range(groups)),
            *(f"max(lr{i})" for i in range(groups)),
            "min(metric)",
            "max(metric)",
        ]
    )


def superseded_branches(
    conn: sa.Connection, run: RunKey, groups: int, width: int, first: int, last: int
) -> tuple[list[dict[str, Any]], bool]:
    """What rewinds superseded, in steps ``first``..``last``: each run of consecutive seqs
    (seq minus its rank among them is constant) in its own buckets; the newest
    ``MAX_BRANCHES``, and whether there were more."""
    values, names, inner = _selected(conn, groups, _RANGE)
    rows = _sql(
        conn,
        _param(
            conn,
            f"SELECT island, b, {_aggregates(groups)}, min(seq), max(seq) FROM (SELECT seq - "
            "ROW_NUMBER() OVER (ORDER BY seq) AS island, step / ? AS b, seq, step, "
            f"{names} FROM (SELECT seq, step, {values} FROM {inner}) v) w "
            "GROUP BY island, b ORDER BY island, b",
        ),
        (width, *run, True, first, last),
    ).all()
    branches: dict[int, dict[str, Any]] = {}
    for row in rows:
        branch = branches.setdefault(
            int(row[0]), {"from_seq": int(row[-2]), "to_seq": int(row[-1]), "buckets": []}
        )
        branch["from_seq"] = min(branch["from_seq"], int(row[-2]))
        branch["to_seq"] = max(branch["to_seq"], int(row[-1]))
        branch["buckets"].append(_bucket_doc(row[:-2], groups, 2))
    kept = sorted(branches.values(), key=lambda b: b["from_seq"])
    return kept[-MAX_BRANCHES:], len(kept) > MAX_BRANCHES


def plot(
    conn: sa.Connection,
    run: RunKey,
    groups: int,
    points: int,
    first: int,
    last: int,
    max_events: int,
) -> dict[str, Any]:
    """The plot of steps ``first``..``last`` in at most ``points`` buckets a branch, all of it
    reduced by the database (``Tiles`` answers a long run's without reading it again)."""
    groups = min(groups, MAX_GROUPS)
    width = aligned_width(first, last, points)
    buckets = live_buckets(conn, run, groups, width, first, last)[0]
    events, truncated = events_between(conn, run, first, last, max_events)
    return answer(run, first, last, width, groups, buckets, events, truncated, conn, points)


def answer(
    run: RunKey,
    first: int,
    last: int,
    width: int,
    groups: int,
    buckets: list[dict[str, Any]],
    events: list[dict[str, Any]],
    truncated: bool,
    conn: sa.Connection,
    points: int,
) -> dict[str, Any]:
    """The document GET /plot answers (the superseded branches read here)."""
    superseded, more = superseded_branches(conn, run, groups, width, first, last)
    for bucket in buckets:
        bucket.pop("k", None)
    return {
        "run_id": run.run_id,
        "from_step": first,
        "to_step": last,
        "bucket_steps": width,
        "groups": groups,
        "buckets": buckets,
        "events": events,
        "truncated_events": truncated,
        "superseded": superseded,
        "truncated_superseded": more,
    }


def events_between(
    conn: sa.Connection,
    run: RunKey,
    first: int,
    last: int,
    max_events: int,
    through: int = MAX_STEP,
) -> tuple[list[dict[str, Any]], bool]:
    """The live branch's markers of steps ``first``..``last``, oldest first, at most
    ``max_events`` (and whether there were more). The entry before the range is read too:
    whether the first one in it begins a phase or goes on with one."""
    always = ", ".join("?" for _ in _ALWAYS)
    live = f"{_RUN} AND superseded = ? AND seq <= {int(through)}"
    rows = _sql(
        conn,
        _param(
            conn,
            "SELECT d.body FROM (SELECT seq, step, action, LAG(action) OVER (ORDER BY seq) "
            f"AS prev FROM decisions WHERE {live} AND step <= ? AND step >= COALESCE(("
            f"SELECT max(step) FROM decisions WHERE {live} AND step < ?), ?)) t "
            "JOIN decisions d ON d.project = ? AND d.run_id = ? AND d.seq = t.seq "
            "WHERE t.step >= ? AND t.action <> 'hold' AND (t.prev IS NULL OR t.action <> "
            f"t.prev OR t.action IN ({always})) ORDER BY t.seq LIMIT ?",
        ),
        (*run, False, last, *run, False, first, first, *run, first, *_ALWAYS, max_events + 1),
    ).all()
    events = [event_of(json.loads(body)) for (body,) in rows[:max_events]]
    return events, len(rows) > max_events


def event_of(doc: dict[str, Any]) -> dict[str, Any]:
    """An entry as a marker."""
    value = doc.get("value")
    event = {
        "seq": doc["seq"],
        "step": doc["step"],
        "action": doc["action"],
        "reason": doc["reason"],
        "lrs": doc["lrs"],
        "previous_lrs": doc["previous_lrs"],
        "metric": None if value is None else parse_float(value),
    }
    # a resize's sizes (world size), a rewind's target, a cooldown's start and length, a
    # retime's step, horizon and mode
    for extra in ("resize", "rewind", "cooldown", "retime"):
        if extra in doc:
            event[extra] = doc[extra]
    return event


def is_marker(action: str, previous: str | None) -> bool:
    """Whether an entry of ``action`` after one of ``previous`` is a marker (the rule the
    events' statement applies)."""
    return action != "hold" and (previous is None or action != previous or action in _ALWAYS)


# -- a long run's plot without reading it again ---------------------------------------------

CACHED_FROM = 4096  # entries: a run this long keeps its tiles (shorter ones are read anew)
MAX_CACHED_RUNS = 8
MAX_BASE_TILES = 1 << 16  # finest tiles a run keeps, at most (wider ones when it needs more)
MAX_CACHED_EVENTS = 20_000  # a run with more markers reads them anew each time
MAX_NEW_ROWS = 20_000  # entries appended since the tiles were made: more, they are made again
TILE_ENTRIES = 16  # entries a finest tile holds, on average, when the tiles are made
SLICE_TILES_LOG2 = 12  # a first plot reads the log 2**12 finest tiles' steps a statement
LEVEL_STEP = 2  # each level's tiles are 2**LEVEL_STEP times as wide as the level below's


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Fold bucket ``other`` into bucket ``into`` (min, max, count)."""
    into["step_lo"] = min(into["step_lo"], other["step_lo"])
    into["step_hi"] = max(into["step_hi"], other["step_hi"])
    into["count"] += other["count"]
    into["lr_min"] = [min(a, b) for a, b in zip(into["lr_min"], other["lr_min"], strict=True)]
    into["lr_max"] = [max(a, b) for a, b in zip(into["lr_max"], other["lr_max"], strict=True)]
    for key, pick in (("metric_min", min), ("metric_max", max)):
        if other[key] is not None:
            into[key] = other[key] if into[key] is None else pick(into[key], other[key])


def _copy(bucket: dict[str, Any]) -> dict[str, Any]:
    return {**bucket, "lr_min": list(bucket["lr_min"]), "lr_max": list(bucket["lr_max"])}


def _entry_bucket(doc: dict[str, Any], groups: int) -> dict[str, Any]:
    """One entry as a bucket of its own (what the database's reduction makes of it)."""
    lrs = [float(v) for v in doc["lrs"][:groups]]
    value = doc.get("value")
    metric = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        metric = float(value)  # a non-finite metric is a string: no extreme
    return {"step_lo": doc["step"], "step_hi": doc["step"], "count": 1, "lr_min": lrs,
            "lr_max": list(lrs), "metric_min": metric, "metric_max": metric}  # fmt: skip


def live_buckets(
    conn: sa.Connection,
    run: RunKey,
    groups: int,
    width: int,
    first: int,
    last: int,
    through: int = MAX_STEP,
    before: str | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """The live branch's entries of steps ``first``..``last`` (and seqs through ``through``)
    in buckets of ``width`` steps aligned on its multiples (bucket k: steps k*width ..), each
    with its index ``k``; and the seqs of the markers among them, found in the same pass
    (``before``: the action of the live entry before ``first``; None: none)."""
    where = f"{_RANGE} AND seq <= {int(through)}"
    return _reduced(conn, run, groups, width, where, (False, first, last), before)


def _reduced(
    conn: sa.Connection,
    run: RunKey,
    groups: int,
    width: int,
    where: str,
    params: tuple[Any, ...],
    before: str | None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """The entries ``where`` picks (it names the run first, then takes ``params``) in
    buckets of ``width`` steps, and the seqs of the markers among them."""
    values, names, inner = _selected(conn, groups, where)
    always = ", ".join("?" for _ in _ALWAYS)
    seqs = (
        "string_agg(CAST(mark AS TEXT), ',')"
        if conn.dialect.name == "postgresql"
        else "group_concat(mark)"
    )
    rows = _sql(
        conn,
        _param(
            conn,
            f"SELECT b, {_aggregates(groups)}, {seqs} FROM (SELECT step / ? AS b, step, "
            f"{names}, CASE WHEN action <> 'hold' AND (prev IS NULL OR action <> prev OR "
            f"action IN ({always})) THEN seq END AS mark FROM (SELECT seq, step, action, "
            "COALESCE(LAG(action) OVER (ORDER BY seq), ?) AS prev, "
            f"{values} FROM {inner}) v) w GROUP BY b ORDER BY b",
        ),
        (width, *_ALWAYS, before, *run, *params),
    ).all()
    marks = sorted(int(m) for row in rows if row[-1] for m in str(row[-1]).split(","))
    return [{"k": int(row[0]), **_bucket_doc(row[:-1], groups, 1)} for row in rows], marks


def _bodies(conn: sa.Connection, run: RunKey, seqs: list[int]) -> list[dict[str, Any]]:
    """The entries of those seqs, parsed, in seq order (a few hundred a statement)."""
    docs: list[dict[str, Any]] = []
    for at in range(0, len(seqs), 500):
        part = seqs[at : at + 500]
        marks = ", ".join("?" for _ in part)
        rows = _sql(
            conn,
            _param(
                conn, f"SELECT body FROM decisions WHERE {_RUN} AND seq IN ({marks}) ORDER BY seq"
            ),
            (*run, *part),
        ).all()
        docs += [json.loads(body) for (body,) in rows]
    return docs


class RunTiles:
    """A run's live branch through ``seq``, in tiles: level ``base`` holds buckets of
    2**base steps (keyed by step >> base), each level above 2**LEVEL_STEP times wider; and
    its markers (None: too many to keep). Entries after ``seq`` are folded in as they come;
    a rewind among them makes the tiles anew (``Tiles``).

    With ``tiled`` (not 0), the database's tiles (``PlotTileRow``) hold the entries of seqs
    through it: a level is read from them when a plot first needs it, with the finest tiles
    of the entries after it (``tail``, kept here) folded in."""

    def __init__(
        self,
        groups: int,
        base: int,
        top: int,
        seq: int,
        last_action: str | None,
        tiled: int = 0,
    ) -> None:
        self.groups = groups
        self.base = base
        self.top = top  # the widest level kept (a few tiles span the run)
        self.seq = seq
        self.last_action = last_action
        self.tiled = tiled
        self.tail: dict[int, dict[str, Any]] = {}
        self.levels: dict[int, dict[int, dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] | None = []
        self._loading = threading.Lock()

    def add_tile(self, level: int, key: int, bucket: dict[str, Any]) -> None:
        _add(self.levels.setdefault(level, {}), key, bucket)

    def fold(self, bucket: dict[str, Any], step: int) -> None:
        """Fold a bucket of one finest tile (its step ``step``) into every level (read from
        the database's tiles: the tail and the levels read so far)."""
        with self._loading:  # a level read meanwhile takes it from the tail, or has it
            if self.tiled:
                _add(self.tail, step >> self.base, bucket)
                levels: Any = list(self.levels)
            else:
                levels = range(self.base, self.top + 1, LEVEL_STEP)
            for level in levels:
                self.add_tile(level, step >> level, bucket)

    def level_for(self, width_log2: int) -> int:
        """The widest level whose tiles fit in buckets of 2**width_log2 steps."""
        return min(self.top, self.base + (width_log2 - self.base) // LEVEL_STEP * LEVEL_STEP)

    def load(self, conn: sa.Connection, run: RunKey, level: int) -> None:
        """Read ``level`` from the database's tiles, if it is not here yet (``conn`` sees
        them as of the seq ``tiled``)."""
        if not self.tiled:
            return
        with self._loading:
            if level in self.levels:
                return
            tiles = {int(row[0]): _tile_bucket(row[1:]) for row in _tile_rows(conn, run, level)}
            for key, bucket in self.tail.items():
                _add(tiles, key >> (level - self.base), bucket)
            self.levels[level] = tiles

    def build_levels(self) -> None:
        """Each level above the finest from the one below (its tiles made, the others not)."""
        for level in range(self.base + LEVEL_STEP, self.top + 1, LEVEL_STEP):
            self.levels[level] = {}
            for key, tile in self.levels.get(level - LEVEL_STEP, {}).items():
                self.add_tile(level, key >> LEVEL_STEP, tile)

    def add_entry(self, doc: dict[str, Any]) -> None:
        self.fold(_entry_bucket(doc, self.groups), doc["step"])
        if self.events is not None and is_marker(doc["action"], self.last_action):
            self.events.append(event_of(doc))
            if len(self.events) > MAX_CACHED_EVENTS:
                self.events = None
        self.last_action = doc["action"]
        self.seq = doc["seq"]

    def buckets(self, width_log2: int, first: int, last: int) -> list[dict[str, Any]]:
        """Buckets of 2**width_log2 steps aligned on its multiples, from ``first >>
        width_log2`` to ``last >> width_log2``, from the widest level that fits. A bucket at
        an edge may hold entries outside ``first``..``last`` (its step_lo, step_hi say so:
        the caller reads those again)."""
        level = self.level_for(width_log2)
        tiles = self.levels.get(level, {})
        shift = width_log2 - level
        out: dict[int, dict[str, Any]] = {}
        for key in range(first >> level, (last >> level) + 1):  # 2**shift tiles a bucket
            tile = tiles.get(key)
            if tile is None:
                continue
            k = key >> shift
            known = out.get(k)
            if known is None:
                out[k] = {"k": k, **_copy(tile)}
            else:
                _merge(known, tile)
        return [out[k] for k in sorted(out)]


class Plotted(NamedTuple):
    """The run a plot reads, as it stands in the plot's snapshot: its key, how many param groups
    the plot draws, its last seq and the steps its log spans."""

    run: RunKey
    groups: int
    last_seq: int
    span: tuple[int, int]


class Tiles:
    """The tiles of the long runs this process was asked to plot (``MAX_CACHED_RUNS``, the
    least recently plotted dropped first). A cache: it holds nothing the log does not, is
    made on the first plot of a run from the database's tiles and the entries after them (a
    run without tiles there, from one reduction of its whole live branch) and kept up with
    the log by reading only the entries appended since (their seqs: an index range); a rewind
    among them, or a chunk added to the database's tiles, makes it anew. Each replica keeps
    its own."""

    def __init__(self) -> None:
        self._runs: dict[RunKey, RunTiles] = {}
        self._lock = threading.Lock()
        # one maker of a run's tiles at a time: two first plots of it read its log once
        self._making: dict[RunKey, threading.Lock] = {}

    def plot(
        self, conn: sa.Connection, log: Plotted, points: int, first: int, last: int, max_events: int
    ) -> dict[str, Any]:
        log = log._replace(groups=min(log.groups, MAX_GROUPS))
        run, groups = log.run, log.groups
        tiles = self._current(conn, log)
        width_log2 = max(0, (-(-(last - first + 1) // points) - 1).bit_length())
        while (last >> width_log2) - (first >> width_log2) + 1 > points:
            width_log2 += 1
        if tiles is None or width_log2 < tiles.base:
            return plot(conn, run, groups, points, first, last, max_events)  # a short range
        width = 1 << width_log2
        tiles.load(conn, run, tiles.level_for(width_log2))
        buckets = {b["k"]: b for b in tiles.buckets(width_log2, first, last)}
        for k in sorted({first >> width_log2, last >> width_log2}):  # the edges
            edge = buckets.get(k)
            if edge is not None and (edge["step_lo"] < first or edge["step_hi"] > last):
                del buckets[k]  # entries beyond the range: its part inside read again
                lo, hi = max(first, k << width_log2), min(last, ((k + 1) << width_log2) - 1)
                for b in live_buckets(conn, run, groups, width, lo, hi)[0]:
                    buckets[b["k"]] = b
        if tiles.events is None:
            events, truncated = events_between(conn, run, first, last, max_events)
        else:
            inside = [e for e in tiles.events if first <= e["step"] <= last]
            events, truncated = inside[:max_events], len(inside) > max_events
        ordered = [buckets[k] for k in sorted(buckets)]
        return answer(run, first, last, width, groups, ordered, events, truncated, conn, points)

    def _current(self, conn: sa.Connection, log: Plotted) -> RunTiles | None:
        """The run's tiles through its last seq (None: a run too short to keep them)."""
        run, last_seq = log.run, log.last_seq
        if last_seq < CACHED_FROM:
            return None
        with self._lock:
            if len(self._making) > 4 * MAX_CACHED_RUNS:
                self._making = {k: v for k, v in self._making.items() if v.locked()}
            making = self._making.setdefault(run, threading.Lock())
        with making:
            with self._lock:
                tiles = self._runs.pop(run, None)
            if tiles is not None and (
                tiles.groups != log.groups or tiles.tiled not in (0, tiled_through(last_seq))
            ):
                tiles = None  # not this run's, or the database's tiles moved on: read anew
            elif tiles is not None and tiles.seq < last_seq:
                tiles = self._caught_up(conn, run, tiles, last_seq)
            # (tiles ahead of last_seq: another plot caught them up since it read the head)
            if tiles is None:
                tiles = self._made(conn, log)
            with self._lock:
                self._runs[run] = tiles
                while len(self._runs) > MAX_CACHED_RUNS:
                    self._runs.pop(next(iter(self._runs)))
            return tiles

    def _caught_up(
        self, conn: sa.Connection, run: RunKey, tiles: RunTiles, last_seq: int
    ) -> RunTiles | None:
        rows = _sql(
            conn,
            _param(
                conn,
                f"SELECT seq, action, superseded, body FROM decisions WHERE {_RUN} AND seq > ? "
                "AND seq <= ? ORDER BY seq LIMIT ?",
            ),
            (*run, tiles.seq, last_seq, MAX_NEW_ROWS + 1),
        ).all()
        if len(rows) > MAX_NEW_ROWS or any(r[1] == "rewind" or r[2] for r in rows):
            return None  # a rewind moved the live branch back: made anew
        for _, _, _, body in rows:
            tiles.add_entry(json.loads(body))
        return tiles

    def _made(self, conn: sa.Connection, log: Plotted) -> RunTiles:
        run, groups, last_seq, (low, high) = log
        tiled = tiled_through(last_seq)
        base = tile_base(conn, run) if tiled else None
        if base is None:  # tiles of its own, from the whole log
            tiled = 0
            base = max(0, ((high - low + 1) * TILE_ENTRIES // max(1, last_seq)).bit_length() - 1)
            while (high - low + 1) >> base > MAX_BASE_TILES:  # the memory a run's tiles take
                base += 1
        # the widest level: a few tiles span the run, and 16 times its steps still
        top = base + -(-(max(1, high).bit_length() + 4 - base) // LEVEL_STEP) * LEVEL_STEP
        tiles = RunTiles(groups, base, top, last_seq, None, tiled)
        if tiled:  # the database's tiles through tiled; the entries after them read here
            before = action_before(conn, run, tiled)
            buckets, more = _reduced(
                conn, run, groups, 1 << base, _SEQS, (False, tiled, last_seq), before
            )
            for bucket in buckets:
                _add(tiles.tail, bucket.pop("k"), bucket)
            stored = _sql(
                conn,
                _param(conn, f"SELECT seq FROM plot_marks WHERE {_RUN} ORDER BY seq LIMIT ?"),
                (*run, MAX_CACHED_EVENTS + 1),
            ).all()
            marks: list[int] | None = [int(seq) for (seq,) in stored] + more
        else:
            marks = self._read_whole(conn, run, tiles, low, high, last_seq)
        if marks is not None and len(marks) > MAX_CACHED_EVENTS:
            marks = None
        tiles.events = None if marks is None else [event_of(d) for d in _bodies(conn, run, marks)]
        action = _sql(
            conn,
            _param(conn, f"SELECT action FROM decisions WHERE {_RUN} AND seq = ?"),
            (*run, last_seq),
        ).first()
        tiles.last_action = None if action is None else str(action[0])
        return tiles

    @staticmethod
    def _read_whole(
        conn: sa.Connection, run: RunKey, tiles: RunTiles, low: int, high: int, last_seq: int
    ) -> list[int] | None:
        """Every level of ``tiles`` from the log through ``last_seq`` (a run without tiles in
        the database); the seqs of its markers (None: too many to keep)."""
        base = tiles.base
        # A slice of steps a statement: each short, and the call's deadline renewed after
        # each (the database keeps answering meanwhile).
        width = 1 << (base + SLICE_TILES_LOG2)
        marks: list[int] | None = []
        before: str | None = None
        for start in range(low - low % width, high + 1, width):
            buckets, more = live_buckets(
                conn, run, tiles.groups, 1 << base, start, start + width - 1, last_seq, before
            )
            for bucket in buckets:
                tiles.add_tile(base, bucket.pop("k"), bucket)
            if buckets:  # the last live entry's action so far: the next slice's "before"
                found = _sql(
                    conn,
                    _param(
                        conn,
                        f"SELECT action FROM decisions WHERE {_RUN} AND superseded = ? AND "
                        f"step <= ? AND seq <= {int(last_seq)} ORDER BY step DESC, seq DESC "
                        "LIMIT 1",
                    ),
                    (*run, False, start + width - 1),
                ).first()
                before = None if found is None else str(found[0])
            if marks is not None:
                marks = marks + more if len(marks) + len(more) <= MAX_CACHED_EVENTS else None
            renew()
        tiles.build_levels()
        return marks


# -- a long run's tiles in the database ------------------------------------------------------
#
# What makes a long run's first plot in a process (after a start, after a rewind) cheap: the
# tiles and markers of its live branch kept in the database (tables.PlotTileRow, PlotMarkRow),
# written by the store where entries are written, CHUNK seqs at a time: the append (or import
# batch) that writes seq k*CHUNK folds in the live entries of seqs (k-1)*CHUNK+1..k*CHUNK, in
# its transaction; a rewind cuts them back to its step there too. So they always hold the live
# entries of seqs through ``tiled_through(last_seq)``, read in the plot's snapshot with it.

CHUNK = 1024  # seqs folded into the database's tiles at a time
TOP_LEVEL = 70  # the levels kept: base, base + LEVEL_STEP, ... below this (any RunTiles.top)
_TILE_COLUMNS = "step_lo, step_hi, count, lr_min, lr_max, metric_min, metric_max"


def tiled_through(last_seq: int) -> int:
    """The last seq the database's tiles of a run whose log ends at ``last_seq`` hold."""
    return last_seq - last_seq % CHUNK


def tile_base(conn: sa.Connection, run: RunKey) -> int | None:
    """The run's finest level in the database (None: no tiles)."""
    row = _sql(conn, _param(conn, f"SELECT min(level) FROM plot_tiles WHERE {_RUN}"), run).one()
    return None if row[0] is None else int(row[0])


def action_before(conn: sa.Connection, run: RunKey, seq: int) -> str | None:
    """The action of the last live entry of seq ``seq`` or before (None: none)."""
    found = _sql(
        conn,
        _param(
            conn,
            f"SELECT action FROM decisions WHERE {_RUN} AND superseded = ? AND seq <= ? "
            "ORDER BY seq DESC LIMIT 1",
        ),
        (*run, False, seq),
    ).first()
    return None if found is None else str(found[0])


def _add(tiles: dict[int, dict[str, Any]], key: int, bucket: dict[str, Any]) -> None:
    known = tiles.get(key)
    if known is None:
        tiles[key] = _copy(bucket)
    else:
        _merge(known, bucket)


def _tile_bucket(row: Any) -> dict[str, Any]:
    """A tile row (``_TILE_COLUMNS``) as a bucket."""
    return {
        "step_lo": int(row[0]),
        "step_hi": int(row[1]),
        "count": int(row[2]),
        "lr_min": [float(v) for v in json.loads(row[3])],
        "lr_max": [float(v) for v in json.loads(row[4])],
        "metric_min": None if row[5] is None else float(row[5]),
        "metric_max": None if row[6] is None else float(row[6]),
    }


def _tile_rows(
    conn: sa.Connection, run: RunKey, level: int, keys: tuple[int, int] | None = None
) -> list[Any]:
    """The run's tiles of ``level`` (keys in ``keys``, both ends in): (key, columns...)."""
    where = f"{_RUN} AND level = ?" + ("" if keys is None else " AND key >= ? AND key <= ?")
    return list(
        _sql(
            conn,
            _param(conn, f"SELECT key, {_TILE_COLUMNS} FROM plot_tiles WHERE {where}"),
            (*run, level, *(keys or ())),
        ).all()
    )


_WRITE_ROWS = 500  # tiles a statement


def _write_tiles(
    conn: sa.Connection, run: RunKey, tiles: dict[tuple[int, int], dict[str, Any]]
) -> None:
    """Write tiles (level, key) -> bucket, each replacing the one there: one statement of
    many rows (an executemany is a round trip a row on PostgreSQL)."""
    rows = [
        (
            *run,
            level,
            key,
            b["step_lo"],
            b["step_hi"],
            b["count"],
            json.dumps(b["lr_min"]),
            json.dumps(b["lr_max"]),
            b["metric_min"],
            b["metric_max"],
        )
        for (level, key), b in sorted(tiles.items())
    ]
    update = ", ".join(f"{c} = excluded.{c}" for c in _TILE_COLUMNS.split(", "))
    for at in range(0, len(rows), _WRITE_ROWS):
        part = rows[at : at + _WRITE_ROWS]
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))
        _sql(
            conn,
            _param(
                conn,
                f"INSERT INTO plot_tiles (project, run_id, level, key, {_TILE_COLUMNS}) VALUES "
                f"{values} ON CONFLICT (project, run_id, level, key) DO UPDATE SET {update}",
            ),
            tuple(v for row in part for v in row),
        )


def fold(conn: sa.Connection, run: RunKey, through: int, groups: int) -> None:
    """Fold the live entries of seqs ``through - CHUNK + 1``..``through`` into the run's
    tiles and markers in the database (the writer of seq ``through`` calls it, the run
    locked, in its transaction): one reduction of those entries by the database (a range of
    the primary key; its JSON functions parse them faster than Python would), then the tiles
    they touch at each level read, merged and written."""
    groups = min(groups, MAX_GROUPS)
    after = through - CHUNK
    base = tile_base(conn, run)
    if base is None:  # the finest level: tiles of TILE_ENTRIES entries, at this density
        count, low, high = _sql(
            conn,
            _param(conn, f"SELECT count(*), min(step), max(step) FROM decisions WHERE {_SEQS}"),
            (*run, False, after, through),
        ).one()
        if not count:
            return  # a rewind superseded them all
        base = max(0, ((int(high) - int(low) + 1) * TILE_ENTRIES // int(count)).bit_length() - 1)
    before = action_before(conn, run, after)
    buckets, marks = _reduced(conn, run, groups, 1 << base, _SEQS, (False, after, through), before)
    if not buckets:
        return  # a rewind superseded them all
    tiles = {bucket.pop("k"): bucket for bucket in buckets}
    fresh: dict[tuple[int, int], dict[str, Any]] = {}
    for level in range(base, TOP_LEVEL, LEVEL_STEP):
        if level > base:  # each level from the one below (a few tiles, not every bucket)
            below, tiles = tiles, {}
            for key, tile in below.items():
                _add(tiles, key >> LEVEL_STEP, tile)
        fresh.update(((level, key), tile) for key, tile in tiles.items())
    spans: dict[int, tuple[int, int]] = {}
    for level, key in fresh:
        lo, hi = spans.get(level, (key, key))
        spans[level] = (min(lo, key), max(hi, key))
    ranges = sorted(spans.items())
    known_rows = _sql(
        conn,
        _param(
            conn,
            f"SELECT level, key, {_TILE_COLUMNS} FROM plot_tiles WHERE {_RUN} AND ("
            + " OR ".join("(level = ? AND key >= ? AND key <= ?)" for _ in ranges)
            + ")",
        ),
        (*run, *(v for level, (lo, hi) in ranges for v in (level, lo, hi))),
    ).all()
    for row in known_rows:
        touched = fresh.get((int(row[0]), int(row[1])))
        if touched is not None:
            _merge(touched, _tile_bucket(row[2:]))
    _write_tiles(conn, run, fresh)
    if marks:  # the entries that changed something (a few)
        _sql(
            conn,
            _param(
                conn,
                "INSERT INTO plot_marks (project, run_id, seq, step) SELECT project, run_id, "
                f"seq, step FROM decisions WHERE {_RUN} AND seq IN ({', '.join('?' * len(marks))})",
            ),
            (*run, *marks),
        )


def cut(conn: sa.Connection, run: RunKey, step: int) -> None:
    """After a rewind to ``step`` (its entries above it superseded, in this transaction): the
    run's tiles and markers in the database hold the live entries again. Tiles above the step
    go; at each level the tile holding it is made again, the finest from the log (a tile's
    entries), each level above from its children."""
    _sql(conn, _param(conn, f"DELETE FROM plot_marks WHERE {_RUN} AND step > ?"), (*run, step))
    base = tile_base(conn, run)
    if base is None:
        return
    levels = range(base, TOP_LEVEL, LEVEL_STEP)
    _sql(
        conn,
        _param(conn, f"DELETE FROM plot_tiles WHERE {_RUN} AND level = ? AND key >= ?"),
        [(*run, level, step >> level) for level in levels],
    )
    last_seq, base_lrs = _sql(
        conn, _param(conn, f"SELECT last_seq, base_lrs FROM runs WHERE {_RUN}"), run
    ).one()
    groups = min(len(json.loads(base_lrs)), MAX_GROUPS)
    lo = step >> base << base
    where = f"{_RANGE} AND seq <= {tiled_through(int(last_seq))}"
    remade: dict[tuple[int, int], dict[str, Any]] = {}
    for bucket in _reduced(conn, run, groups, 1 << base, where, (False, lo, step), None)[0]:
        remade[(base, bucket.pop("k"))] = bucket
    _write_tiles(conn, run, remade)
    for level in levels[1:]:
        key = step >> level
        children = _tile_rows(
            conn, run, level - LEVEL_STEP, (key << LEVEL_STEP, (key + 1 << LEVEL_STEP) - 1)
        )
        parent: dict[int, dict[str, Any]] = {}
        for row in children:
            _add(parent, key, _tile_bucket(row[1:]))
        _write_tiles(conn, run, {(level, key): b for key, b in parent.items()})


def drop_tiles(conn: sa.Connection, run: RunKey) -> None:
    """The run's tiles and markers gone (what an unfinished import wrote)."""
    for table in ("plot_tiles", "plot_marks"):
        _sql(conn, _param(conn, f"DELETE FROM {table} WHERE {_RUN}"), run)
