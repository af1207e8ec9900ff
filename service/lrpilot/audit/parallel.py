"""A bundle file verified by several processes, each checking one region of its lines.

An entry is proven from the entry before it alone: its link is that entry's hash, and the
policy decides it from that entry's state, which is the whole policy state (the service itself
decides the next step from it after a restart). So a long log splits into regions at line
boundaries. Each region's process starts from the entry just before its region (its *seed*,
taken as written) and checks its own entries and then the next region's seed: every seed is
proven by the region before it. The first region that fails gives the verdict, with the line
and seq it names: what one process finds (``tests/domain/test_verify_parallel.py`` holds the
two to the same report, edits anywhere, region boundaries included).

Only what splits cleanly is split: a log without rewinds (a rewind restores a state from far
before it) of a run without a scaling rule (the scale in force is not in a decision) nor a
guard (a rollback goes to a checkpoint from far before it), no region seeded from a checkpoint
entry (it does not say the last decided step). Any other log, a small file or one worker:
``check_bundle``, in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrpilot.audit.bundle import (
    _REWIND_MARK_RAW,
    MAX_LINE_BYTES,
    Mismatch,
    _parse,
    check_line,
    parse_header,
    parse_trailer,
    read_raw,
    rewinds_of,
)
from lrpilot.audit.verify import (
    _TRAILER,
    BundleCheck,
    LogCheck,
    Report,
    _imported_counts,
    check_bundle,
    finish_bundle,
)
from lrpilot.entries import GENESIS, Kind
from lrpilot.spec import RunStored

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Below this (about 80,000 decisions, a second or two of checking) starting the processes
# costs more than they save.
PARALLEL_FROM_BYTES = 64 << 20
_PROGRESS_EVERY = 4096  # lines between two reports of the bytes read (a call costs)
_TAIL_BYTES = 1 << 16  # read from the end to find the trailer; a longer one: one process

Progress = Callable[[int], None]  # told the bytes read since it was last told


def default_workers() -> int:
    """The processes ``lrpilot verify`` uses unless told: the cores this process may run on."""
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # not Linux
        return max(1, min(os.cpu_count() or 1, 8))


def check_bundle_file(
    path: Path,
    head: str | None = None,
    public_keys: Sequence[Ed25519PublicKey] = (),
    whose: str = "",
    *,
    workers: int = 1,
    max_line: int = MAX_LINE_BYTES,
    progress: Progress | None = None,
    parallel_from: int = PARALLEL_FROM_BYTES,
    method: str | None = None,
) -> BundleCheck:
    """``check_bundle`` of the file ``path``, by up to ``workers`` processes (started by
    ``multiprocessing``'s ``method``; by default forked, and only from a process that runs no
    other thread): the same report. A file smaller than ``parallel_from`` bytes is checked in
    this process, as is one whose regions' processes cannot start or die."""
    size = path.stat().st_size
    plan = _plan(path, size, workers, max_line) if workers > 1 and size >= parallel_from else None
    if plan is not None:
        checked = _in_regions(plan, path, head, public_keys, whose, max_line, progress, method)
        if checked is not None:
            return checked
    return check_bundle(_reading(path, max_line, progress), head, public_keys, whose)


def _reading(path: Path, max_line: int, progress: Progress | None) -> Callable[[], Iterator[bytes]]:
    if progress is None:
        return lambda: read_raw(path, max_line)

    def open_lines() -> Iterator[bytes]:
        told = 0
        for count, raw in enumerate(read_raw(path, max_line), start=1):
            told += len(raw)
            if count % _PROGRESS_EVERY == 0:
                progress(told)
                told = 0
            yield raw
        progress(told)

    return open_lines


# -- the plan: where the regions begin --------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    header: bytes  # the header line, as read
    run: RunStored
    trailer: bytes  # the last line that is not blank
    starts: list[int]  # byte offsets of the regions' first lines; the first is 0


