"""/v1/simulate: what a policy would decide for a metric stream, stored nowhere (what-if)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from lrpilot.api.auth import Reader
from lrpilot.api.deps import AuditDep
from lrpilot.api.models import MAX_SIMULATE, SimulateIn, SimulateOut
from lrpilot.api.responses import INVALID, NOT_FOUND, UNAVAILABLE, StrictJSONResponse
from lrpilot.audit.bundle import Asked, Recorded
from lrpilot.audit.simulate import Item, Retime, Setup, run_setup
from lrpilot.domain.errors import Conflict, Invalid
from lrpilot.policies import PolicyError
from lrpilot.policies.base import EXTRAS
from lrpilot.spec import scaled

router = APIRouter(prefix="/v1/simulate", tags=["audit"])


@router.post(
    "",
    response_model=SimulateOut,
    responses={
        **NOT_FOUND,
        409: {"description": f"the run's observations x param groups are more than {MAX_SIMULATE}"},
        **INVALID,
        **UNAVAILABLE,
    },
)
def simulate(body: SimulateIn, audit: AuditDep, caller: Reader) -> Response:
    recorded: list[Recorded] | None = None
    if body.run_id is not None:
        # the run named in the body is the caller's project's, as one named in a path
        run, logged = audit.recorded(caller.run(body.run_id), MAX_SIMULATE)
        # its observations and decisions; its cooldowns and retimes stand in the what-if too
        recorded = None if logged is None else [r for r in logged if isinstance(r, Recorded)]
        if body.base_lrs is not None:
            run = run.model_copy(update={"base_lrs": body.base_lrs})
        groups = len(run.base_lrs)
        if recorded is None or len(recorded) * groups > MAX_SIMULATE:
            many = "more than " if recorded is None else ""
            count = MAX_SIMULATE if recorded is None else len(recorded)
            raise Conflict(
                f"run {body.run_id!r} has {many}{count} observations x {groups} param groups, "
                f"above the bound of {MAX_SIMULATE} (observations x param groups) a simulate "
                "request answers: replay its export offline with `lrpilot simulate`"
            )
        # the run's own params with the given ones on top (what `lrpilot replay --set` does);
        # another policy version starts from its own defaults
        policy = body.policy
        setup = run_setup(
            run,
            policy.params if policy else {},
            f"{policy.name}@{policy.version}" if policy else None,
        )
        assert logged is not None
        stream: list[Item] = [r if isinstance(r, Asked) else (r.step, r.value) for r in logged]
    else:
        assert body.policy is not None and body.base_lrs is not None and body.values is not None
        policy = body.policy
        setup = Setup.of(
            policy.name, policy.version, policy.params, body.base_lrs, body.metric or "metric"
        )
        steps = body.steps or list(range(1, len(body.values) + 1))
        stream = list(zip(steps, body.values, strict=True))
    what_if = None if body.retime is None else Retime(**body.retime.model_dump())
    try:
        items: list[dict[str, Any]] = list(setup.decisions(stream, what_if))
    except PolicyError as exc:  # the retime asked for cannot be applied to this run
        raise Invalid(["body", "retime"], str(exc), kind="retime") from None
    differing = None
    if recorded is not None:
        differing = 0
        for item, rec in zip(items, recorded, strict=True):
            if rec.scale != 1.0:  # the run's resizes stand in the what-if (as lrpilot replay)
                item["lrs"] = scaled(item["lrs"], rec.scale)
                item["previous_lrs"] = scaled(item["previous_lrs"], rec.scale)
                item["scale"] = rec.scale
            extras = {k: list(v) for k, v in rec.extras().items()}
            item["recorded"] = {"action": rec.action, "lrs": list(rec.lrs), **extras}
            differing += (
                item["action"] != rec.action
                or tuple(item["lrs"]) != rec.lrs
                or extras != {k: item[k] for k in EXTRAS if k in item}
            )
    return StrictJSONResponse(
        {
            "policy": setup.policy_id,
            "params": setup.params.model_dump(),
            "base_lrs": list(setup.base_lrs),
            "count": len(items),
            "differing": differing,
            "items": items,
        }
    )
