"""The example behind PgBouncer in transaction mode, the pooling a fleet of hosts needs.

Many hosts, each with a pool per worker, would hold more connections than PostgreSQL allows;
PgBouncer's transaction pooling shares a few server connections between them all. It hands
each transaction to any free server connection, so a client may keep nothing on one between
transactions: no named prepared statements (asyncpg's statement cache, unless
``statement_cache_size=0``), no session-level advisory locks, no ``SET``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import RUN_ID, Figures, fresh_database, unavailable
from tests.examples.test_outages import CLIENTS, Load, readyz_turns, served
from tests.examples.test_outages import unavailable as unavailable_answer
from tests.scale.site import pgbouncer, pgbouncer_missing, transaction_pooling_problem
from tests.servers import HOST, free_port, run_server

pytestmark = [pytest.mark.postgres, pytest.mark.server]

#: How often PgBouncer's console drops every connection of the example's database.
KILL_ROUNDS = 6


def test_the_example_serves_behind_pgbouncer_transaction_pooling(
    postgres_server_dsn: str, tmp_path: Path
) -> None:
    if (missing := pgbouncer_missing()) is not None:
        unavailable(missing)
    with fresh_database(postgres_server_dsn, f"prodkit_scale_{RUN_ID}_probe") as dsn:
        problem = transaction_pooling_problem(tmp_path, dsn)
    assert problem is None, problem


@pytest.mark.parametrize("fault", ["pgbouncer killed", "connections killed"])
async def test_losing_pgbouncer_mid_request_is_answered_503_never_500(
    postgres_server_dsn: str, tmp_path: Path, fault: str, figures: Figures
) -> None:
    # The example (two workers, the PostgreSQL idempotency store) behind a PgBouncer on
    # loopback, under a load of every operation from a few clients. Then PgBouncer dies
    # (SIGKILL: every connection reset, new ones refused) and is started again; or its console
    # drops every client and server connection at once (KILL), cutting statements, commits and
    # claims mid-flight, and lets them connect again. Every answer is a 2xx or 4xx, or a 503
    # problem with Retry-After: never a 500.
    if (missing := pgbouncer_missing()) is not None:
        unavailable(missing)
    with (
        fresh_database(postgres_server_dsn, f"prodkit_scale_{RUN_ID}_outage") as dsn,
        pgbouncer(tmp_path, listen=HOST, server_dsn=dsn, pool_size=4) as bouncer,
    ):
        port = free_port()
        env = {
            "DATABASE_URL": bouncer.dsn(),
            "RATE_LIMIT": "100000/second",
            "ALLOW_PER_WORKER_DATA": "1",  # the cache: each worker its own, no Redis needed
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
        }
        args = ["examples.funds", "--port", str(port), "--workers", "2"]
        with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
            async with (
                httpx.AsyncClient(base_url=server.base_url, timeout=30) as http,
                httpx.AsyncClient(base_url=server.base_url, timeout=10) as probe,
            ):
                await readyz_turns(probe, 200, within=30)
                load = Load(http)
                clients = [asyncio.create_task(load.client(i)) for i in range(CLIENTS)]
                try:
                    await load.until("before", served, within=30)
                    load.phase = "cut"
                    if fault == "pgbouncer killed":
                        await asyncio.to_thread(bouncer.kill)
                        await load.until("cut", unavailable_answer, within=30)
                        await asyncio.to_thread(bouncer.start)
                    else:
                        # Again and again: each round catches the connections the pools
                        # opened since the last, some mid-statement, some idle in the pool
                        # (those fail on their next statement).
                        for _ in range(KILL_ROUNDS):
                            await asyncio.to_thread(bouncer.admin, f"KILL {bouncer.database}")
                            await asyncio.to_thread(bouncer.admin, f"RESUME {bouncer.database}")
                            await asyncio.sleep(0.5)
                    load.phase = "restored"
                    back = time.monotonic()
                    await readyz_turns(probe, 200, within=30)
                    await load.until("restored", served, within=30)
                    serving_again = time.monotonic() - back
                finally:
                    load.stop.set()
                    await asyncio.gather(*clients)
            output = server.output()

    assert load.failures == []
    wrong = [a for a in load.answers if not (served(a) or a.status == 503)]
    assert wrong == [], Counter((a.operation, a.status) for a in wrong)
    unavailable_codes = {"DEPENDENCY_UNAVAILABLE", "IDEMPOTENCY_STORE_UNAVAILABLE"}
    for answer in load.answers:
        if answer.status == 503:
            assert answer.content_type == "application/problem+json", answer
            assert answer.code in unavailable_codes, answer
            assert answer.retry_after is not None, answer
            assert int(answer.retry_after) >= 1, answer
    if fault == "pgbouncer killed":
        assert any(a.status == 503 for a in load.answers if a.phase == "cut")
    assert "unhandled exception" not in output
    figures(
        "pgbouncer_outage",
        fault=fault,
        answers=len(load.answers),
        answered_503=sum(1 for a in load.answers if a.status == 503),
        seconds_until_every_endpoint_served_again=round(serving_again, 1),
    )
