"""How often a worker killed at a random instant of a keyed create leaves a handler to run twice.

    python -m benchmarks.crashes [--store redis] [--kills 60] [--db-latency-ms 0] [--seed 1]

Runs ``python -m examples.funds`` on a fresh PostgreSQL database (its funds) with the chosen
idempotency store and a 1-second lease, and kills its worker with SIGKILL at a random instant of
a keyed ``POST /api/funds``, ``--kills`` times (see ``tests/examples/kills.py`` for one round).
``--db-latency-ms`` adds that many milliseconds to every round trip to PostgreSQL (through a
relay on 127.0.0.1). The tally says how many kills left a fund committed without its record, so
that the retry created it a second time. ``tests/examples/test_crashes.py`` runs a bounded
version and asserts the documented bound. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from tests.examples.kills import Example, LatencyProxy, Tally, kill_at_random

DATABASE_URL = os.environ.get(
    "PRODKIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PRODKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE = 1.0


async def run(
    store: str, kills: int, latency_ms: float, seed: int, synchronous_commit: str
) -> Tally:
    name = f"prodkit_crashes_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {synchronous_commit}')
    dsn = f"{DATABASE_URL.rpartition('/')[0]}/{name}"
    prefix = f"prodkit-crashes:{uuid.uuid4().hex[:8]}:"
    target = urlsplit(dsn)
    proxy = LatencyProxy((target.hostname or "127.0.0.1", target.port or 5432), latency_ms / 2000)
    db = None
    try:
        with proxy, tempfile.TemporaryDirectory() as tmp:
            env = {
                "DATABASE_URL": proxy.dsn(dsn) if latency_ms else dsn,
                "IDEMPOTENCY_STORE": store,
                "IDEMPOTENCY_LEASE_SECONDS": str(LEASE),
                "REDIS_URL": REDIS_URL,
                "REDIS_KEY_PREFIX": prefix,
                "RATE_LIMIT": "1000/second",
                "LOG_LEVEL": "ERROR",
            }
            example = Example(env, Path(tmp))
            try:
                db = await asyncpg.connect(dsn)

                async def funds_of(user: str) -> int:
                    assert db is not None
                    return int(
                        await db.fetchval("SELECT count(*) FROM funds WHERE user_id = $1", user)
                    )

                def report(tally: Tally) -> None:
                    print(f"\r{tally.line()}", end="", file=sys.stderr, flush=True)

                tally = await kill_at_random(
                    example,
                    funds_of,
                    kills=kills,
                    lease=LEASE,
                    rng=random.Random(seed),
                    report=report,
                )
                print(file=sys.stderr)
                return tally
            finally:
                example.close()
    finally:
        if db is not None:
            await db.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if store == "redis":
            import redis.asyncio as redis_asyncio

            client = redis_asyncio.Redis.from_url(REDIS_URL)
            async for key in client.scan_iter(match=f"{prefix}*", count=500):
                await client.delete(key)
            await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crashes", description=__doc__)
    parser.add_argument("--store", choices=["redis", "postgres"], default="redis")
    parser.add_argument("--kills", type=int, default=60)
    parser.add_argument("--db-latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="the database's synchronous_commit (off: a commit does not wait for its WAL flush)",
    )
    args = parser.parse_args(argv)
    tally = asyncio.run(
        run(args.store, args.kills, args.db_latency_ms, args.seed, args.synchronous_commit)
    )
    latency = (
        f", +{args.db_latency_ms:g} ms per PostgreSQL round trip" if args.db_latency_ms else ""
    )
    print(f"{args.store} store{latency}: {tally.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
