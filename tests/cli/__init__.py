"""The lrpilot command: serve, plot, keygen, export, import, verify, replay."""
