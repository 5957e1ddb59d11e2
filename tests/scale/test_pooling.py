"""The example behind PgBouncer in transaction mode, the pooling a fleet of hosts needs.

Many hosts, each with a pool per worker, would hold more connections than PostgreSQL allows;
PgBouncer's transaction pooling shares a few server connections between them all. It hands
each transaction to any free server connection, so a client may keep nothing on one between
transactions: no named prepared statements (asyncpg's statement cache, unless
``statement_cache_size=0``), no session-level advisory locks, no ``SET``.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.server]


@pytest.mark.xfail(
    raises=AssertionError,
    strict=True,
    reason=(
        "examples/funds/postgres.py opens its pools with asyncpg's named prepared statements "
        "(statement_cache_size unset) and examples/funds/migrate.py holds a session-level "
        "advisory lock: both break behind transaction pooling. Remove this mark once fixed; "
        "tests/scale then runs the whole multi-host site."
    ),
)
def test_the_example_serves_behind_pgbouncer_transaction_pooling(
    pooling_problem: str | None,
) -> None:
    assert pooling_problem is None, pooling_problem
