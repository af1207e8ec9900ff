"""Observation -> decision, one module a concern. No SQL and no HTTP here.

- ``deciding``: one observation decided into an entry of the run's log, a retry answered, a
  new run made; pure functions that offline tools share with the service;
- ``aggregated``: aggregated steps, every rank reporting, one decision from their mean;
- ``scaling``: elastic jobs, a resize rescaling the lrs by the run's scaling rule;
- ``waiting``: readers and ranks waiting for a decision, holding no thread;
- ``ranges``: the lrs at one step and over a range of steps;
- ``decisions``: the decision path of the service over the store (``Decisions``);
- ``logs``: a run's log over the store: export, import, verify, rewind, summary (``Audit``);
- ``commit``: group commit, the strategies ``lrpilot.app`` chooses between;
- ``errors``: what the domain refuses; the api turns each into its HTTP status.

This package's ``__init__`` imports nothing, so that ``lrpilot.entries`` and the store can
import ``lrpilot.domain.errors`` without pulling in the rest.
"""
