"""One rank of a data-parallel job, as its own process (tests/domain/test_agreement.py):
``python -m tests.domain.rank_job RANK WORLD JOBS``, JOBS a JSON list of {"url", "run",
"tamper": [STEP, WHO] or null}.

For each job's run (an aggregated run that exists) a small torch model trains 30 steps with an
``LrpilotScheduler(as_rank=(RANK, WORLD))``, posting its local loss every 10 steps. From step
STEP on, rank WHO doubles its lr after each decision, before the optimizer step: the bug the
acknowledgements exist to catch. Each answer is printed as a JSON line.
"""

from __future__ import annotations

import json
import sys

import torch

from lrpilot_client import Client
from lrpilot_client.integrations.torch import LrpilotScheduler


def train(client: Client, url: str, run_id: str, rank: int, world: int, tamper: int | None) -> None:
    torch.manual_seed(rank)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = LrpilotScheduler(opt, client, run_id, policy=None, ahead=50, as_rank=(rank, world))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for _ in range(30):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if sched.last_epoch % 10 == 0:
            decision = sched.observe(1.0)  # a plateau from the start: the run reduces
            if tamper is not None and sched.last_epoch >= tamper:
                for group in opt.param_groups:
                    group["lr"] *= 2
            line = {"url": url, "run": run_id, "rank": rank, "step": decision.step,
                    "disagreements": [dict(d) for d in decision.disagreements]}  # fmt: skip
            print(json.dumps(line), flush=True)
    sched.close()


def main(argv: list[str]) -> None:
    rank, world, jobs = int(argv[0]), int(argv[1]), json.loads(argv[2])
    for job in jobs:
        tamper = job["tamper"]
        with Client(job["url"]) as client:
            mine = tamper is not None and tamper[1] == rank
            train(client, job["url"], job["run"], rank, world, tamper[0] if mine else None)


if __name__ == "__main__":
    main(sys.argv[1:])
