"""A progressive rollout across host groups: HAProxy's weights, the hosts' metrics in Prometheus.

The site's HAProxy has a second frontend that splits the traffic between two host groups, a
*baseline* (hosts 0 and 1) and a *canary* (host 2), by the weights of two servers that the
rollout controller's :class:`~prodkit.rollout.HAProxyRouter` sets through the runtime API; the
controller judges each group by the sum over its hosts that a real Prometheus scrapes
(:class:`~prodkit.rollout.PrometheusReader`, one selector per group label). While a steady load
runs through that frontend, the canary group takes its first share and passes; at the next
step it goes bad (its hosts lose their database: PgBouncer drops the connections of the
database name only they use), and the controller rolls it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from prodkit.rollout import (
    HAProxyRouter,
    PrometheusReader,
    RolloutController,
    RolloutPolicy,
    Target,
    read_records,
)
from tests.scale.conftest import CANARY_DATABASE, Site
from tests.scale.load import Load
from tests.servers.prometheus import PrometheusServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.server]

POLICY = RolloutPolicy(
    steps=(25, 50, 100),
    bake_seconds=3.0,
    # Above the 1 s scrape interval: each check reads a newer scrape than the last.
    check_interval=1.0,
    min_requests=10,
    max_bake_extensions=2,
    max_error_ratio=0.05,
    # The machine is shared and busy: latency noise must not decide this test.
    latency_tolerance_seconds=2.0,
)


def _target(site: Site, group: str) -> Target:
    # The group's metrics come from Prometheus; its readiness from its first host.
    first = site.group(group)[0]
    return Target(group, "", f"{first.url}/readyz")


async def _shares(
    router: HAProxyRouter, seen: list[int], at_50: asyncio.Event, stop: asyncio.Event
) -> None:
    """Record every canary weight HAProxy holds, polled, until ``stop``; set ``at_50`` when
    it is 50."""
    while not stop.is_set():
        weight = await asyncio.to_thread(router.weight, "canary")
        if not seen or seen[-1] != weight:
            seen.append(weight)
        if weight == 50:
            at_50.set()
        await asyncio.sleep(0.1)


async def test_a_rollout_shifts_traffic_to_a_host_group_and_rolls_a_faulty_one_back(
    site: Site, site_prometheus: PrometheusServer, tmp_path: Path
) -> None:
    router = HAProxyRouter(site.proxy.socket, backend="groups")
    reader = PrometheusReader(
        site_prometheus.url,
        {"baseline": 'job="funds",group="baseline"', "canary": 'job="funds",group="canary"'},
    )
    record_path = tmp_path / "deployments.jsonl"
    controller = RolloutController(
        baseline=_target(site, "baseline"),
        canary=_target(site, "canary"),
        router=router,
        policy=POLICY,
        version="v2",
        record_path=record_path,
        metrics=reader,
    )
    baseline_hosts, canary_hosts = site.names_of("baseline"), site.names_of("canary")
    users = [f"rollout-{index}" for index in range(100)]  # each under the rate limit
    load = Load(
        url=lambda index: f"{site.proxy.rollout_url}/api/funds?limit=1",
        headers=lambda index: {"X-User-Id": users[index % len(users)]},
    )
    weights: list[int] = []
    at_50, stop = asyncio.Event(), asyncio.Event()

    async def break_the_canary_at_50() -> float:
        await at_50.wait()
        # The time the cut starts: an answer between the cut taking effect and the call
        # returning (a thread hop later) must not count as one from before it.
        cut_at = time.monotonic()
        await asyncio.to_thread(site.bouncer.cut, CANARY_DATABASE)
        return cut_at

    polling = asyncio.create_task(_shares(router, weights, at_50, stop))
    breaking = asyncio.create_task(break_the_canary_at_50())
    try:
        async with load.running(max_seconds=90):
            record = await asyncio.to_thread(controller.run)
            rolled_back = time.monotonic()
            await asyncio.sleep(2)  # the load goes on, on the baseline alone
        broken_at = await asyncio.wait_for(breaking, 1) if at_50.is_set() else None
    finally:
        stop.set()
        breaking.cancel()
        await polling
        await asyncio.to_thread(site.bouncer.restore, CANARY_DATABASE)
    final = (router.weight("canary"), router.weight("baseline"))
    await _until_ready(site)

    assert record.outcome == "rolled_back", record.reason
    assert final == (0, 100)
    assert weights == [0, 25, 50, 0], weights
    first, second = record.steps
    assert (first["percent"], first["verdict"]) == (25, "pass"), first
    assert first["canary"]["requests"] >= POLICY.min_requests
    assert first["canary"]["error_ratio"] == 0.0
    assert (second["percent"], second["verdict"]) == (50, "fail"), second
    assert any(
        "max_error_ratio" in reason or "canary not ready" in reason for reason in second["reasons"]
    ), second["reasons"]
    assert broken_at is not None
    (written,) = read_records(record_path)
    assert written["outcome"] == "rolled_back"
    assert written["final_canary_weight"] == 0

    # The canary group served its share before it broke, and failed only after it broke; the
    # baseline group never failed; once rolled back, the canary group served nothing.
    canary_answers = [(at, status) for at, status, host in load.answers if host in canary_hosts]
    baseline_answers = [status for _, status, host in load.answers if host in baseline_hosts]
    assert {status for at, status in canary_answers if at < broken_at} == {200}
    assert 503 in {status for at, status in canary_answers if at >= broken_at}
    assert not [at for at, _ in canary_answers if at > rolled_back + 0.5]
    assert set(baseline_answers) == {200}, load.bodies
    assert {host for _, _, host in load.answers} == site.names


async def _until_ready(site: Site) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2.0) as client:
        for server in site.hosts:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{server.url}/readyz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"{server.url} did not recover"
                await asyncio.sleep(0.2)
