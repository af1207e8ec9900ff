"""Request and response shapes of the HTTP API (v1); see DESIGN.md for the contract."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictFloat,
    StrictInt,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lrpilot.domain.aggregated import Posted
from lrpilot.domain.guarding import MAX_REF, SUMMARY_CHECKPOINTS
from lrpilot.entries import NOT_DECISIONS, Asker
from lrpilot.guard import Guarded
from lrpilot.policies import ACTIONS as POLICY_ACTIONS
from lrpilot.policies import POLICIES
from lrpilot.policies.base import MAX_STEP
from lrpilot.spec import (
    LABEL_KEY_PATTERN,
    MAX_LABEL_VALUE,
    MAX_SIZE,
    RUN_ID_PATTERN,
    AggregateSpec,
    BaseLrs,
    Clock,
    MetricName,
    MetricValue,
    PolicyRef,
    RunPublic,
    RunSpec,
    ScalingSpec,
    Strict,
    Text,
)
from lrpilot.store.records import RunKey

POLICY_NAMES = sorted({p.name for p in POLICIES.values()})
# a rewind is an entry of every run's log, a scale one of a run with a scaling rule
ACTIONS = POLICY_ACTIONS | set(NOT_DECISIONS) | set(Guarded.actions)


# -- query parameters ---------------------------------------------------------------------

POLICY_FILTER = r"^[a-z][a-z0-9_]{0,63}(@[0-9]{1,9})?$"  # a family, or family@version
MAX_LABEL_FILTERS = 16  # each is a subquery: the cap bounds a list query's cost
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)


def _label_filter(v: str) -> str:
    key, sep, value = v.partition(":")
    if not sep or _LABEL_KEY.match(key) is None or len(value) > MAX_LABEL_VALUE:
        raise PydanticCustomError(
            "label_filter",
            "must be key:value, the key matching {pattern} and the value at most {max} "
            "characters (what a label can be), got {got}",
            {"pattern": LABEL_KEY_PATTERN, "max": MAX_LABEL_VALUE, "got": repr(v)[:64]},
        )
    return v


def _known_action(v: str) -> str:
    if v not in ACTIONS:
        raise PydanticCustomError(
            "action",
            "unknown action {got}; actions: {actions}",
            {"got": repr(v)[:64], "actions": ", ".join(sorted(ACTIONS))},
        )
    return v


LabelFilter = Annotated[Text, AfterValidator(_label_filter)]
# The document lists what is served (an enum), so that clients and fuzzers see the valid set.
ActionFilter = Annotated[
    Text,
    Field(max_length=32, json_schema_extra={"enum": sorted(ACTIONS)}),
    AfterValidator(_known_action),
]


# The request's run is the run spec itself: one model validates a created and an imported run.
RunIn = RunSpec
AggregateIn = AggregateSpec
ScalingIn = ScalingSpec


class ClientIn(Strict):
    """Who posts: the client's own declaration, stored with the decision (not authentication)."""

    host: Annotated[Text, Field(min_length=1, max_length=255)] | None = Field(
        default=None, examples=["gpu-node-3"]
    )
    process: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = Field(
        default=None, description="the OS process id", examples=[4242]
    )
    rank: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = Field(default=None, examples=[0])

    def declared(self) -> dict[str, Any] | None:
        doc = self.model_dump(exclude_none=True)
        return doc or None


HASH_PATTERN = r"^[0-9a-f]{64}$"
Step = Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]
LrsHash = Annotated[str, Field(pattern=HASH_PATTERN)]


class AppliedIn(Strict):
    """A rank's acknowledgement of the lrs it applied at an earlier step (docs/agreement.md)."""

    step: Step = Field(description="the training step the lrs were applied at")
    seq: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)] = Field(
        description="the seq of the entry those lrs came from (GET /lr's `seq`; 0 before any)"
    )
    lrs_hash: LrsHash = Field(
        description='sha256 (hex) of the canonical JSON of {"lrs": [the lrs applied, as '
        'floats], "seq": seq, "step": step}'
    )


class AckIn(AppliedIn):
    """A rank's acknowledgement on its own (leader mode: the ranks that read, not post)."""

    rank: Annotated[StrictInt, Field(ge=0, le=MAX_SIZE - 1)]
    world_size: Annotated[StrictInt, Field(ge=1, le=MAX_SIZE)]

    @model_validator(mode="after")
    def _rank_in_world(self) -> AckIn:
        _check_rank(self.rank, self.world_size)
        return self


