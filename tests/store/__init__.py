"""The store layer: per-run serialisation, group commit, O(1) work per decision."""
