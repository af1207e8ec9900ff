"""The policies: pure policy code against references (torch, keras), the golden logs of every
released version, the registry and replay."""
