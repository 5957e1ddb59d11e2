"""The Redis seam: one function reads every Redis URL form and builds the client for it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import ConfigurationError
from prodkit._core.drivers import is_cluster, parse_redis_url, redis_client
from tests.servers.redis_topologies import SentinelGroup, Topology, cli


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


# Real topologies: the run's Redis Cluster and Sentinel group, started from the redis-server
# binary (tests/conftest.py). Failovers are in tests/stack/test_failover.py, through the stack.


async def test_a_cluster_url_builds_a_cluster_client_that_spans_every_slot(
    shared_redis_cluster: Topology,
) -> None:
    first, second = redis_client(shared_redis_cluster.url), redis_client(shared_redis_cluster.url)
    try:
        keys = [f"prodkit-test:{i}" for i in range(64)]  # spread over the three primaries
        for key in keys:
            await first.set(key, key, px=60_000)
        assert [await second.get(key) for key in keys] == [key.encode() for key in keys]
        slots = {await first.cluster_keyslot(key) for key in keys}
        assert len(slots) > 3
        assert is_cluster(first)
    finally:
        await first.aclose()
        await second.aclose()


def sentinel_connections(group: SentinelGroup) -> int:
    """Client connections the Sentinels hold, besides each other's (named ``sentinel-…``, and
    still being made while a new group discovers its peers) and redis-cli's own."""
    listed = "".join(cli(port, "client", "list", host=group.host) for port in group.sentinels)
    return sum(
        1
        for line in listed.splitlines()
        if "cmd=client|list" not in line and "flags=N" in line and " name=sentinel-" not in line
    )


async def test_a_sentinel_client_closes_its_connections_to_the_sentinels(
    shared_redis_sentinel: SentinelGroup,
) -> None:
    before = sentinel_connections(shared_redis_sentinel)
    client = redis_client(shared_redis_sentinel.url)
    await client.set("prodkit-test:sentinel", "v", px=60_000)
    assert not is_cluster(client)
    assert sentinel_connections(shared_redis_sentinel) > before  # it asked for the primary
    await client.aclose()
    for _ in range(50):  # the Sentinels see the sockets close (bounded: 5 s)
        if sentinel_connections(shared_redis_sentinel) == before:
            break
        await asyncio.sleep(0.1)
    assert sentinel_connections(shared_redis_sentinel) == before


@pytest.mark.parametrize("topology", ["server", "sentinel"])
async def test_commands_beyond_the_pool_wait_for_a_connection(
    topology: str, request: pytest.FixtureRequest
) -> None:
    # As on one server, a burst beyond max_connections queues for a pooled connection behind
    # Sentinel (redis-py's Sentinel pool would refuse it with MaxConnectionsError).
    url = (
        request.getfixturevalue("redis_url")
        if topology == "server"
        else request.getfixturevalue("shared_redis_sentinel").url
    )
    client = redis_client(url, max_connections=4, socket_timeout=5)
    try:
        replies = await asyncio.gather(*(client.ping() for _ in range(200)))
        assert replies == [True] * 200
    finally:
        await client.aclose()
