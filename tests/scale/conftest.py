"""One multi-host site per test session: three hosts, HAProxy, PgBouncer, a Redis Cluster.

    client ──> HAProxy 127.0.0.1 ──> host 0 ┐  (a network namespace each, at 169.254.N.10-12,
                                 ──> host 1 ├── python -m examples.funds --workers 2)
                                 ──> host 2 ┘
    the hosts ──> 169.254.N.1 (root end of the bridge): PgBouncer ──> PostgreSQL 127.0.0.1
                                                        Redis Cluster (3 primaries, 3 replicas)

HAProxy's second frontend splits the traffic between two host groups for progressive
rollouts: the baseline (hosts 0 and 1) and the canary (host 2), whose hosts reach the database
under a PgBouncer alias of their own. A Prometheus scraping every host each second, labelled
with its group, is started for the tests that need it. The hosts start on an empty database
and migrate it themselves.

Skipped where namespaces, HAProxy, PgBouncer or redis-server are missing (failed under
``CI=true``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import pytest

from tests.conftest import RUN_ID, fresh_database, run_sync, unavailable
from tests.scale.network import Network, host_network, namespaces_unavailable
from tests.scale.site import (
    APP_PORT,
    Bouncer,
    FundsHost,
    Proxy,
    binary,
    funds_hosts,
    haproxy,
    pgbouncer,
)
from tests.servers.prometheus import (
    PrometheusServer,
    configuration,
    prometheus,
    prometheus_missing,
)
from tests.servers.redis_topologies import Topology, redis_binaries_missing, redis_cluster

HOSTS = 3
#: Two host groups for progressive rollouts (indexes into the hosts), each behind a server of
#: HAProxy's ``groups`` backend.
GROUPS = {"baseline": (0, 1), "canary": (2,)}
#: The database name (a PgBouncer alias of the site's database) the canary group uses.
CANARY_DATABASE = "funds_canary"
#: The one rate limit of the site: per client, for all hosts together.
RATE_LIMIT_PER_MINUTE = 60


@dataclass
class Site:
    """The running site: HAProxy's URL, the hosts, and what they share."""

    url: str
    hosts: list[FundsHost]
    network: Network
    bouncer: Bouncer
    cluster: Topology
    database_dsn: str  # straight to PostgreSQL, for the tests' own queries
    proxy: Proxy

    def group(self, name: str) -> list[FundsHost]:
        """The hosts of the group ``name`` (``"baseline"`` or ``"canary"``)."""
        return [self.hosts[index] for index in GROUPS[name]]

    def names_of(self, group: str) -> set[str]:
        """The names HAProxy gives the hosts of ``group`` in ``X-Served-By``."""
        return {f"host{index}" for index in GROUPS[group]}

    @property
    def names(self) -> set[str]:
        """The names HAProxy gives the hosts in ``X-Served-By``."""
        return {f"host{index}" for index in range(len(self.hosts))}


_PACKAGES = {"haproxy": "haproxy", "pgbouncer": "pgbouncer", "psql": "postgresql-client"}


def _missing(*binaries: str) -> str | None:
    for name in binaries:
        if binary(name) is None:
            return f"{name} is not installed (apt-get install -y {_PACKAGES[name]})"
    return None


@pytest.fixture(scope="session")
def scale_database(postgres_server_dsn: str) -> Iterator[str]:
    """An empty database for the site, dropped at the end of the session: the hosts migrate it
    as they start, all together. Every statement is bounded on the database itself, as
    docs/scale.md asks behind PgBouncer (the example's own bound, a startup parameter, does
    not get through it)."""
    missing = _missing("pgbouncer")
    if missing:
        unavailable(missing)
    with fresh_database(postgres_server_dsn, f"prodkit_scale_{RUN_ID}") as dsn:
        run_sync(
            lambda: _execute(
                dsn, f"ALTER DATABASE \"prodkit_scale_{RUN_ID}\" SET statement_timeout = '2s'"
            )
        )
        yield dsn


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, scale_database: str) -> Iterator[Site]:
    """The site, built once for the session and taken down afterwards (on failure too)."""
    missing = _missing("haproxy", "psql") or redis_binaries_missing() or namespaces_unavailable()
    if missing:
        unavailable(missing)
    tmp = tmp_path_factory.mktemp("scale")
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(host_network(HOSTS))
        dsn = scale_database
        bouncer = stack.enter_context(
            pgbouncer(tmp, listen=network.gateway, server_dsn=dsn, aliases=[CANARY_DATABASE])
        )
        (tmp / "cluster").mkdir()
        cluster = stack.enter_context(redis_cluster(tmp / "cluster", host=network.gateway))
        env = {
            "DATABASE_URL": bouncer.dsn(),
            "REDIS_URL": cluster.url,
            "REDIS_KEY_PREFIX": f"prodkit-test:{RUN_ID}:scale:",
            "RATE_LIMIT": f"{RATE_LIMIT_PER_MINUTE}/minute",
            # HAProxy reaches the hosts from the gateway address: only its X-Forwarded-For counts.
            "TRUSTED_PROXIES": network.gateway,
        }
        # The canary group's hosts reach the same database under a name of their own, so that
        # a test can cut them off it alone.
        canary_env = {"DATABASE_URL": bouncer.dsn(CANARY_DATABASE)}
        hosts = stack.enter_context(
            funds_hosts(
                network.hosts,
                tmp,
                env,
                host_env=dict.fromkeys(GROUPS["canary"], canary_env),
            )
        )
        proxy = stack.enter_context(
            haproxy(
                tmp,
                {
                    f"host{index}": f"{server.host.address}:{APP_PORT}"
                    for index, server in enumerate(hosts)
                },
                {group: [f"host{index}" for index in indexes] for group, indexes in GROUPS.items()},
            )
        )
        yield Site(proxy.url, hosts, network, bouncer, cluster, dsn, proxy)


@pytest.fixture(scope="session")
def site_prometheus(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A Prometheus scraping the site's hosts every second (job ``funds``), each labelled with
    its group (``group="baseline"`` or ``"canary"``), as a deployment labels its tracks."""
    missing = prometheus_missing()
    if missing:
        unavailable(missing)
    config = configuration([], scrape_interval="1s")
    config["scrape_configs"][0]["static_configs"] = [
        {
            "targets": [f"{server.host.address}:{APP_PORT}" for server in site.group(group)],
            "labels": {"group": group},
        }
        for group in GROUPS
    ]
    with prometheus(tmp_path_factory.mktemp("site-prometheus"), config) as server:
        server.wait_until_scraped("funds", len(site.hosts))
        yield server