def _check_rank(rank: int | None, world_size: int | None) -> None:
    if rank is not None and world_size is not None and rank >= world_size:
        raise PydanticCustomError(
            "rank_out_of_world",
            "rank {rank} must be < world_size {world_size}",
            {"rank": rank, "world_size": world_size},
        )


class ObservationIn(Strict):
    step: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]
    value: MetricValue
    rank: Annotated[StrictInt, Field(ge=0, le=MAX_SIZE - 1)] | None = None
    world_size: Annotated[StrictInt, Field(ge=1, le=MAX_SIZE)] | None = None
    # strict, as every other number: true and "2" are client bugs, not weights; ints are fine
    weight: Annotated[StrictFloat, Field(gt=0.0, le=1e15, allow_inf_nan=False)] | None = Field(
        default=None,
        description="aggregated mode: this rank's weight in the mean (e.g. its number of "
        "validation samples); 1 when omitted",
    )
    client: ClientIn | None = None
    applied: AppliedIn | None = Field(
        default=None,
        description="this rank's acknowledgement of the lrs it applied at an earlier step "
        "(needs `rank` and `world_size`; docs/agreement.md); omitted: nothing is acknowledged",
    )

    @model_validator(mode="after")
    def _rank_in_world(self) -> ObservationIn:
        _check_rank(self.rank, self.world_size)
        if self.applied is not None and (self.rank is None or self.world_size is None):
            raise PydanticCustomError(
                "applied_needs_rank", "`applied` needs the observation's rank and world_size", {}
            )
        return self

    def applied_values(self) -> tuple[int, int, str] | None:
        a = self.applied
        return None if a is None else (a.step, a.seq, a.lrs_hash)

    def posted(self, run: RunKey, asker: Asker) -> Posted:
        """This observation as posted to ``run`` by ``asker``, for the decision path."""
        return Posted(run, self.step, self.value, asker, self.rank, self.world_size, self.weight)


# -- responses (documentation of what the routes write; non-finite floats are strings) --------

Number = float | str


RunOut = RunPublic


class DecisionOut(BaseModel):
    run_id: str
    seq: int
    step: int
    value: Number | None = Field(description="the metric seen; null in a rewind entry")
    lrs: list[float]
    previous_lrs: list[float]
    action: str
    reason: str
    policy: str
    config_hash: str
    state: dict[str, Any]
    hash: str
    prev_hash: str
    created_at: str
    client: dict[str, Any] | None = Field(
        default=None,
        description="who posted the observation (or asked for the rewind), as it "
        "declared itself; absent when it did not",
    )
    rewind: dict[str, Any] | None = Field(
        default=None, description="in a rewind entry only: to_step, restores_seq, superseded"
    )
    ranks: list[dict[str, Any]] | None = Field(
        default=None,
        description="aggregated mode: each counted rank's rank, value, weight and client (when "
        "declared; `value` is "
        "their weighted mean); absent otherwise",
    )
    missing_ranks: list[int] | None = Field(
        default=None,
        description="aggregated mode, a step decided at the timeout: the ranks that did not "
        "report (with `timeout_s`), when they are at most 64",
    )
    missing_ranges: list[list[int]] | None = Field(
        default=None,
        description="instead of `missing_ranks` when more than 64 ranks did not report: "
        "them as inclusive [first, last] ranges (at most one more than the ranks counted)",
    )
    timeout_s: float | None = Field(
        default=None,
        description="with `missing_ranks` or `missing_ranges`: the run's timeout that ran out",
    )
    scale: float | None = Field(
        default=None,
        description="a run with a scaling rule: the factor on the policy's lrs, when it is "
        "not 1 (and in every scale entry)",
    )
    resize: dict[str, Any] | None = Field(
        default=None, description="in a scale entry only: by, from (the size before), to"
    )
    momentum: list[float] | None = Field(
        default=None,
        description="in a decision: the momentum (Adam's betas[0]) of each param group, when "
        "the run's policy schedules it (one_cycle@2, cyclic@2); absent otherwise",
    )
    weight_decay: list[float] | None = Field(
        default=None,
        description="in a decision: the weight decay of each param group, when the run's policy "
        "schedules it; absent otherwise",
    )
    checkpoint: dict[str, Any] | None = Field(
        default=None, description="in a checkpoint entry only: the job's ref for it"
    )
    rollback: dict[str, Any] | None = Field(
        default=None,
        description="in a rollback only: trigger (nan, spike), count, and the checkpoint "
        "(seq, step, ref) to restore; a rewind to its step follows it in the log",
    )
    cooldown: dict[str, Any] | None = Field(
        default=None,
        description="in a start_cooldown entry only: at_step, steps, shape (null: the "
        "policy's) and why (the operator's reason, or null)",
    )
    retime: dict[str, Any] | None = Field(
        default=None, description="in a retime entry only: at_step, horizon, mode"
    )
    disagreements: list[dict[str, Any]] | None = Field(
        default=None,
        description="in the answer to an observation that carried `applied`: the run's ranks "
        "whose acknowledged lrs differ from the run's (docs/agreement.md), each one's rank and "
        "first disagreement (step, seq, expected and got hashes), at most 64; absent when none",
    )


