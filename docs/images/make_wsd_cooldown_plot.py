"""The README's cooldown on demand: ``python docs/images/make_wsd_cooldown_plot.py [PNG]``
(PNG: where to write the plot, by default wsd_cooldown.png next to this file).

Starts the real service (``lrpilot serve``, this checkout's) on a temporary SQLite file (open
mode, loopback) and makes the README's run, request for request: a ``wsd@1`` run with no
planned decay (its stable phase lasts until the run decides it), base lr 0.001, the
observations of steps 500 to 2,000, then the cooldown from step 2,600 for 1,400 steps. Then it
reads the lr of every step back (GET /lrs) and plots it against the step with matplotlib,
marking the step the README reads with GET /lr. Needs matplotlib (the plot extra).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUN = "wsd-demo"
# The README's curl commands (section "Schedules of today's training"), as they are there
SPEC = {
    "policy": {"name": "wsd", "version": 1, "params": {"num_warmup_steps": 100}},
    "base_lrs": [0.001],
    "metric": "val_loss",
}
OBSERVED = (500, 1000, 1500, 2000)
VALUE = 2.5
ASKED_AT = OBSERVED[-1]  # the last step observed when the operator asks
AT_STEP = 2600
COOLDOWN = {"at_step": AT_STEP, "steps": 1400, "reason": "budget: the run ends at step 4000"}
READ_AT = 3300  # the step whose lr the README reads (GET /lr)
STEPS = 4000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(database: Path, port: int) -> subprocess.Popen[bytes]:
    """``lrpilot serve`` of this checkout (its service/ first on the path)."""
    path = os.pathsep.join([str(REPO / "service"), str(REPO / "clients" / "python")])
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-m", "lrpilot.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--database-url", f"sqlite:///{database}"]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lrpilot serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"lrpilot serve not ready within {timeout} s")


def run_it(url: str) -> tuple[list[int], list[float], str]:
    """The run, the cooldown mid-run, and every step's lr; the cooldown entry's reason."""
    with httpx.Client(base_url=url, timeout=30) as api:
        api.put(f"/v1/runs/{RUN}", json=SPEC).raise_for_status()
        for step in OBSERVED:
            body = {"step": step, "value": VALUE}
            api.post(f"/v1/runs/{RUN}/observations", json=body).raise_for_status()
        answer = api.post(f"/v1/runs/{RUN}/cooldown", json=COOLDOWN)
        answer.raise_for_status()
        reason = answer.json()["decision"]["reason"]
        lrs = api.get(f"/v1/runs/{RUN}/lrs", params={"from": 0, "count": STEPS + 1})
        lrs.raise_for_status()
        rows = lrs.json()["lrs"]
    return list(range(STEPS + 1)), [row[0] for row in rows], reason


def plot(steps: list[int], lrs: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    ax.plot(steps, lrs, color="#2457c5", linewidth=2, label="lr (GET /lrs)")
    ax.axvline(ASKED_AT, color="#868e96", linestyle=":", linewidth=1)
    ax.annotate("POST /cooldown\n(after step 2,000)", (ASKED_AT, max(lrs) * 0.55),
                xytext=(-105, 0), textcoords="offset points", fontsize=8,
                color="#495057")  # fmt: skip
    ax.axvline(AT_STEP, color="#1864ab", linestyle="--", linewidth=1)
    ax.annotate("cosine decay\n(the default shape)\nfrom 2,600, 1,400 steps",
                (AT_STEP, max(lrs) * 0.2), xytext=(6, 0), textcoords="offset points",
                fontsize=8, color="#1864ab")  # fmt: skip
    read = lrs[READ_AT]
    ax.plot([READ_AT], [read], "o", color="#e8590c")
    ax.annotate(f"GET /lr?step={READ_AT}: {read:.4g}", (READ_AT, read), xytext=(8, 4),
                textcoords="offset points", fontsize=8, color="#e8590c")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("lr")
    ax.set_title("wsd@1: the stable phase ends when someone asks (cooldown on demand)")
    ax.set_xlim(0, STEPS)
    ax.set_ylim(0, max(lrs) * 1.08)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0]) if args else HERE / "wsd_cooldown.png"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = serve(Path(tmp) / "cooldown.db", port)
        try:
            ready(url, proc)
            steps, lrs, reason = run_it(url)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    plot(steps, lrs, out)
    print(f"wrote {out}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
