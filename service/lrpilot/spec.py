"""What a run is: one model family for every shape of a run, and the rules of its parts.

The shapes derive from one base, as in the FastAPI template's ``ItemBase`` / ``ItemCreate`` /
``ItemPublic``, so that a field added to a run is added once:

- ``RunSpec``: what a client asks for (``PUT /v1/runs/{run_id}``'s body), validated here once:
  strings every database can hold, strict numbers, aggregate and scaling specs;
- ``RunStored(RunSpec)``: the run as created, params resolved (every default filled), with its
  id, config hash and creation time: what the store keeps and a bundle's header carries;
- ``RunPublic(RunStored)``: what ``GET /v1/runs/{run_id}`` serves: the stored run and where its
  log stands.

The run's head, what the decide path needs of it (``lrpilot.domain.head.RunHead``), is a
``RunStored`` with its log's position. Also here: the scaling rule's arithmetic (``ScalingSpec``,
``InForce``, ``scaled``), which every shape of a run and every entry builder share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lrpilot.canonical import NON_FINITE

# [A-Za-z0-9._-]{1,128} but "." and "..", which a URL's path cannot carry as a segment (every
# client resolves /v1/runs/../x to /v1/x). Written without a lookahead: pydantic's regex engine
# has none, and the fast path embeds the pattern in its own.
RUN_ID_PATTERN = (
    r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"  # not starting with a dot
    r"|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}"  # a dot, then not a dot
    r"|\.\.[A-Za-z0-9._-]{1,126})$"  # two dots, then anything
)
RUN_ID_RULE = "[A-Za-z0-9._-]{1,128}, not '.' or '..'"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9._/-]{1,128}$"
MAX_LABEL_VALUE = 256
MAX_SIZE = 2**31 - 1  # the largest world or batch size a scaling rule takes
MAX_GUARD_WINDOW = 1000  # a zscore guard holds this many values at the most (in its state)
MAX_PARAM_GROUPS = 1024
# What a run's steps count: optimizer steps, or the samples or tokens consumed so far. In a
# samples or tokens run an observation's and an lr read's `step` is that position, and the
# policy's horizons are written in it: the policies never know (docs/schedules.md, Clocks).
Clock = Literal["steps", "samples", "tokens"]

# A lone surrogate cannot be encoded to UTF-8 (JSON's "\ud800" parses to one), and PostgreSQL
# text cannot hold NUL: either would fail in the database or in the response, so no string
# that could be stored, compared in SQL or echoed may carry them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MSG = "must not contain a NUL character or a lone surrogate (U+D800 to U+DFFF)"


def is_storable(text: str) -> bool:
    # NUL is ASCII, surrogates are not: the common all-ASCII string costs two C scans.
    return "\x00" not in text and (text.isascii() or _UNSTORABLE.search(text) is None)


def _storable(v: Any) -> Any:
    if isinstance(v, str) and not is_storable(v):
        raise PydanticCustomError("string_unstorable", UNSTORABLE_MSG)
    return v


def storable_json(v: Any) -> Any:
    """Every string in a JSON value (keys too), walked without recursion: params nest freely.
    The message names the place, since the loc can only name the field."""
    stack: list[tuple[str, Any]] = [("", v)]
    while stack:
        path, item = stack.pop()
        where = None
        if isinstance(item, str):
            if not is_storable(item):
                where = f"{path[:128]!r} " if path else ""
        elif isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and not is_storable(key):
                    where = f"the key {ascii(key)[:64]}" + (f" in {path[:128]!r} " if path else " ")
                    break
                stack.append((f"{path}.{key}" if path else str(key), value))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", x) for i, x in enumerate(item))
        if where is not None:
            raise PydanticCustomError(
                "string_unstorable", "{where}" + UNSTORABLE_MSG, {"where": where}
            )
    return v


# Checked before pydantic's own str validation, which may refuse a surrogate with a message
# about "raw data" that does not say what is wrong.
Text = Annotated[str, BeforeValidator(_storable)]


def _metric_value(v: Any) -> Any:
    # JSON numbers, the tokens NaN/Infinity/-Infinity (json.loads makes floats of them) and
    # exactly the three strings; never booleans or numeric strings, which hide client bugs.
    if isinstance(v, bool) or (isinstance(v, str) and v not in NON_FINITE):
        raise PydanticCustomError(
            "metric_value",
            "must be a number or one of the strings 'NaN', 'Infinity', '-Infinity', got {got}",
            {"got": repr(v)[:64]},  # a huge string is not echoed whole
        )
    return NON_FINITE[v] if isinstance(v, str) else v


MetricValue = Annotated[float, BeforeValidator(_metric_value)]
# Strict, as `value` is: true and "0.2" are client bugs, not learning rates; JSON ints are fine.
LearningRate = Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)]
BaseLrs = Annotated[list[LearningRate], Field(min_length=1, max_length=MAX_PARAM_GROUPS)]
MetricName = Annotated[Text, Field(min_length=1, max_length=128)]
LabelKey = Annotated[Text, Field(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[Text, Field(max_length=MAX_LABEL_VALUE)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _policy_names() -> list[str]:
    from lrpilot.policies import POLICIES  # the registry imports the policies: only when asked

    return sorted({p.name for p in POLICIES.values()})


class PolicyRef(Strict):
    """Which released policy version decides, with which params."""

    name: Annotated[
        Text,
        Field(min_length=1, max_length=64, json_schema_extra={"enum": _policy_names()}),
    ] = Field(examples=["plateau"])
    version: Annotated[StrictInt, Field(ge=1)] = Field(examples=[1])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"patience": 5, "factor": 0.5}])

    # The policy validates params (strictly typed fields); no string in them may reach its
    # error messages, the stored spec or the 409 text unless it can be stored and echoed.
    @field_validator("params", mode="before")
    @classmethod
    def _params_storable(cls, v: Any) -> Any:
        return storable_json(v)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


class AggregateSpec(Strict):
    """Aggregated mode: every rank posts its local metric; the step's decision is taken once,
    from the weighted mean, when all ranks have reported (or at the timeout)."""

    timeout_s: Annotated[StrictFloat, Field(gt=0.0, le=3600.0)] = Field(
        description="how long a step waits for its missing ranks after its first report",
        examples=[60],
    )
    on_timeout: Literal["decide", "refuse"] = Field(
        description="decide: decide from the ranks present (the reason names them); refuse: "
        "answer 409 naming the missing ranks, and decide the step once every rank reported",
        examples=["decide"],
    )


class ScalingSpec(Strict):
    """Elastic jobs: when the job reports another world_size or global batch size, a scale
    entry rescales the lrs (the policy's lrs times the rule's factor).

    ``linear``: size / base (Goyal et al.'s "larger batches need a proportionally larger lr");
    ``sqrt``: its square root, the rule often used with adaptive optimizers. The policy itself
    never sees the factor: its state, floors and plateau detection are those of the base size,
    so a resize never looks like a plateau and the lrs come back exactly when the size does."""

    rule: Literal["linear", "sqrt"] = Field(
        description="linear: lrs x size/base (larger batches, proportionally larger lrs); "
        "sqrt: lrs x sqrt(size/base)",
        examples=["linear"],
    )
    by: Literal["world_size", "batch_size"] = Field(
        description="world_size: read from the observations' world_size (and POST resize); "
        "batch_size: the job's global batch size, given by POST resize",
        examples=["world_size"],
    )
    base: Annotated[StrictInt, Field(ge=1, le=MAX_SIZE)] = Field(
        description="the size base_lrs were tuned for", examples=[8]
    )


class RatioSpike(Strict):
    """A spike: the metric above ``ratio`` times the best (lowest) value of the live branch."""

    rule: Literal["ratio"]
    ratio: Annotated[StrictFloat, Field(gt=1.0, le=1e6)] = Field(
        description="a value above ratio x the best value so far is a spike", examples=[2.0]
    )


class ZscoreSpike(Strict):
    """A spike: the metric more than ``k`` standard deviations above the mean of the last
    ``window`` values of the live branch (checked once the window is full)."""

    rule: Literal["zscore"]
    k: Annotated[StrictFloat, Field(gt=0.0, le=1e6)] = Field(examples=[4.0])
    window: Annotated[StrictInt, Field(ge=2, le=MAX_GUARD_WINDOW)] = Field(examples=[50])


class GuardSpec(Strict):
    """A guard around a run's policy: a non-finite metric (``"nan"``) or a spike by the rule
    (``"spike"``) is decided as a ``rollback`` to the newest checkpoint the job declared before
    the trouble's step, with the lrs cut by ``lr_factor`` (lrpilot.guard, docs/guard.md).
    The metric is taken as a loss (lower is better)."""

    on: Annotated[list[Literal["nan", "spike"]], Field(min_length=1, max_length=2)] = Field(
        description="what is trouble: a non-finite metric, a spike by the rule",
        examples=[["nan", "spike"]],
    )
    spike: Annotated[RatioSpike | ZscoreSpike, Field(discriminator="rule")] | None = Field(
        default=None, description='the spike rule; required when "on" has "spike"'
    )
    lr_factor: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = Field(
        default=0.5, description="each rollback multiplies the lrs by it"
    )
    max_rollbacks: Annotated[StrictInt, Field(ge=0, le=1000)] = Field(
        default=3, description="after this many rollbacks, trouble is decided as stop"
    )

    @model_validator(mode="after")
    def _spike_rule(self) -> GuardSpec:
        if len(set(self.on)) != len(self.on):
            raise PydanticCustomError("guard", '"on" names a trigger twice')
        if ("spike" in self.on) != (self.spike is not None):
            raise PydanticCustomError(
                "guard",
                '"spike" (the rule) is required exactly when "on" has "spike"',
            )
        return self


def factor(spec: Mapping[str, Any], size: int) -> float:
    """What a scaling rule multiplies the base lrs by at ``size`` (1.0 at the base size)."""
    ratio = size / spec["base"]  # two ints: one correctly rounded division
    return ratio if spec["rule"] == "linear" else math.sqrt(ratio)  # sqrt: correctly rounded


def scaled(lrs: Iterable[float], by: float) -> list[float]:
    """The lrs a run serves: the policy's, times the factor in force."""
    if by == 1.0:
        return list(lrs)
    return [lr * by for lr in lrs]


@dataclass(frozen=True, slots=True)
class InForce:
    """The size a run's lrs are scaled for, the factor, and the step its scale entry applies
    from (None: the base size, since the start)."""

    size: int
    factor: float = 1.0
    step: int | None = None

    def doc(self) -> dict[str, Any]:
        return {"size": self.size, "factor": self.factor, "step": self.step}

    @staticmethod
    def of(spec: Mapping[str, Any] | None, doc: Mapping[str, Any] | None) -> InForce | None:
        """A run's scale in force from its scaling spec and stored scale (None: no rule)."""
        if spec is None:
            return None
        if doc is None:
            return InForce(spec["base"])
        return InForce(int(doc["size"]), float(doc["factor"]), doc["step"])


# -- the shapes of a run ------------------------------------------------------------------------


class RunSpec(Strict):
    """What a client asks for when it creates a run (the body of PUT /v1/runs/{run_id})."""

    policy: PolicyRef
    base_lrs: BaseLrs = Field(examples=[[0.1]])
    metric: MetricName | None = Field(default=None, examples=["val_loss"])
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=64)] = Field(
        default_factory=dict
    )
    aggregate: AggregateSpec | None = Field(
        default=None,
        description="aggregated mode (every rank posts, one decision from their weighted "
        "mean); omitted: leader mode",
    )
    scaling: ScalingSpec | None = Field(
        default=None,
        description="elastic jobs: rescale the lrs when the job's world_size or global batch "
        "size changes; omitted: lrs never rescale",
    )
    clock: Clock = Field(
        default="steps",
        description="what the run's steps count: optimizer steps, or the samples or tokens "
        "consumed so far (observations and lr reads give that position; the policy's horizons "
        "are written in it, so a batch-size change does not bend the schedule)",
        examples=["tokens"],
    )
    guard: GuardSpec | None = Field(
        default=None,
        description="roll back to the newest declared checkpoint on a non-finite metric or a "
        "spike, with the lrs cut (docs/guard.md); omitted: no guard",
    )

    def spec_doc(self) -> dict[str, Any]:
        """The spec as documents keep it: the optional parts only when the run has them (runs
        without them keep the shape, and so the hashes, they always had)."""
        doc: dict[str, Any] = {
            "policy": self.policy.model_dump(),
            "base_lrs": list(self.base_lrs),
            "metric": self.metric,
            "labels": dict(self.labels),
        }
        if self.aggregate is not None:
            doc["aggregate"] = self.aggregate.model_dump()
        if self.scaling is not None:
            doc["scaling"] = self.scaling.model_dump()
        if self.clock != "steps":
            doc["clock"] = self.clock
        if self.guard is not None:
            doc["guard"] = self.guard.model_dump(exclude_none=True)
        return doc