class AckOut(BaseModel):
    run_id: str
    rank: int
    step: int
    agreed: bool = Field(description="the hash sent is the hash of the run's lrs at `step`")
    expected: str = Field(description="the hash of the run's lrs at `step` (as `lrs_hash`)")
    disagreements: list[dict[str, Any]] = Field(
        description="the run's disagreeing ranks (at most 64), this one included if it does"
    )


class LrOut(BaseModel):
    run_id: str
    step: int | None
    lrs: list[float]
    momentum: list[float] | None = Field(
        default=None,
        description="at `step`: the momentum (Adam's betas[0]) of each param group, when the "
        "run's policy schedules it (one_cycle@2, cyclic@2); absent otherwise",
    )
    weight_decay: list[float] | None = Field(
        default=None,
        description="at `step`: the weight decay of each param group, when the run's policy "
        "schedules it; absent otherwise",
    )
    seq: int | None
    decided_at_step: int | None
    certain: bool = Field(
        description="no later evaluation can change these lrs: the run is decided through "
        "`step` (or its policy is a pure schedule), and, a run with a scaling rule, no resize "
        "can either (`step` is below its last decided step and its last resize's step); with "
        "`wait`, the answer comes once the run is decided through `step`"
    )
    disagreements: list[dict[str, Any]] | None = Field(
        default=None,
        description="the run's ranks whose acknowledged lrs differ from the run's "
        "(docs/agreement.md), as in a decision; absent when there is none",
    )


MAX_WAIT_S = 60.0  # the longest a reader may wait for a decision


MAX_LRS_COUNT = 10_000  # steps one GET /lrs answers


class LrsOut(BaseModel):
    run_id: str
    from_: int = Field(alias="from")
    count: int
    every: int = Field(default=1, description="the stride between two steps answered")
    lrs: list[list[float]] = Field(
        description="one list of lrs a step, from `from` on, `every` steps apart"
    )
    momentum: list[list[float]] | None = Field(
        default=None,
        description="one list of momentums (Adam's betas[0]) a step, as `lrs`, when the run's "
        "policy schedules them; absent otherwise",
    )
    weight_decay: list[list[float]] | None = Field(
        default=None,
        description="one list of weight decays a step, as `lrs`, when the run's policy "
        "schedules them; absent otherwise",
    )
    certain_through: int | None = Field(
        description="the last step whose lrs no later evaluation can change (all of them for "
        "a pure schedule), nor a resize (a run with a scaling rule: the steps below its last "
        "decided step and its last resize's step); null when none is certain yet"
    )
    open_loop: bool = Field(description="true for a pure schedule: observations never change it")


MAX_PLOT_POINTS = 10_000  # buckets one GET /plot answers, a branch
MAX_PLOT_EVENTS = 5_000  # markers one GET /plot answers (then truncated_events)


class PlotBucket(BaseModel):
    step_lo: int = Field(description="the lowest step of an entry in the bucket")
    step_hi: int = Field(description="the highest step of an entry in the bucket")
    count: int = Field(description="entries in the bucket")
    lr_min: list[float] = Field(description="each param group's lowest lr in the bucket")
    lr_max: list[float]
    metric_min: float | None = Field(description="the lowest finite metric; null: none")
    metric_max: float | None


class PlotEvent(BaseModel):
    seq: int
    step: int
    action: str
    reason: str
    lrs: list[float]
    previous_lrs: list[float]
    metric: Number | None = Field(description="the metric seen; null in a rewind or scale entry")
    resize: dict[str, Any] | None = Field(
        default=None, description="a scale entry's sizes: {by, from, to} (by: world_size...)"
    )
    rewind: dict[str, Any] | None = Field(default=None, description="a rewind's target")


