"""``python -m lrpilot.cli``: the ``lrpilot`` command."""

from lrpilot.cli import main

main()