class RunStored(RunSpec):
    """A run as created: params resolved, with its id, config hash and creation time; what a
    bundle's header carries (``header_doc``)."""

    run_id: Annotated[str, Field(pattern=RUN_ID_PATTERN)]
    config_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    created_at: Annotated[Text, Field(max_length=40)]

    def header_doc(self) -> dict[str, Any]:
        """What the run is, not where it stands (that is the log's): a bundle's header."""
        return {
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "created_at": self.created_at,
            **self.spec_doc(),
        }


class Counts(BaseModel):
    decisions: int
    reductions: int


class RunPublic(RunStored):
    """What GET /v1/runs/{run_id} serves: the run and where its log stands."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    head_hash: str = Field(
        description="the hash of the run's last entry (before any: the hash of the run itself, "
        "which its first entry links to)"
    )
    lrs: list[float]
    last_step: int | None
    last_seq: int
    last_action: str | None = Field(
        default=None,
        description='the action of the run\'s last entry (null before any); "stop": the '
        "run has stopped (GET /v1/runs?state=stopped)",
    )
    last_decision_at: str | None = Field(
        default=None, description="when the run's last entry was made (null before any)"
    )
    counts: Counts
    status: Literal["active"] = Field(
        default="active", description="always 'active' in API v1 (kept for compatibility)"
    )
    scale: dict[str, Any] | None = Field(
        default=None,
        description="with `scaling`: the size in force, its factor on the lrs, and the step "
        "it applies from (null: the base size, from the start)",
    )


PUBLIC_ORDER = (
    "run_id", "policy", "base_lrs", "metric", "labels", "config_hash", "head_hash", "lrs",
    "last_step", "last_seq", "last_action", "last_decision_at", "counts", "status",
    "created_at", "aggregate", "scaling", "scale", "clock", "guard",
)  # fmt: skip