class PlotBranch(BaseModel):
    from_seq: int
    to_seq: int
    buckets: list[PlotBucket]


class PlotOut(BaseModel):
    run_id: str
    from_step: int
    to_step: int
    bucket_steps: int = Field(description="steps a bucket spans (the last may span fewer)")
    groups: int = Field(description="param groups drawn (the first 64 of a run that has more)")
    buckets: list[PlotBucket] = Field(description="the live branch, oldest first")
    events: list[PlotEvent] = Field(
        description="the live branch's entries that changed something, oldest first: all but "
        "hold, a phase that repeats its action (warmup, decay, stop) once where it begins"
    )
    truncated_events: bool = Field(description=f"more than {MAX_PLOT_EVENTS} events: the first")
    superseded: list[PlotBranch] = Field(
        description="what rewinds superseded: each run of consecutive seqs, its own buckets"
    )
    truncated_superseded: bool = Field(description="more than 20 branches: the newest 20")


class RunPage(BaseModel):
    items: list[RunOut]
    next: str | None


class DecisionPage(BaseModel):
    items: list[DecisionOut]
    next: int | None


class PolicyInfo(BaseModel):
    name: str
    version: int
    params_schema: dict[str, Any]
    defaults: dict[str, Any]
    description: str
    actions: list[str]


class PolicyList(BaseModel):
    items: list[PolicyInfo]


# -- errors: every refusal is {"detail": ...}; a 422's detail is always a list of items -------


class ValidationItem(BaseModel):
    loc: list[str | int] = Field(
        description="where: 'body', 'query', 'path' or 'header', then the field's path"
    )
    msg: str = Field(description="what is wrong, for a person")
    type: str = Field(description="a stable machine-readable kind, e.g. 'float_type'")
    input: Any = Field(
        default=None,
        description="the offending value; present only when it is a number, a boolean, null or "
        "a short string (a large input is never echoed back)",
    )


class ValidationErrorOut(BaseModel):
    """422: the request is well-formed HTTP but its body or parameters are refused."""

    detail: list[ValidationItem]


class Message(BaseModel):
    """404, 409, 413, 503: one sentence saying what is wrong and what to do."""

    detail: str


# -- audit and replay ---------------------------------------------------------------------------


class RewindIn(Strict):
    to_step: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)] = Field(
        description="the step of the checkpoint the job resumed from", examples=[3000]
    )
    client: ClientIn | None = None


class RewindOut(BaseModel):
    run_id: str
    to_step: int
    rewound: bool = Field(description="false when to_step is at or past the last step")
    lrs: list[float]
    decision: DecisionOut | None = Field(description="the rewind's entry in the chain")


class ResizeIn(Strict):
    step: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)] = Field(
        description="the training step the new size applies from (at or above the last "
        "decided step)",
        examples=[12000],
    )
    world_size: Annotated[StrictInt, Field(ge=1, le=MAX_SIZE)] | None = Field(
        default=None, examples=[16]
    )
    batch_size: Annotated[StrictInt, Field(ge=1, le=MAX_SIZE)] | None = Field(
        default=None, description="the global batch size (all ranks together)"
    )
    client: ClientIn | None = None

    @model_validator(mode="after")
    def _one_size(self) -> ResizeIn:
        if (self.world_size is None) == (self.batch_size is None):
            raise PydanticCustomError(
                "one_size", "give exactly one of world_size and batch_size", {}
            )
        return self

    def measure(self) -> tuple[str, int]:
        if self.world_size is not None:
            return "world_size", self.world_size
        assert self.batch_size is not None
        return "batch_size", self.batch_size


class CheckpointIn(Strict):
    step: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)] = Field(
        description="the training step the checkpoint was saved at", examples=[12000]
    )
    ref: Annotated[Text, Field(min_length=1, max_length=MAX_REF)] = Field(
        description="the job's own name or path for the checkpoint", examples=["ckpt/step-12000.pt"]
    )
    client: ClientIn | None = None


class CheckpointOut(BaseModel):
    run_id: str
    declared: bool = Field(description="false: this step and ref were declared already (a retry)")
    decision: DecisionOut = Field(description="the checkpoint's entry in the chain")


class CheckpointItem(BaseModel):
    seq: int
    step: int
    ref: str
    created_at: str
    superseded: bool = Field(description="a rewind (or a rollback) went below its step")


