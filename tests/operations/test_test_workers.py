"""The suite runs in processes (pytest-xdist, `-n 2` in README's and .ci/run's command): each on
a PostgreSQL database of its own, since every test empties the database it uses."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from tests.conftest import GIVEN_POSTGRES_URL, worker_database


def test_a_worker_gets_a_database_beside_the_given_one() -> None:
    given = "postgresql+psycopg2://lrpilot_test:pw@127.0.0.1:5432/lrpilot_test?connect_timeout=5"
    assert worker_database(given, None) == given
    assert worker_database(given, "gw1") == (
        "postgresql+psycopg2://lrpilot_test:pw@127.0.0.1:5432/lrpilot_test_gw1?connect_timeout=5"
    )
    assert worker_database(None, "gw1") is None


@pytest.mark.postgres
def test_this_process_uses_its_own_database(postgres_url: str) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    assert GIVEN_POSTGRES_URL is not None  # postgres_url skips the test otherwise
    name = sa.make_url(GIVEN_POSTGRES_URL).database
    expected = f"{name}_{worker}" if worker else name
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_database()").scalar_one() == expected
    finally:
        engine.dispose()
    # and a subprocess given the variable (a script a test starts) uses the same
    assert os.environ["LRPILOT_TEST_POSTGRES_URL"] == postgres_url
