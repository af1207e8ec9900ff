"""The schema. Alembic migrations in migrations/ are the only way it changes in a database;
tests/operations/test_migrations.py checks that they and these models agree."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def _of_run(*columns: str) -> tuple[sa.PrimaryKeyConstraint, sa.ForeignKeyConstraint]:
    """A run's rows: keyed by its key and theirs, gone with it."""
    return (
        sa.PrimaryKeyConstraint("project", "run_id", *columns),
        sa.ForeignKeyConstraint(
            ["project", "run_id"], ["runs.project", "runs.run_id"], ondelete="CASCADE"
        ),
    )


class _OfRun(SQLModel):
    """The key columns of a run's rows (``_of_run`` keys them and ties them to the run)."""

    project: str = Field(sa_type=sa.String(128))
    run_id: str = Field(sa_type=sa.String(128))


class RunRow(SQLModel, table=True):
    """A run, its resolved spec and its latest policy state: read and written once a decision.
    Its key is (project, run_id): the same run_id in two projects is two runs."""

    __tablename__ = "runs"
    # the run list by last activity (GET /v1/runs?sort=activity), a page at a time
    __table_args__ = (
        sa.PrimaryKeyConstraint("project", "run_id"),
        sa.Index("ix_runs_project_activity", "project", "last_at", "run_id"),
    )

    run_id: str = Field(sa_type=sa.String(128))
    # the project whose tokens see the run; "default" in open mode and for runs made before
    # projects existed
    project: str = Field(
        default="default", sa_type=sa.String(128), sa_column_kwargs={"server_default": "default"}
    )
    policy: str = Field(sa_type=sa.String(64))  # "plateau@1"
    params: str = Field(sa_type=sa.Text)  # canonical JSON, every default filled
    base_lrs: str = Field(sa_type=sa.Text)  # canonical JSON list
    metric: str | None = Field(default=None, sa_type=sa.String(128))
    labels: str = Field(sa_type=sa.Text)  # canonical JSON object
    config_hash: str = Field(sa_type=sa.String(64))
    state: str = Field(sa_type=sa.Text)  # canonical JSON of the policy state after last_seq
    lrs: str = Field(sa_type=sa.Text)  # canonical JSON list, in force after last_seq
    last_step: int | None = Field(default=None, sa_type=sa.BigInteger)
    last_seq: int = Field(default=0, sa_type=sa.BigInteger)
    head_hash: str = Field(sa_type=sa.String(64))  # hash of decision last_seq (the chain's tip)
    reductions: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: str = Field(sa_type=sa.String(40))
    # the entry last_seq's action and created_at (the run's created_at before any): what the
    # run list shows, filters (state) and sorts (activity) on; verify checks both
    last_action: str | None = Field(default=None, sa_type=sa.String(32))
    last_at: str | None = Field(default=None, sa_type=sa.String(40))
    # aggregated mode: canonical JSON {"timeout_s", "on_timeout"}; None for a leader-mode run
    aggregate: str | None = Field(default=None, sa_type=sa.Text)
    # elastic jobs: canonical JSON {"rule", "by", "base"}; None for a run without scaling rule
    scaling: str | None = Field(default=None, sa_type=sa.Text)
    # what the run's steps count: "samples" or "tokens"; None: optimizer steps (the default)
    clock: str | None = Field(default=None, sa_type=sa.String(16))
    # a guarded run: canonical JSON {"on", "spike"?, "lr_factor", "max_rollbacks"}; None without
    guard: str | None = Field(default=None, sa_type=sa.Text)
    # the size in force: canonical JSON {"size", "factor", "step"}; None: the base, as created
    scale: str | None = Field(default=None, sa_type=sa.Text)
    # an imported run: canonical JSON {"header": the bundle's header line, "end": its trailer}
    # (what its export carries, so that the signature it came with still verifies); None for
    # a run this service created
    imported: str | None = Field(default=None, sa_type=sa.Text)


class RunLabelRow(_OfRun, table=True):
    """One row a label, so that runs can be filtered by label with an index on any database."""

    __tablename__ = "run_labels"
    __table_args__ = (*_of_run("key"), sa.Index("ix_run_labels_key_value", "key", "value"))

    key: str = Field(sa_type=sa.String(128))
    value: str = Field(sa_type=sa.String(256))


class DecisionRow(_OfRun, table=True):
    """A decision with the observation it answered; ``body`` is the hashed canonical JSON."""

    __tablename__ = "decisions"
    # Serves both "the live decision of this step" (a retry) and "the last live decision at or
    # before this step" (GET lr) with one index descent, whatever the run's length.
    __table_args__ = (
        *_of_run("seq"),
        sa.Index("ix_decisions_run_live_step", "project", "run_id", "superseded", "step"),
    )

    seq: int = Field(sa_type=sa.BigInteger)
    step: int = Field(sa_type=sa.BigInteger)
    action: str = Field(sa_type=sa.String(32))
    superseded: bool = Field(default=False)
    hash: str = Field(sa_type=sa.String(64))
    body: str = Field(sa_type=sa.Text)