class CheckpointList(BaseModel):
    run_id: str
    items: list[CheckpointItem]
    next: int | None = Field(
        default=None, description="the `after` of the following page; null on the last page"
    )


class ResizeOut(BaseModel):
    run_id: str
    step: int
    resized: bool = Field(description="false when the size was already in force")
    lrs: list[float]
    scale: dict[str, Any] = Field(description="the size in force, its factor and its step")
    decision: DecisionOut | None = Field(description="the scale entry in the chain")


class CooldownIn(Strict):
    at_step: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)] = Field(
        description="the training step the decay starts at (above the run's last step, in "
        "its stable phase)",
        examples=[12000],
    )
    steps: Annotated[StrictInt, Field(ge=1, le=MAX_STEP)] = Field(
        description="how many steps the decay lasts", examples=[2000]
    )
    shape: Annotated[Text, Field(min_length=1, max_length=32)] | None = Field(
        default=None,
        description="the decay's shape, one of the policy's (wsd@1: linear, cosine, 1-sqrt, "
        "exponential, step); omitted: the policy's own decay_type",
        examples=["1-sqrt"],
    )
    reason: Annotated[Text, Field(min_length=1, max_length=500)] | None = Field(
        default=None,
        description="why, in the operator's words: logged in the entry",
        examples=["budget cut: end the run at 14k"],
    )
    client: ClientIn | None = None


class CooldownOut(BaseModel):
    run_id: str
    at_step: int
    lrs: list[float] = Field(description="the lrs in force now (the decay starts at at_step)")
    decision: DecisionOut | None = Field(
        description="the start_cooldown entry in the chain; null when this very cooldown was "
        "in force already (a retry: nothing new is logged)"
    )


class RetimeWhatIf(Strict):
    """A retime (POST /v1/runs/{run_id}/retime), or what one would do (POST /v1/simulate)."""

    at_step: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)] = Field(
        description="the training step the new timing applies from (above the run's last step)",
        examples=[12000],
    )
    horizon: Annotated[StrictInt, Field(ge=1, le=MAX_STEP)] = Field(
        description="the training step the schedule now ends at (cosine's T_max, one_cycle's "
        "total_steps, wsd's decay end, ...), after at_step",
        examples=[30000],
    )
    mode: Literal["keep_lr", "keep_fraction"] = Field(
        description="keep_lr: keep the lr at at_step and fit the schedule's decay from there "
        "to the horizon; keep_fraction: keep the fraction of the schedule done at at_step and "
        "finish the rest by the horizon"
    )


class RetimeIn(RetimeWhatIf):
    client: ClientIn | None = None


class RetimeOut(BaseModel):
    run_id: str
    at_step: int
    lrs: list[float] = Field(description="the lrs in force now")
    decision: DecisionOut | None = Field(
        description="the retime entry in the chain; null when this very retime was in force "
        "already (a retry: nothing new is logged)"
    )


class VerifyIn(Strict):
    head: Annotated[str, Field(pattern=HASH_PATTERN)] | None = Field(
        default=None,
        description="the head hash the caller recorded (a chain alone proves only that it is "
        "consistent: whoever can write the database can recompute it)",
    )


class MismatchOut(BaseModel):
    line: int | None
    seq: int | None
    message: str
    expected: Any
    found: Any


class VerifyOut(BaseModel):
    ok: bool
    count: int = Field(description="decisions checked (both branches of a rewound run)")
    head_hash: str = Field(description="the hash of the last decision checked")
    superseded: int
    rewinds: int
    last_step: int | None
    mismatch: MismatchOut | None = None
    notes: list[str] = Field(default_factory=list)
    signed: bool = Field(
        False,
        description="whether this service signs its exports' heads (LRPILOT_SIGNING_KEY): "
        "`lrpilot verify BUNDLE --public-key` then checks an export of this run offline",
    )
    key_id: str | None = Field(
        None, description="the fingerprint of the service's signing key (what a signature names)"
    )


class BestOut(BaseModel):
    value: Number | None
    step: int | None
    mode: str


class LrChangeOut(BaseModel):
    seq: int
    step: int
    lrs: list[float]
    action: str


