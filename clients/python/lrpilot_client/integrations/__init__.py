"""Framework integrations: an lrpilot run as a torch scheduler, a transformers or Lightning
callback, a Keras callback.

Each lives in its own module and imports its framework there, so this package imports none:
`from lrpilot_client.integrations.torch import LrpilotScheduler` needs torch, and nothing else
of the service's (`pip install 'lrpilot-client[torch]'`, `[transformers]`, `[lightning]`,
`[keras]`).

- `torch`: `LrpilotScheduler`, a `torch.optim.lr_scheduler.LRScheduler`: `scheduler.step()`
  every training step, `scheduler.observe(val_loss)` at each evaluation;
- `transformers`: `LrpilotCallback`, a `TrainerCallback`:
  `Trainer(..., callbacks=[LrpilotCallback(client, run_id, ...)])`;
- `lightning`: `LrpilotCallback`, a `lightning.pytorch.Callback`:
  `Trainer(callbacks=[LrpilotCallback(client, run_id, ...)])`;
- `keras`: `LrpilotCallback`, a `keras.callbacks.Callback`:
  `model.fit(..., callbacks=[LrpilotCallback(client, run_id, ...)])`.
"""

from __future__ import annotations

__all__: list[str] = []
