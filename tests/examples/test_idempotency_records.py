"""The example's idempotency table stays bounded under a load of fresh keys.

Issue #21, item 8: nothing deleted expired records, and 42,000 of them remained after a load
test. ``python -m examples.funds`` runs on a database of its own with a 1-second record ttl
and a sweep every half second (``IDEMPOTENCY_TTL_SECONDS``, ``IDEMPOTENCY_CLEANUP_SECONDS``);
a client sends keyed creates, each with a fresh key, for several ttls. The table never holds
most of them, it is empty once they have all expired, and ``/metrics`` counts every deleted row.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RUN_ID, fresh_database
from tests.examples.kills import FUND, Example

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.server, pytest.mark.postgres]

KEYS = 200
#: The load is paced over this many seconds: six record ttls.
LOAD_SECONDS = 6.0


@pytest.fixture
def records_dsn(postgres_server_dsn: str) -> Iterator[str]:
    """A database of this test's own: the table holds only this load's records."""
    with fresh_database(postgres_server_dsn, f"prodkit_test_{RUN_ID}_records") as dsn:
        yield dsn


def removed_total(metrics: str) -> float:
    found = re.search(r"^prodkit_idempotency_records_removed_total ([0-9.e+]+)$", metrics, re.M)
    assert found is not None, "no prodkit_idempotency_records_removed_total sample"
    return float(found.group(1))


async def test_expired_records_are_deleted_while_the_example_runs(
    records_dsn: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": records_dsn,
        "IDEMPOTENCY_LEASE_SECONDS": "0.5",
        "IDEMPOTENCY_TTL_SECONDS": "1",
        "IDEMPOTENCY_CLEANUP_SECONDS": "0.5",
        "RATE_LIMIT": "100000/second",
        "LOG_LEVEL": "WARNING",
    }
    example = Example(env, tmp_path)
    db = await asyncpg.connect(records_dsn)
    try:
        server = await example.start()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            most = 0
            started = time.monotonic()
            headers = {"X-User-Id": f"records-{uuid.uuid4().hex[:8]}"}
            for sent in range(KEYS):
                # Paced, so that the load lasts several ttls however fast the machine is.
                ahead = started + LOAD_SECONDS * sent / KEYS - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
                created = await client.post("/api/funds", json=FUND, headers=keyed)
                assert created.status_code == 201, created.text
                if sent % 10 == 0:
                    most = max(most, await db.fetchval("SELECT count(*) FROM prodkit_idempotency"))
            assert most < KEYS / 2, f"the table held {most} of {KEYS} records"

            for _ in range(100):  # bounded: 10 s, for the last records to expire
                left = await db.fetchval("SELECT count(*) FROM prodkit_idempotency")
                if left == 0:
                    break
                await asyncio.sleep(0.1)
            assert left == 0
            metrics = (await client.get("/metrics")).text
            assert removed_total(metrics) == KEYS
        assert "idempotency records cleanup failed" not in server.output()
    finally:
        example.close()
        await db.close()