class SummaryOut(BaseModel):
    run_id: str
    decisions: int = Field(description="live decisions (not superseded, rewinds not counted)")
    first_step: int | None
    last_step: int | None
    best: BestOut
    lr_changes: list[LrChangeOut] = Field(
        description="each reduction, and the step where each decay began"
    )
    superseded: int
    head_hash: str
    lrs: list[float]
    clock: Clock = Field(
        default="steps",
        description="what the steps count (steps, samples or tokens consumed): the run's clock",
    )
    range_test: dict[str, Any] | None = Field(
        default=None, description="for a range_test run: the suggested lrs and how they were found"
    )
    checkpoints: list[dict[str, Any]] | None = Field(
        default=None,
        description=f"the live branch's newest {SUMMARY_CHECKPOINTS} declared checkpoints "
        "(seq, step, ref), oldest first, when the run has any or a guard (every one: GET "
        "/v1/runs/{run_id}/checkpoints)",
    )
    checkpoint_count: int | None = Field(
        default=None,
        description="how many checkpoints the live branch has declared, with `checkpoints`",
    )
    rollbacks: list[dict[str, Any]] | None = Field(
        default=None,
        description="a guarded run: each rollback's step, value, trigger, checkpoint, lrs and "
        "reason (each on the branch it left)",
    )
    guard: dict[str, Any] | None = Field(
        default=None, description="a guarded run: its rollbacks so far, the cut on its lrs, stopped"
    )


# Observations a simulate request replays, times its param groups: each answers its lrs and
# previous lrs, so it is what sizes the answer (lrpilot replay, offline, has no cap).
MAX_SIMULATE = 100_000


def check_simulate_size(values: int, groups: int) -> None:
    if values * groups > MAX_SIMULATE:
        raise PydanticCustomError(
            "simulate_size",
            "{values} values x {groups} param groups is {product}, above the bound of "
            "{bound} (values x param groups) a simulate request answers: send fewer values, "
            "or replay offline with `lrpilot simulate`",
            {"values": values, "groups": groups, "product": values * groups, "bound": MAX_SIMULATE},
        )


class SimulateIn(Strict):
    """A metric stream through a policy, stored nowhere. Give ``values`` (with ``steps``, or
    steps 1, 2, 3, ...), or ``run_id`` to take the stream of a run's live branch; ``policy``
    and ``base_lrs`` default to that run's own."""

    policy: PolicyRef | None = None
    base_lrs: BaseLrs | None = None
    metric: MetricName | None = None
    values: Annotated[list[MetricValue], Field(max_length=MAX_SIMULATE)] | None = None
    steps: (
        Annotated[
            list[Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]], Field(max_length=MAX_SIMULATE)
        ]
        | None
    ) = None
    run_id: Annotated[str, Field(pattern=RUN_ID_PATTERN)] | None = None
    retime: RetimeWhatIf | None = Field(
        default=None,
        description="what a retime would do: applied before the first observation at or "
        "after its at_step, as POST /v1/runs/{run_id}/retime would apply it",
    )

    @model_validator(mode="after")
    def _one_stream(self) -> SimulateIn:
        if (self.values is None) == (self.run_id is None):
            raise PydanticCustomError(
                "stream", "give either values (a metric stream) or run_id (a run's stream)"
            )
        if self.run_id is None and (self.policy is None or self.base_lrs is None):
            raise PydanticCustomError("policy", "values need a policy and base_lrs")
        if self.values is not None and self.base_lrs is not None:
            check_simulate_size(len(self.values), len(self.base_lrs))
        if self.steps is not None:
            if self.values is None or len(self.steps) != len(self.values):
                raise PydanticCustomError("steps", "steps must have one step a value")
            if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
                raise PydanticCustomError("steps", "steps must increase")
        return self


class SimulatedOut(BaseModel):
    step: int
    value: Number
    action: str
    lrs: list[float]
    previous_lrs: list[float]
    momentum: list[float] | None = Field(
        default=None,
        description="the momentum (Adam's betas[0]) of each param group, when the run's "
        "policy schedules it (one_cycle@2, cyclic@2); absent otherwise",
    )
    weight_decay: list[float] | None = Field(
        default=None,
        description="the weight decay of each param group, when the run's policy "
        "schedules it; absent otherwise",
    )
    reason: str
    recorded: dict[str, Any] | None = Field(
        default=None, description="with run_id: the run's own decision (action, lrs)"
    )
    scale: float | None = Field(
        default=None,
        description="with run_id, a run with a scaling rule: the factor the run's resizes had "
        "put on the lrs at this step (the what-if keeps them); absent when 1",
    )


class SimulateOut(BaseModel):
    policy: str
    params: dict[str, Any]
    base_lrs: list[float]
    count: int
    differing: int | None = Field(description="with run_id: decisions unlike the run's own")
    items: list[SimulatedOut]
