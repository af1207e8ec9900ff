"""What a client does while the service is away: the one copy both clients use.

A training job must not die because lrpilot is briefly unreachable. In the "buffer" mode (the
default) an observation that cannot be sent goes into an outbox (`Outbox`, in memory, optionally
mirrored to a file so that a restarted process keeps it) and is answered with a provisional
decision: action "hold", the last rates the service decided for the run (`Memory`). Every later
call first sends what is buffered, oldest first, once the outage schedule (`_retry.Outage`) says
a try is due; reads answer the last known rates meanwhile. `Resilience` ties these together and
makes every decision; the sync and the async client only do the I/O around it, as they do
around `_calls` and `_retry`.

Sending a buffered observation again is safe: the service dedupes by (step, value), so an
observation whose answer was lost is answered with the decision already made, never counted
twice. A 4xx for a buffered observation is no outage but the job's mistake (a conflicting value,
an unknown run): it is taken out of the outbox and raised by the call that sent it. An answer
that is not the service's (a proxy's HTML page, even with a 200 or a 4xx status; a body that
cannot be read) is no refusal: the service is away, and the observation stays buffered.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx

from . import _calls
from ._calls import Call
from ._retry import Attempts, Outage, RetryPolicy
from .errors import LrpilotError, ServiceUnavailableError
from .models import (
    Cooled,
    Decision,
    LrsAhead,
    LrsInForce,
    PendingObservation,
    Resized,
    Retimed,
    Rewound,
    Run,
)

__all__ = ["DEFAULT_OUTBOX_SIZE", "Mode", "Outbox", "Resilience", "observe_call"]

log = logging.getLogger("lrpilot_client")

Mode = Literal["buffer", "raise"]
MODES: tuple[Mode, ...] = ("buffer", "raise")
DEFAULT_OUTBOX_SIZE = 10_000
# While the service is known down, a try waits at most this long to connect: a host that
# drops packets must not hold a training step for the whole `timeout` on every try.
PROBE_CONNECT_TIMEOUT = 2.0


# An aggregated rank's answer waits for the other ranks (up to the run's `timeout_s`): its read
# timeout is that wait and this margin, or `UNKNOWN_AGGREGATE_WAIT` while the client has not
# seen the run's spec (a read timeout then only means a retry, which counts the rank once).
AGGREGATE_MARGIN = 10.0
UNKNOWN_AGGREGATE_WAIT = 60.0


def aggregated(obs: PendingObservation) -> bool:
    """An aggregated run's report: one rank's, of `world_size`."""
    return obs.rank is not None and obs.world_size is not None


def observe_call(obs: PendingObservation, wait: float | None = None) -> Call[Decision]:
    """The request that sends `obs`, exactly as it was made; a rank's report (aggregated
    mode) may wait `wait` seconds (the run's timeout_s) for the others."""
    call = _calls.observation(obs)
    if not aggregated(obs):
        return call
    read = (UNKNOWN_AGGREGATE_WAIT if wait is None else wait) + AGGREGATE_MARGIN
    return dataclasses.replace(call, read_timeout=read)


def probe_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    """`timeout` with the connect timeout cut to `PROBE_CONNECT_TIMEOUT`."""
    connect = timeout.connect
    connect = PROBE_CONNECT_TIMEOUT if connect is None else min(connect, PROBE_CONNECT_TIMEOUT)
    return httpx.Timeout(connect=connect, read=timeout.read, write=timeout.write, pool=timeout.pool)


class Outbox:
    """The observations not sent yet, oldest first, at most `capacity` of them.

    When it is full, a new observation is dropped (and counted in `dropped`), not queued: the
    observations already buffered keep their order, so the run's log is still exactly what it
    would have been up to the gap. An observation equal to one already buffered (same run, step
    and value: a retry) is not queued twice.

    With `path`, every queued observation is also appended to that file (one JSON object a line,
    fsynced), and the file is rewritten to what is left after each flush, removed when nothing
    is: a process restarted on the same path sends what its predecessor could not. One path
    belongs to one client at a time.
    """

    def __init__(self, capacity: int, path: str | os.PathLike[str] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"outbox_size must be >= 1, got {capacity}")
        self.capacity = capacity
        self.path = Path(path) if path is not None else None
        self.dropped = 0
        self._items: deque[PendingObservation] = deque()
        self._keys: set[tuple[str, int, int | None, float | str]] = set()
        self._dirty = False
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> tuple[PendingObservation, ...]:
        with self._lock:
            return tuple(self._items)

    def count(self, run_id: str) -> int:
        """How many of the buffered observations are `run_id`'s."""
        with self._lock:
            return sum(1 for obs in self._items if obs.run_id == run_id)

    def head(self) -> PendingObservation | None:
        """The oldest buffered observation: the next to send."""
        with self._lock:
            return self._items[0] if self._items else None

    def add(self, obs: PendingObservation) -> bool:
        """Buffer `obs`; False when the outbox is full and `obs` was dropped."""
        with self._lock:
            if obs.key in self._keys:
                return True
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return False
            self._items.append(obs)
            self._keys.add(obs.key)
            if self.path is not None:
                self._append(self.path, obs)
            return True

    def remove(self, obs: PendingObservation) -> None:
        """`obs` (the head) was delivered or refused: it is no longer pending."""
        with self._lock:
            if self._items and self._items[0] is obs:
                self._items.popleft()
                self._keys.discard(obs.key)
                self._dirty = True

    def save(self) -> None:
        """Make the file hold exactly what is pending (after a flush took some out)."""
        with self._lock:
            if self.path is None or not self._dirty:
                return
            try:
                if not self._items:
                    self.path.unlink(missing_ok=True)
                else:
                    self._rewrite(self.path)
                self._dirty = False
            except OSError as exc:  # the memory copy is intact; the next save tries again
                log.error("lrpilot outbox %s could not be rewritten: %s", self.path, exc)

    # --- the file ----------------------------------------------------------------------------

    @staticmethod
    def _line(obs: PendingObservation) -> str:
        return json.dumps(obs.to_json(), allow_nan=False, separators=(",", ":")) + "\n"

    def _append(self, path: Path, obs: PendingObservation) -> None:
        try:
            with path.open("a", encoding="utf-8") as f:
                f.write(self._line(obs))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk must not stop training: the memory copy stays
            log.error("lrpilot outbox %s: step %d kept in memory only: %s", path, obs.step, exc)

    def _rewrite(self, path: Path) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(self._line(obs) for obs in self._items)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self, path: Path) -> None:
        """Read what a previous process left. A torn last line (a crash mid-write) is skipped;
        any other unreadable line is an error: the file is not what this client wrote."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obs = PendingObservation.from_json(json.loads(line))
            except (ValueError, LrpilotError) as exc:
                if number == len(lines):
                    log.warning("lrpilot outbox %s: torn last line skipped: %s", path, exc)
                    self._dirty = True
                    continue
                raise ValueError(f"{path}:{number}: not an lrpilot outbox line: {exc}") from None
            if obs.key in self._keys:
                continue
            if len(self._items) >= self.capacity:
                self.dropped += 1
                self._dirty = True
                continue
            self._items.append(obs)
            self._keys.add(obs.key)
        if self._items:
            log.warning("lrpilot outbox %s: %d observations to send", path, len(self._items))
        if self.dropped:
            log.warning("lrpilot outbox %s: %d beyond outbox_size dropped", path, self.dropped)


@dataclass
class _Known:
    """The newest rates the service gave this client for one run, and what came with them."""

    lrs: tuple[float, ...]
    seq: int = 0
    step: int | None = None
    policy: str = ""
    config_hash: str = ""
    ahead: LrsAhead | None = None
    ahead_fresh: bool = False  # no newer decision was learned since `ahead` was fetched


class Memory:
    """The last known rates of each run, from every answer the client got.

    "Newest" is by the seq of the decision that set them (a retried old step's answer does not
    take the rates back); at equal seq the later answer wins (rates read at a later step of a
    schedule). The last `lrs_ahead` answer is kept as well: its rows stand for their steps
    while they are certain, or while no newer decision came in.
    """

    def __init__(self) -> None:
        self._runs: dict[str, _Known] = {}

    def get(self, run_id: str) -> _Known | None:
        return self._runs.get(run_id)

    def learn(self, result: object) -> None:
        if isinstance(result, Decision):
            if not result.provisional:
                self._set(result.run_id, result.lrs, result.seq, result.step,
                          result.policy, result.config_hash)  # fmt: skip
        elif isinstance(result, Run):
            self._set(result.run_id, result.lrs, result.last_seq, result.last_step,
                      result.policy.ref, result.config_hash)  # fmt: skip
        elif isinstance(
            result, Rewound | Resized | Cooled | Retimed
        ):  # an entry in the chain, or none
            if result.decision is not None:
                self.learn(result.decision)
            else:
                known = self._runs.get(result.run_id)
                seq = known.seq if known is not None else 0
                self._set(result.run_id, result.lrs, seq, known.step if known else None)
        elif isinstance(result, LrsInForce):
            if not result.provisional:
                self._set(result.run_id, result.lrs, result.seq or 0, result.decided_at_step)
        elif isinstance(result, LrsAhead) and not result.provisional and result.lrs:
            known = self._runs.get(result.run_id)
            if known is None:
                known = self._runs[result.run_id] = _Known(lrs=result.lrs[-1])
            known.ahead = result
            known.ahead_fresh = True

    def _set(
        self,
        run_id: str,
        lrs: tuple[float, ...],
        seq: int,
        step: int | None,
        policy: str = "",
        config_hash: str = "",
    ) -> None:
        known = self._runs.get(run_id)
        if known is None:
            self._runs[run_id] = _Known(lrs, seq, step, policy, config_hash)
            return
        known.policy = policy or known.policy
        known.config_hash = config_hash or known.config_hash
        if seq < known.seq:
            return  # older news
        if seq > known.seq:
            known.ahead_fresh = False
        known.lrs, known.seq, known.step = lrs, seq, step

    def lrs_at(self, run_id: str, step: int | None) -> tuple[float, ...] | None:
        """The last known rates at `step` (the current ones if None); None if nothing is known."""
        known = self._runs.get(run_id)
        if known is None:
            return None
        ahead = known.ahead
        if ahead is not None and step is not None and 0 <= step - ahead.first < len(ahead.lrs):
            certain = ahead.open_loop or (
                ahead.certain_through is not None and step <= ahead.certain_through
            )
            if certain or known.ahead_fresh:
                return ahead.at(step)
        return known.lrs


class Resilience:
    """One client's outage handling: its mode, outage schedule, outbox and memory.

    In "raise" mode nothing is buffered and every call behaves as it always did (retries, then
    `ServiceUnavailableError`); the memory and head hashes are kept all the same.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        mode: str = "buffer",
        outbox_size: int = DEFAULT_OUTBOX_SIZE,
        outbox_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"on_unavailable must be 'buffer' or 'raise', got {mode!r}")
        if mode == "raise" and outbox_path is not None:
            raise ValueError("outbox_path needs on_unavailable='buffer'")
        self.policy = policy
        self.buffering = mode == "buffer"
        self.outage = Outage(policy)
        self.outbox = Outbox(outbox_size, outbox_path)
        self.memory = Memory()
        self.heads: dict[str, str] = {}  # the hash of the last decision received, per run
        self.waits: dict[str, float] = {}  # aggregated runs' timeout_s, from their specs
        self._full_warned = False

    # --- when to send, and how ---------------------------------------------------------------

    def due(self) -> bool:
        """May a request be made now? Always in "raise" mode; in "buffer" mode not while the
        service is known down and its next try is not due."""
        return not self.buffering or self.outage.due()

    def attempts(self, obs: PendingObservation | None = None) -> Attempts:
        """The attempts of an observation, a read or a buffered observation.

        "raise" mode: the policy's retries, as always. "buffer" mode: the policy's retries while
        the service is believed up, a single try while it is known down; a `Retry-After` ends
        them at once (the outage schedule waits it out, the training step does not), except
        for a rank's report of an aggregated run, which waits it out: its peers wait for it
        in the job's next collective anyway, and a rank that went on with a provisional
        answer would train on other lrs than theirs if the service decides without it.
        """
        if not self.buffering:
            return self.policy.attempts()
        # An answer that is not the service's (a proxy's page) is the service being away too.
        if self.outage.down:
            return Attempts(self.policy, retries=0, max_retry_after=0.0, probe=True, foreign=True)
        if obs is not None and aggregated(obs):
            return self.policy.attempts(foreign=True)
        return Attempts(self.policy, max_retry_after=0.0, foreign=True)

    def observe_call(self, obs: PendingObservation) -> Call[Decision]:
        return observe_call(obs, self.waits.get(obs.run_id))

    def answered(self, result: object) -> None:
        """An answer came: the service is up; learn the rates (and head hash) it carries."""
        self.outage.recovered()
        self._full_warned = False
        self.memory.learn(result)
        if isinstance(result, Run) and result.aggregate:
            self.waits[result.run_id] = float(result.aggregate["timeout_s"])
        if isinstance(result, Decision) and not result.provisional:
            self.heads[result.run_id] = result.hash
        elif (
            isinstance(result, Rewound | Resized | Cooled | Retimed) and result.decision is not None
        ):
            self.heads[result.run_id] = result.decision.hash

    def unreachable(self, exc: ServiceUnavailableError) -> None:
        """A call could not reach the service: re-raised in "raise" mode, else the outage
        schedule takes note and the caller answers provisionally."""
        if not self.buffering:
            raise exc
        self.outage.failed(exc)

    # --- the outbox --------------------------------------------------------------------------

    def next_to_send(self) -> PendingObservation | None:
        """The buffered observation to send now: the oldest, if a try is due."""
        return self.outbox.head() if self.due() else None

    def delivered(self, obs: PendingObservation, decision: Decision) -> None:
        self.outbox.remove(obs)
        self.answered(decision)

    def refused(self, obs: PendingObservation, exc: LrpilotError) -> LrpilotError:
        """The service refused a buffered observation (its own 4xx answer; an answer that is not
        the service's, such as a proxy's page, is an outage instead): sending it again cannot
        help, so it leaves the outbox, and the error to raise (of the same class, naming the
        observation) is returned."""
        self.outbox.remove(obs)
        self.outage.recovered()  # it answered
        message = (
            f"buffered observation of run {obs.run_id!r} at step {obs.step} (value {obs.value!r})"
            f" refused: {exc}"
        )
        error = type(exc)(exc.detail, exc.status_code, message=message)
        error.observation = obs
        return error

    def pending_of(self, run_id: str) -> int:
        return self.outbox.count(run_id)

    # --- provisional answers -----------------------------------------------------------------

    def _cause(self) -> str:
        return self.outage.cause or "no try made yet"

    def _unknown(self, run_id: str) -> ServiceUnavailableError:
        """The error when there is no stand-in: nothing is known of the run. It carries the
        failure that made the service known down (its attempts, status, Retry-After)."""
        last = self.outage.last_error
        error = ServiceUnavailableError(
            last.detail if last is not None else self._cause(),
            last.status_code if last is not None else None,
            attempts=last.attempts if last is not None else 0,
            retry_after=last.retry_after if last is not None else None,
            unanswered_for=last.unanswered_for if last is not None else 0.0,
            message=(
                f"lrpilot unreachable and no rates of run {run_id!r} known to this client (it "
                f"got no answer about the run yet: call create_run or get_run first): "
                f"{self._cause()}"
            ),
        )
        error.__cause__ = last
        return error

    def hold(self, obs: PendingObservation) -> Decision:
        """Buffer `obs` and answer it with the last known rates, action "hold" (or raise,
        buffering nothing, when no rates of the run are known)."""
        known = self.memory.get(obs.run_id)
        if known is None:
            raise self._unknown(obs.run_id)
        queued = self.outbox.add(obs)
        if not queued and not self._full_warned:
            self._full_warned = True
            log.warning(
                "lrpilot outbox full (%d observations): dropping new observations until the "
                "service is back", self.outbox.capacity,
            )  # fmt: skip
        lrs = list(known.lrs)
        kept = f"keeping lrs {lrs}" + (f" (decision {known.seq})" if known.seq else " (base lrs)")
        if queued:
            what = f"step {obs.step} is buffered ({len(self.outbox)} pending) and is sent when "
            what += "it is back"
        else:
            what = f"the outbox is full ({self.outbox.capacity}): step {obs.step} was dropped"
        return Decision(
            run_id=obs.run_id,
            seq=0,
            step=obs.step,
            value=obs.value,
            lrs=known.lrs,
            previous_lrs=known.lrs,
            action="hold",
            reason=f"lrpilot unreachable: {kept}; {what} [{self._cause()}]",
            policy=known.policy,
            config_hash=known.config_hash,
            state={},
            hash="",
            prev_hash=self.heads.get(obs.run_id),
            created_at=datetime.now(UTC),
            client=dict(obs.client),
            provisional=True,
        )

    def lrs_in_force(self, run_id: str, step: int | None) -> LrsInForce:
        """The last known rates in force at `step`, marked provisional."""
        lrs = self.memory.lrs_at(run_id, step)
        known = self.memory.get(run_id)
        if lrs is None or known is None:
            raise self._unknown(run_id)
        return LrsInForce(
            run_id=run_id,
            step=step,
            lrs=lrs,
            seq=known.seq or None,
            decided_at_step=known.step,
            provisional=True,
        )

    def lrs_ahead(self, run_id: str, first: int, count: int, every: int = 1) -> LrsAhead:
        """The last known rates of `count` steps from `first`, `every` apart, provisional."""
        known = self.memory.get(run_id)
        if known is None:
            raise self._unknown(run_id)
        rows = tuple(self.memory.lrs_at(run_id, step) or known.lrs
                     for step in range(first, first + max(count, 0) * every, every))  # fmt: skip
        open_loop = known.ahead.open_loop if known.ahead is not None else False
        return LrsAhead(run_id, first, rows, None, open_loop, provisional=True, every=every)

    def check_sent(self, run_id: str, what: str) -> None:
        """A rewind or a resize must not overtake the run's buffered observations: raise while
        any is left."""
        left = self.pending_of(run_id)
        if left:
            cause = self._cause()
            raise ServiceUnavailableError(
                cause,
                attempts=0,
                message=(
                    f"{what} of run {run_id!r}: {left} buffered observation(s) of the run are "
                    f"not sent yet and must go first; lrpilot unreachable: {cause}"
                ),
            )
