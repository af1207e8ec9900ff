"""A run's log offline: the bundle (``bundle``), the check that proves it (``verify``), the
signature of an export's head (``signing``) and what-if (``simulate``). Pure: no database, no
server; ``lrpilot verify`` and ``lrpilot simulate`` run them on a file alone."""
