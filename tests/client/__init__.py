"""The Python client (lrpilot_client) and its framework integrations, against the real service."""
