"""Train a small torch model whose learning rate lrpilot decides from the validation loss.

Start the service (`lrpilot serve`), then: `python examples/train_torch.py`.
LRPILOT_URL picks another service; the run id is printed so you can read its decision log:
`curl http://127.0.0.1:8000/v1/runs/example-regression/decisions`.
"""

from __future__ import annotations

import os

import torch

from lrpilot_client import Client

torch.manual_seed(0)
x = torch.randn(512, 8)
y = x @ torch.randn(8, 1) + 0.3 * torch.randn(512, 1)  # noise sets a floor: the loss plateaus
x_train, y_train, x_val, y_val = x[:384], y[:384], x[384:], y[384:]

model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
run_id = os.environ.get("LRPILOT_RUN_ID", "example-regression")

with Client(os.environ.get("LRPILOT_URL", "http://127.0.0.1:8000")) as lrpilot:
    lrpilot.create_run(run_id, params={"patience": 2, "factor": 0.5}, base_lrs=[0.05],
                       metric="val_loss")  # fmt: skip
    for epoch in range(40):
        for i in range(0, len(x_train), 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x_train[i : i + 32]), y_train[i : i + 32])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_loss = torch.nn.functional.mse_loss(model(x_val), y_val).item()
        decision = lrpilot.observe(run_id, step=epoch, value=val_loss)
        for group, lr in zip(optimizer.param_groups, decision.lrs, strict=True):
            group["lr"] = lr
        print(f"epoch {epoch:2d} val_loss {val_loss:.5f} {decision.action:8s} {decision.lrs}")
    print(f"{run_id}: {lrpilot.get_run(run_id).counts}")
