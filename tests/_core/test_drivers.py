"""The Redis seam: one function reads every Redis URL form and builds the client for it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import ConfigurationError
from prodkit._core.drivers import parse_redis_url, redis_client
from tests.conftest import unavailable
from tests.servers.redis_topologies import (
    SentinelGroup,
    Topology,
    collect_dropped_connections,
    redis_binaries_missing,
    redis_cluster,
    redis_sentinel,
    write_until_it_lands,
)


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "service", "db"),
    [
        ("redis://127.0.0.1:6379/0", "server", (), None, 0),
        ("rediss://user:pw@cache.internal:6380/2", "server", (), None, 0),
        ("unix:///run/redis.sock?db=1", "server", (), None, 0),
        ("redis+cluster://127.0.0.1:7000", "cluster", (("127.0.0.1", 7000),), None, 0),
        (
            "redis+cluster://a:7000, b:7001,[::1]:7002",
            "cluster",
            (("a", 7000), ("b", 7001), ("::1", 7002)),
            None,
            0,
        ),
        (
            "redis+sentinel://s1:26379,s2:26379/mymaster?db=3",
            "sentinel",
            (("s1", 26379), ("s2", 26379)),
            "mymaster",
            3,
        ),
        ("rediss+sentinel://:pw@s1:26379/svc", "sentinel", (("s1", 26379),), "svc", 0),
    ],
)
def test_every_documented_form_is_read(
    url: str, kind: str, nodes: tuple[tuple[str, int], ...], service: str | None, db: int
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.nodes, target.service, target.db) == (kind, nodes, service, db)
    assert target.tls == url.startswith("rediss")


def test_credentials_are_read_from_the_url() -> None:
    target = parse_redis_url("redis+sentinel://app:s%40cret@s1:26379/svc?sentinel_password=w")
    assert (target.username, target.password, target.sentinel_password) == ("app", "s@cret", "w")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "where host:port belongs"),
        ("redis+cluster://127.0.0.1", "where host:port belongs"),
        ("redis+cluster://127.0.0.1:7000/0", "has a path"),
        ("redis+sentinel://127.0.0.1:26379", "names no service"),
        ("redis+sentinel://127.0.0.1:26379/svc?db=x", "db that is not a number"),
        ("redis+sentinel://127.0.0.1:26379/svc?timeout=3", "unknown options"),
        ("redis+sentinel://127.0.0.1:99999/svc", "where host:port belongs"),
        ("http://127.0.0.1:6379", "has no Redis scheme"),
        ("127.0.0.1:6379", "has no Redis scheme"),
        ("redis://", "names no host"),
    ],
)
def test_a_malformed_url_names_the_setting_and_the_accepted_forms(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        redis_client(url)
    message = str(caught.value)
    assert message.startswith("REDIS_URL=")
    assert says in message
    assert "redis+cluster://" in message
    assert "redis+sentinel://" in message


def test_the_error_never_shows_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url("redis+sentinel://app:hunter2@s1:26379", setting="CACHE_URL")
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).startswith("CACHE_URL='redis+sentinel://***@s1:26379'")


@given(st.text(max_size=80))
def test_any_text_is_read_or_refused_with_a_configuration_error(text: str) -> None:
    for url in (text, "redis+cluster://" + text, "redis+sentinel://" + text):
        with contextlib.suppress(ConfigurationError):
            parse_redis_url(url)


# Real topologies: a Redis Cluster and a Sentinel group started from the redis-server binary.


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as topology:
        yield topology


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    with redis_sentinel(tmp_path) as group:
        yield group


async def test_a_cluster_url_builds_a_cluster_client_that_spans_every_slot(
    cluster: Topology,
) -> None:
    first, second = redis_client(cluster.url), redis_client(cluster.url)
    try:
        keys = [f"prodkit-test:{i}" for i in range(64)]  # spread over the three primaries
        for key in keys:
            await first.set(key, key, px=60_000)
        assert [await second.get(key) for key in keys] == [key.encode() for key in keys]
        slots = {await first.cluster_keyslot(key) for key in keys}
        assert len(slots) > 3
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_sentinel_url_follows_the_primary_through_a_failover(
    sentinel_group: SentinelGroup,
) -> None:
    client = redis_client(sentinel_group.url)
    try:
        await client.set("prodkit-test:before", "before", px=60_000)
        assert sentinel_group.current_primary() == sentinel_group.primary
        sentinel_group.kill(sentinel_group.primary)
        await write_until_it_lands(client, "prodkit-test:after", time.monotonic() + 30)
        # The Sentinels promoted the replica, which had the write made before the kill.
        assert sentinel_group.current_primary() == sentinel_group.replica
        assert await client.get("prodkit-test:before") == b"before"
        assert await client.get("prodkit-test:after") == b"after"
    finally:
        await client.aclose()
        collect_dropped_connections()


async def test_a_cluster_client_writes_again_once_a_replica_is_promoted(
    tmp_path: Path,
) -> None:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    with redis_cluster(tmp_path) as topology:
        client = redis_client(topology.url)
        try:
            key = "prodkit-test:failover"
            await client.set(key, "before", px=60_000)
            owner = await client.cluster_keyslot(key)
            nodes = await client.cluster_nodes()
            primary = next(
                int(address.split(":")[1].split("@")[0])
                for address, node in nodes.items()
                if "master" in node["flags"]
                and any(int(a) <= owner <= int(b) for a, b in node["slots"])
            )
            topology.kill(primary)
            await write_until_it_lands(client, key, time.monotonic() + 30)
            assert await client.get(key) == b"after"
        finally:
            await client.aclose()
            collect_dropped_connections()