class PlotTileRow(_OfRun, table=True):
    """What a run's plot reads instead of its log (store/plots.py): the min and max of the
    live branch's entries (each param group's lr, the finite metric) over a tile of
    2**level steps (key: step >> level), at every other level from the run's finest; written
    with the entries, a ``plots.CHUNK`` of seqs at a time, so that they hold the live entries
    of seqs through the run's last_seq rounded down to a CHUNK."""

    __tablename__ = "plot_tiles"
    __table_args__ = _of_run("level", "key")

    level: int = Field(sa_type=sa.Integer)
    key: int = Field(sa_type=sa.BigInteger)
    step_lo: int = Field(sa_type=sa.BigInteger)
    step_hi: int = Field(sa_type=sa.BigInteger)
    count: int = Field(sa_type=sa.BigInteger)
    lr_min: str = Field(sa_type=sa.Text)  # JSON list, a float a group (repr: exact)
    lr_max: str = Field(sa_type=sa.Text)
    metric_min: float | None = Field(default=None, sa_type=sa.Float)
    metric_max: float | None = Field(default=None, sa_type=sa.Float)


class PlotMarkRow(_OfRun, table=True):
    """A live entry that is a marker of the plot (it changed something), among the seqs the
    tiles hold: the markers of a long run without a pass over its log."""

    __tablename__ = "plot_marks"
    __table_args__ = _of_run("seq")

    seq: int = Field(sa_type=sa.BigInteger)
    step: int = Field(sa_type=sa.BigInteger)


class ReportRow(_OfRun, table=True):
    """One rank's report of a step of an aggregated run (the step's decision is taken from the
    weighted mean of the reports once every rank has reported, or at the run's timeout)."""

    __tablename__ = "reports"
    __table_args__ = _of_run("step", "rank")

    step: int = Field(sa_type=sa.BigInteger)
    rank: int = Field(sa_type=sa.Integer)
    world_size: int = Field(sa_type=sa.Integer)
    value: str = Field(sa_type=sa.String(40))  # the float's canonical token (repr, or "NaN")
    weight: float = Field(sa_type=sa.Float)
    client: str | None = Field(default=None, sa_type=sa.Text)  # canonical JSON, as declared
    by: str | None = Field(
        default=None, sa_type=sa.Text
    )  # canonical JSON: the token's name, project
    created_at: str = Field(sa_type=sa.String(40))


class TallyRow(_OfRun, table=True):
    """What the reports of a step not yet decided add up to: one row a step, written with each
    report, so that a report reads and writes O(1) rows whatever the world size."""

    __tablename__ = "report_tallies"
    __table_args__ = _of_run("step")

    step: int = Field(sa_type=sa.BigInteger)
    world_size: int = Field(sa_type=sa.Integer)
    reported: int = Field(sa_type=sa.Integer)
    first_at: str = Field(sa_type=sa.String(40))  # the first report's created_at


class RankAckRow(_OfRun, table=True):
    """What one rank of a run acknowledged applying (docs/agreement.md): one row a rank, so at
    most LRPILOT_MAX_WORLD_SIZE a run, whatever its length. Its first disagreement stays."""

    __tablename__ = "rank_acks"
    __table_args__ = _of_run("rank")

    rank: int = Field(sa_type=sa.Integer)
    world_size: int = Field(sa_type=sa.Integer)  # as the rank's last acknowledgement said
    step: int = Field(sa_type=sa.BigInteger)  # the step of its last acknowledgement
    # the step of its last acknowledgement that agreed, while it had never disagreed
    agreed_through: int | None = Field(default=None, sa_type=sa.BigInteger)
    # its first disagreement: the step and seq it acknowledged, the hash the run's lrs give,
    # the hash it sent
    bad_step: int | None = Field(default=None, sa_type=sa.BigInteger)
    bad_seq: int | None = Field(default=None, sa_type=sa.BigInteger)
    expected: str | None = Field(default=None, sa_type=sa.String(64))
    got: str | None = Field(default=None, sa_type=sa.String(64))
    acked_at: str = Field(sa_type=sa.String(40))


class TokenRow(SQLModel, table=True):
    """An API token: who it is (name), what it may do (project, role), and only the SHA-256 of
    its secret: a copy of the database gives no one a usable token."""

    __tablename__ = "tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=sa.String(128), unique=True)
    project: str = Field(sa_type=sa.String(128))
    role: str = Field(sa_type=sa.String(16))  # reader | writer | admin
    token_hash: str = Field(sa_type=sa.String(64), unique=True)  # hex SHA-256 of the secret
    created_at: str = Field(sa_type=sa.String(40))
    expires_at: str | None = Field(default=None, sa_type=sa.String(40))
    revoked_at: str | None = Field(default=None, sa_type=sa.String(40))
