"""The real service (or any ASGI app) under uvicorn in a subprocess on 127.0.0.1.

One harness for the tests (``tests/conftest.py``'s ``live_server``, crash and restart tests) and
for bench/ (which puts the repository root on ``sys.path`` to import it), so that both run the
server exactly the same way:

    LiveServer(database_url).start()                         # lrpilot serve, as users run it
    LiveServer(target=["trivial_app:app", "--app-dir", "bench"]).start()   # python -m uvicorn

Both forms get the same uvicorn settings (``UVICORN_SETTINGS``) where the CLI accepts them.
The server writes to a log file, never a pipe: a chatty server must not block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

REPO_DIR = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_DIR / "tests" / "golden"  # frozen forever: see its README.md
# One worker (one process: its pid is the server's for CPU/RSS sampling), no access log (its
# formatting is work the trivial app would not pay for), warnings only.
UVICORN_SETTINGS = ("--workers", "1", "--no-access-log", "--log-level", "warning")
# A stopped server exits at once, without serving on for a load balancer to see it draining (a
# test that wants the drain says how long in ``env``): a second a stop, over the suite, adds up.
QUICK_STOP = {"LRPILOT_SHUTDOWN_DRAIN_S": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def serve_options() -> frozenset[str]:
    """The options ``lrpilot serve`` accepts: the CLI grows some (``--no-migrate``) over time."""
    out = subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},  # rich must not cut option names
    )
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))


class LiveServer:
    """A server subprocess: start (ready when ``ready_path`` answers 200), stop, kill, restart.

    ``target`` None runs ``lrpilot serve`` on ``database_url`` (which migrates first, unless
    ``migrate=False`` and the CLI has ``--no-migrate``); otherwise ``python -m uvicorn`` with
    ``target`` (the app and its uvicorn options, e.g. ``["--factory", "lrpilot.app:create_app"]``)
    and ``database_url``, if any, in ``LRPILOT_DATABASE_URL``. ``env`` adds to this process's
    environment. The port stays the same across restarts; the log file collects every start.
    """

    def __init__(
        self,
        database_url: str | None = None,
        port: int | None = None,
        *,
        target: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        migrate: bool = True,
        ready_path: str = "/readyz",
        log: Path | None = None,
        nofile: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        if target is None and database_url is None:
            raise ValueError("lrpilot serve needs a database_url")
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = list(target) if target is not None else None
        self.env = dict(env or {})
        self.migrate = migrate
        self.ready_path = ready_path
        self.log = log or Path(tempfile.mkdtemp(prefix="lrpilot-serve-")) / "serve.log"
        self.nofile = nofile  # the server's file descriptor limit, soft and hard (None: ours)
        self.args = list(args)  # more options of lrpilot serve, after the defaults: they win
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server is not running")
        return self.proc.pid

    def command(self) -> list[str]:
        address = ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.target is not None:
            return [sys.executable, "-m", "uvicorn", *self.target, *address, *UVICORN_SETTINGS]
        assert self.database_url is not None
        cmd = [sys.executable, "-m", "lrpilot.cli", "serve", *address,
               "--database-url", self.database_url]  # fmt: skip
        options = serve_options()
        settings = list(UVICORN_SETTINGS)
        while settings:  # pass each uvicorn setting the CLI knows, with its value if it has one
            name = settings.pop(0)
            value = [settings.pop(0)] if settings and not settings[0].startswith("--") else []
            if name in options:
                cmd += [name, *value]
        if not self.migrate and "--no-migrate" in options:
            cmd.append("--no-migrate")
        return cmd + self.args

    def start(self, timeout: float = 30.0) -> LiveServer:
        env = {**QUICK_STOP, **os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.target is not None and self.database_url is not None:
            env["LRPILOT_DATABASE_URL"] = self.database_url
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                cwd=REPO_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with any children
                preexec_fn=self._limit_files if self.nofile is not None else None,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    code, self.proc = self.proc.returncode, None
                    raise RuntimeError(f"server exited with {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(self.ready_path).status_code == 200:
                        return self
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log_tail()}")

    def _limit_files(self) -> None:  # in the child, before exec
        import resource

        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, no shutdown at all: a crash or a power cut, as far as the process can tell."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
            self.proc = None

    def restart(self, timeout: float = 30.0) -> LiveServer:
        """Stopped (gracefully) if running, then started again on the same port and database."""
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LiveServer:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DatabaseLock:
    """An sqlite3 connection holding the write lock of the service's database (BEGIN
    IMMEDIATE), as an sqlite3 shell or a backup does: every write of the service waits its
    LRPILOT_DB_TIMEOUT_S, then is answered 503 with Retry-After."""

    def __init__(self, path: Path) -> None:
        self._shell: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, timeout=0
        )
        self._shell.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._shell is not None:
            self._shell.execute("ROLLBACK")
            self._shell.close()
            self._shell = None

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


PG_BIN = Path(os.environ.get("LRPILOT_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ThrowawayPostgres:
    """A PostgreSQL server of the test's own (initdb in a temp dir, its own port, trust auth on
    127.0.0.1), for the tests that must freeze or stop the database: never the shared one that
    other tests use at the same time. ``freeze`` stops the postmaster and every backend
    (SIGSTOP: the kernel still accepts connections and acknowledges bytes, nobody answers),
    ``thaw`` lets them go on. Skips the test when there is no PostgreSQL installed."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lrpilot-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._started = False

    def _run(self, *cmd: str) -> None:
        # initdb and pg_ctl refuse to run as root: as the postgres user, then
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *cmd], check=True, capture_output=True, timeout=120, cwd="/",
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> ThrowawayPostgres:
        if not (PG_BIN / "initdb").exists():
            import pytest  # here: bench/ imports this module without pytest installed

            pytest.skip(f"no PostgreSQL server binaries in {PG_BIN}")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            import pwd

            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8")  # fmt: skip
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                  "-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir}",
                  "start")  # fmt: skip
        self._started = True
        return self

    def _postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def _children(self, postmaster: int) -> list[int]:
        """The postmaster's children: backends, background workers (Linux's /proc)."""
        path = Path(f"/proc/{postmaster}/task/{postmaster}/children")
        return [int(pid) for pid in path.read_text().split()]

    def _signal(self, pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def freeze(self) -> None:
        postmaster = self._postmaster()
        self._signal([postmaster], signal.SIGSTOP)  # first: it forks no backend after this
        self._signal(self._children(postmaster), signal.SIGSTOP)

    def thaw(self) -> None:
        postmaster = self._postmaster()
        self._signal([*self._children(postmaster), postmaster], signal.SIGCONT)

    def stop(self) -> None:
        if self._started:
            self.thaw()
            with contextlib.suppress(subprocess.SubprocessError):
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")  # fmt: skip
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ConnectionFlood:
    """Connections that hold a server's descriptors, as an attacker's would: ``idle`` ones
    connect and say nothing, ``trickling`` ones send a request's headers a line every
    ``every_s`` and never finish them. They run on a thread of their own (an event loop: ten
    thousand sockets, no thread each) from ``start`` (which returns once all are open) to
    ``stop``; the counters say what the server did with them."""

    def __init__(self, port: int, idle: int = 0, trickling: int = 0, every_s: float = 0.5) -> None:
        self.port, self.idle, self.trickling, self.every_s = port, idle, trickling, every_s
        self.closed = {"idle": 0, "trickling": 0}  # closed by the server (a 408 or nothing)
        self.timed_out = 0  # ... with a 408 first
        self.refused = 0  # answered 503 at once (the connection cap)
        self.failed = 0  # could not connect at all
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open(self) -> int:
        gone = sum(self.closed.values()) + self.refused + self.failed
        return self.idle + self.trickling - gone

    def start(self) -> ConnectionFlood:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open_all(), self._loop).result(timeout=300)
        return self

    def stop(self) -> None:
        async def close_all() -> None:
            for task in self._tasks:
                task.cancel()
            for writer in self._writers:
                writer.transport.abort()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=60)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=60)

    def __enter__(self) -> ConnectionFlood:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _open_all(self) -> None:
        kinds = ["trickling"] * self.trickling + ["idle"] * self.idle
        for at in range(0, len(kinds), 500):  # in batches: the listen backlog is finite
            await asyncio.gather(*(self._open(kind) for kind in kinds[at : at + 500]))

    async def _open(self, kind: str) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.failed += 1
            return
        self._writers.append(writer)
        self._tasks.append(asyncio.create_task(self._watch(kind, reader)))
        if kind == "trickling":
            self._tasks.append(asyncio.create_task(self._trickle(writer)))

    async def _watch(self, kind: str, reader: asyncio.StreamReader) -> None:
        try:
            answer = await reader.read(4096)
        except OSError:
            answer = b""
        if answer.startswith(b"HTTP/1.1 503"):
            self.refused += 1
            return
        self.timed_out += answer.startswith(b"HTTP/1.1 408")
        self.closed[kind] += 1

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: flood\r\n")
            for n in range(1 << 30):
                await asyncio.sleep(self.every_s)
                if writer.transport.is_closing():
                    return
                writer.write(b"x-trickle-%d: 1\r\n" % n)


@contextlib.contextmanager
def sqlite_server(name: str = "lrpilot") -> Iterator[LiveServer]:
    """``lrpilot serve`` on a fresh SQLite file in a temporary directory, both gone after the
    with block: for the scripts that draw from a real service (docs/images, bench)."""
    with (
        tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp,
        LiveServer(f"sqlite:///{Path(tmp) / f'{name}.db'}") as server,
    ):
        yield server
