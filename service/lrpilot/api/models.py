"""Request and response shapes of the HTTP API (v1); see DESIGN.md for the contract."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from lrpilot.canonical import NON_FINITE

RUN_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
MAX_STEP = 2**62  # fits a BIGINT on every database


def _metric_value(v: Any) -> Any:
    # JSON numbers, the tokens NaN/Infinity/-Infinity (json.loads makes floats of them) and
    # exactly the three strings; never booleans or numeric strings, which hide client bugs.
    if isinstance(v, bool) or (isinstance(v, str) and v not in NON_FINITE):
        raise PydanticCustomError(
            "metric_value",
            "must be a number or one of the strings 'NaN', 'Infinity', '-Infinity', got {got}",
            {"got": repr(v)},
        )
    return NON_FINITE[v] if isinstance(v, str) else v


MetricValue = Annotated[float, BeforeValidator(_metric_value)]
LearningRate = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
LabelKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,128}$")]
LabelValue = Annotated[str, Field(max_length=256)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyRef(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)] = Field(examples=["plateau"])
    version: Annotated[StrictInt, Field(ge=1)] = Field(examples=[1])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"patience": 5, "factor": 0.5}])


class RunIn(Strict):
    policy: PolicyRef
    base_lrs: Annotated[list[LearningRate], Field(min_length=1, max_length=1024)] = Field(
        examples=[[0.1]]
    )
    metric: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, examples=["val_loss"]
    )
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=64)] = Field(
        default_factory=dict
    )


class ObservationIn(Strict):
    step: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]
    value: MetricValue
    rank: Annotated[StrictInt, Field(ge=0)] | None = None
    world_size: Annotated[StrictInt, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _rank_in_world(self) -> ObservationIn:
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise PydanticCustomError(
                "rank_out_of_world",
                "rank {rank} must be < world_size {world_size}",
                {"rank": self.rank, "world_size": self.world_size},
            )
        return self


# -- responses (documentation of what the routes write; non-finite floats are strings) --------

Number = float | str


class PolicyOut(BaseModel):
    name: str
    version: int
    params: dict[str, Any]


class Counts(BaseModel):
    decisions: int
    reductions: int


class RunOut(BaseModel):
    run_id: str
    policy: PolicyOut
    base_lrs: list[float]
    metric: str | None
    labels: dict[str, str]
    config_hash: str
    lrs: list[float]
    last_step: int | None
    last_seq: int
    counts: Counts
    status: str
    created_at: str


class DecisionOut(BaseModel):
    run_id: str
    seq: int
    step: int
    value: Number
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


class LrOut(BaseModel):
    run_id: str
    step: int | None
    lrs: list[float]
    seq: int | None
    decided_at_step: int | None


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