def _plan(path: Path, size: int, workers: int, max_line: int) -> _Plan | None:
    """Regions for ``workers`` processes, or None when the log is not one to split (a header
    that does not parse, a run with a scaling rule, a trailer too long to find from the end):
    the one-process check then says what it says of it."""
    with path.open("rb") as f:
        header = f.readline(max_line + 2)
        header_end = f.tell()
        header = header.rstrip(b"\r\n")
        try:
            check_line(header, 1)
            run = parse_header(header, 1)
        except Mismatch:
            return None
        if run.scaling is not None or run.guard is not None:  # its regions need what came before
            return None
        tail_at = max(header_end, size - _TAIL_BYTES)
        f.seek(tail_at)
        tail = f.read()
        lines = tail.rstrip(b"\r\n \t").split(b"\n")
        if len(lines) < 2 and tail_at > header_end:
            return None
        trailer = lines[-1].rstrip(b"\r")
        trailer_at = size - len(tail) + tail.rfind(trailer)
        starts = [0]
        for k in range(1, workers):
            f.seek(header_end + (trailer_at - header_end) * k // workers - 1)
            _skip_to_line_end(f, max_line)
            at = f.tell()
            if starts[-1] < at < trailer_at:
                starts.append(at)
    return _Plan(header, run, trailer, starts) if len(starts) > 1 else None


def _skip_to_line_end(f: Any, max_line: int) -> None:
    while (chunk := f.readline(max_line + 2)) and not chunk.endswith(b"\n"):
        pass


# -- one region -------------------------------------------------------------------------------


@dataclass
class _Region:
    """What a region's process found: its verdict, where its log stands after its last entry
    (the next region's seed), and how many lines begin in it (to number the next region's)."""

    lines: int = 0
    mismatch: Mismatch | None = None
    count: int = 0
    prev: str = GENESIS
    last_step: int | None = None
    step: int | None = None
    action: str | None = None
    reductions: int = 0
    watched: dict[int, str] = field(default_factory=dict)
    end: dict[str, Any] | None = None
    final_state: dict[str, Any] | None = None  # the policy state after its last entry
    rewound: bool = False  # a rewind is in it, or its seed is a checkpoint: one for check_bundle
    number: int = 0  # the number of the last line read that is not blank
    start: str = GENESIS  # the first region's: the hash its log begins from


def _region_lines(
    path: Path, start: int, stop: int | None, max_line: int, region: _Region
) -> Iterator[tuple[int, bytes, bool]]:
    """(number, line, whether it begins before ``stop``) of the lines from byte ``start``,
    numbered from 1; blank lines are counted, not yielded. Lines beginning before ``stop`` are
    counted in ``region.lines``. Goes on to the end of the file: the caller stops."""
    with path.open("rb") as f:
        f.seek(start)
        at, number, unreported = start, 0, 0
        while raw := f.readline(max_line + 2):
            number += 1
            before = stop is None or at < stop
            if before:
                region.lines = number
            at += len(raw)
            if len(raw) - 2 >= max_line and len(raw.rstrip(b"\r\n")) > max_line:
                raise Mismatch(
                    number,
                    None,
                    f"the line is longer than {max_line} bytes (LRPILOT_MAX_BUNDLE_LINE_BYTES)",
                )
            unreported += len(raw)
            if number % _PROGRESS_EVERY == 0:
                _report_progress(unreported)
                unreported = 0
            raw = raw.rstrip(b"\r\n")
            if raw:
                yield number, raw, before
        _report_progress(unreported)


def _check_region(
    path: Path, start: int, stop: int | None, header: bytes, watch: set[int], max_line: int
) -> _Region:
    """Check the entries of the region from byte ``start``, and the first entry at or after
    ``stop`` (the next region's seed); the first region begins with the header."""
    region = _Region()
    run = parse_header(header, 1)
    check: LogCheck | None = None
    number = 0
    try:
        check = LogCheck(run, [], watch=watch)
        lines = _region_lines(path, start, stop, max_line, region)
        if start == 0:
            next(lines)  # the header, read and checked before the regions began
        else:
            number, seed, _ = next(lines)  # the region before proves it
            if seed.startswith(_UNSEEDED):  # it does not say the last decided step
                region.rewound = True
                return region
            _resume(check, seed, number)
        end: dict[str, Any] | None = None
        for number, raw, before in lines:
            check_line(raw, number)
            if end is not None:
                raise Mismatch(number, None, "a line after the trailer")
            if raw.startswith(_TRAILER):
                end = region.end = parse_trailer(raw, number)
            if end is None:
                if _REWIND_MARK_RAW in raw and rewinds_of([raw]):
                    region.rewound = True
                    return region
                check.check(raw, number)
                if not before:
                    break  # the next region's seed, proven
        region.final_state = check.replay.state().model_dump()
    except Mismatch as exc:
        region.mismatch = exc
    except StopIteration:  # no line at all where one was planned: the file changed
        region.mismatch = Mismatch(number or None, None, "the bundle changed while it was read")
    if check is not None:
        region.count, region.prev, region.reductions = check.count, check.prev, check.reductions
        region.last_step, region.step, region.action = check.last_step, check.step, check.action
        region.watched, region.start = check.watched, check.start
    region.number = number
    return region


# The entries a region cannot start after: they stand at a step they do not decide (a
# checkpoint at its own step, a cooldown or retime where the log stood), so the last decided
# step before them is not theirs. Matched on an entry's first member (its keys sort).
_UNSEEDED = tuple(
    b'{"action":"%s"' % kind.value.encode()
    for kind in (Kind.CHECKPOINT, Kind.COOLDOWN, Kind.RETIME)
)


def _resume(check: LogCheck, seed: bytes, number: int) -> None:
    """Set ``check`` to go on after the entry ``seed``, as if it had checked every entry up to
    it. Whatever it makes of an entry that is not one, the region before fails on it first."""
    doc = _parse(seed, number)
    try:
        check.resume(doc["seq"], doc["hash"], doc["step"], doc["action"], doc["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Mismatch(number, None, f"not an entry to go on from: {exc}") from None


# -- the regions together ---------------------------------------------------------------------

_bytes_read: Synchronized[int] | None = None  # in a region's process: the parent's counter


def _share_progress(counter: Synchronized[int] | None) -> None:
    global _bytes_read
    _bytes_read = counter


def _report_progress(count: int) -> None:
    if _bytes_read is not None and count:
        with _bytes_read.get_lock():
            _bytes_read.value += count


def _in_regions(
    plan: _Plan,
    path: Path,
    head: str | None,
    public_keys: Sequence[Ed25519PublicKey],
    whose: str,
    max_line: int,
    progress: Progress | None,
    method: str | None,
) -> BundleCheck | None:
    """The regions' verdict, or None when a region found a rewind (the log is not one to
    split), or processes cannot be started here or died (``check_bundle`` then)."""
    context = _processes(method)
    if context is None:
        return None
    counter: Synchronized[int] = context.Value("q", 0)
    watch = _imported_counts(plan.trailer)
    stops: list[int | None] = [*plan.starts[1:], None]
    with ProcessPoolExecutor(
        len(plan.starts), mp_context=context, initializer=_share_progress, initargs=(counter,)
    ) as pool:
        futures = [
            pool.submit(_check_region, path, start, stop, plan.header, watch, max_line)
            for start, stop in zip(plan.starts, stops, strict=True)
        ]
        told = 0
        while True:
            _, pending = wait(futures, timeout=0.2)
            if progress is not None:
                now = counter.value
                progress(now - told)
                told = now
            if not pending:
                break
        found = [_result(future) for future in futures]
    regions = [region for region in found if region is not None]
    if len(regions) < len(found) or any(region.rewound for region in regions):
        return None
    return _verdict(plan, regions, head, public_keys, whose)


def _processes(method: str | None) -> multiprocessing.context.BaseContext | None:
    """How the regions' processes start: by ``method`` if given; else forked from this
    process when it runs no other thread (the CLI: the cheapest way), and not at all when it
    does (a fork may inherit a lock some thread held; a spawned process imports the caller's
    main module again, which a script without a ``__main__`` guard does not survive)."""
    if method is not None:
        return multiprocessing.get_context(method)
    if os.name == "posix" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return None


def _result(future: Future[_Region]) -> _Region | None:
    try:
        return future.result()
    except BrokenProcessPool:  # a process that died (killed, out of memory): one process then
        return None


def _verdict(
    plan: _Plan,
    regions: list[_Region],
    head: str | None,
    public_keys: Sequence[Ed25519PublicKey],
    whose: str,
) -> BundleCheck:
    # a region that read the trailer read to the end: the regions after it saw no entry
    ended = next((k for k, region in enumerate(regions) if region.end is not None), None)
    regions = regions if ended is None else regions[: ended + 1]
    offset = 0  # lines before the region
    for region in regions:
        if region.mismatch is not None:
            m = region.mismatch
            line = None if m.line is None else m.line + offset
            failed = Mismatch(line, m.seq, m.what, m.expected, m.found)
            report = Report(False, region.count, region.prev, mismatch=failed)
            return BundleCheck(
                plan.run, report, region.end, offset + region.number, regions=len(regions)
            )
        if region is not regions[-1]:
            offset += region.lines
    last = regions[-1]
    check = LogCheck(plan.run, [])
    if last.final_state is not None:
        check.resume(last.count, last.prev, last.step, last.action, last.final_state)
    check.start = regions[0].start
    check.last_step = last.last_step
    check.reductions = sum(region.reductions for region in regions)
    for region in regions:
        check.watched.update(region.watched)
    number = offset + last.number
    checked = finish_bundle(
        check, plan.run, last.end, plan.header, number, head, public_keys, whose
    )
    checked.regions = len(regions)
    return checked
