"""Redis failovers, timed: how long prodkit's Redis client cannot write when a primary dies.

Real topologies from the ``redis-server`` binary (``tests/servers/redis_topologies.py``): a
Redis Cluster of three primaries and three replicas, and a Sentinel group of one primary, one
replica and three Sentinels. The primary is killed (SIGKILL) and a client built by
:func:`prodkit._core.drivers.redis_client` — the one every prodkit store uses — writes every
50 ms until a write lands. The seconds it took are recorded (``figures``), never asserted; the
tests assert that the client writes again, on the promoted replica, with the data written
before the kill.

The multi-host version (the hosts keep serving while a Cluster primary fails over) is
``test_hosts.py::test_a_cluster_failover_under_the_hosts_fails_no_request``.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from prodkit._core.drivers import redis_client
from tests.conftest import Figures, unavailable
from tests.servers.redis_topologies import (
    collect_dropped_connections,
    redis_binaries_missing,
    redis_cluster,
    redis_sentinel,
    write_until_it_lands,
)

pytestmark = [pytest.mark.redis, pytest.mark.server]

#: Failure-detection timeouts tried (ms): Redis's defaults are 15000 (cluster-node-timeout)
#: and 30000 (down-after-milliseconds); the failover takes about that plus a second or two.
#: ``PRODKIT_SCALE_FAILOVER_TIMEOUTS=1000,3000`` measures more of them (docs/scale.md); one
#: keeps the suite's time down.
TIMEOUTS_MS = tuple(
    int(ms) for ms in os.environ.get("PRODKIT_SCALE_FAILOVER_TIMEOUTS", "1000").split(",")
)


def _require_redis() -> None:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)


@pytest.mark.parametrize("node_timeout_ms", TIMEOUTS_MS)
async def test_a_cluster_primary_failover(
    node_timeout_ms: int, tmp_path: Path, figures: Figures
) -> None:
    _require_redis()
    with redis_cluster(tmp_path, node_timeout_ms=node_timeout_ms) as topology:
        client = redis_client(topology.url)
        try:
            key = f"prodkit-test:failover:{uuid.uuid4().hex}"
            await client.set(key, "before", px=60_000)
            topology.kill(topology.primary_for(key))
            seconds = await write_until_it_lands(client, key, time.monotonic() + 60)
            assert await client.get(key) == b"after"
        finally:
            await client.aclose()
            del client
            collect_dropped_connections()
    figures(
        "redis_failover",
        topology="cluster",
        detection_timeout_ms=node_timeout_ms,
        seconds_without_writes=round(seconds, 2),
    )


@pytest.mark.parametrize("down_after_ms", TIMEOUTS_MS)
async def test_a_sentinel_failover(down_after_ms: int, tmp_path: Path, figures: Figures) -> None:
    _require_redis()
    with redis_sentinel(tmp_path, down_after_ms=down_after_ms) as group:
        client = redis_client(group.url)
        try:
            await client.set("prodkit-test:before", "before", px=60_000)
            group.kill(group.primary)
            seconds = await write_until_it_lands(
                client, "prodkit-test:after", time.monotonic() + 60
            )
            assert group.current_primary() == group.replica
            assert await client.get("prodkit-test:before") == b"before"
        finally:
            await client.aclose()
            del client
            collect_dropped_connections()
    figures(
        "redis_failover",
        topology="sentinel",
        detection_timeout_ms=down_after_ms,
        seconds_without_writes=round(seconds, 2),
    )
