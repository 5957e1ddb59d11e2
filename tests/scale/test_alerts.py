"""A real Prometheus with the shipped configuration and rules: how soon an outage pages.

Prometheus (``deploy/prometheus/prometheus.yml``: 5 s scrapes and evaluations, the rules of
``alerts.yml``) scrapes the services while a steady load of 20 requests a second runs; then
every request starts failing, and the test waits for ``ProdkitAvailabilityBudgetBurnFast`` to
fire (``/api/v1/alerts``). It asserts that the page came before a generous deadline and records
the measured time from the first failed response to the page (see the ``figures`` fixture and
docs/alerts.md); the promtool tests in ``deploy/prometheus/alerts_test.yml`` hold the exact
bounds (a full outage pages within 30 s, a 10 s blip never). Two outages are timed at once,
each with its own Prometheus and load: the three hosts losing their database, and one process
on loopback failing every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from prodkit.rollout import PrometheusReader, Target, parse_scrape
from tests.conftest import Figures, unavailable
from tests.scale.conftest import Site
from tests.scale.load import Load
from tests.scale.site import APP_PORT
from tests.servers import HOST, free_port, run_server
from tests.servers.prometheus import (
    PrometheusServer,
    configuration,
    prometheus,
    prometheus_missing,
)

pytestmark = pytest.mark.server

ALERT = "ProdkitAvailabilityBudgetBurnFast"
#: The page must come before this, counted from the first failed response (the rules' bound,
#: proved by promtool, is 30 s; the rest is room for a loaded machine).
DEADLINE_SECONDS = 120
#: Healthy traffic Prometheus sees before the outage (beyond its first two scrapes).
HEALTHY_SECONDS = 20


async def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds}s")
        await asyncio.sleep(0.25)


def _firing(server: PrometheusServer) -> dict[str, Any] | None:
    for alert in server.alerts():
        if alert["labels"].get("alertname") == ALERT and alert["state"] == "firing":
            return alert
    return None


async def measure_page(
    server: PrometheusServer, load: Load, fail: Callable[[], None], *, job: str = "funds"
) -> dict[str, float]:
    """Run ``load``, let Prometheus see it healthy, call ``fail``; time until the page."""
    async with load.running(max_seconds=DEADLINE_SECONDS + 90):
        # Healthy first, for longer than the tier's 30s window, so that the page waits for the
        # errors to fill 40 % of it as it would after hours of healthy traffic.
        await _until(
            lambda: bool(server.query(f'job:slo_requests:rate2m{{job="{job}"}} > 0.5')),
            60,
            "Prometheus saw no traffic",
        )
        await asyncio.sleep(HEALTHY_SECONDS)
        assert _firing(server) is None
        assert not load.failed(), "errors before the outage"
        await asyncio.to_thread(fail)
        await _until(load.failed, 30, "no request failed")
        await _until(lambda: _firing(server) is not None, DEADLINE_SECONDS, f"{ALERT} did not fire")
        seen = time.time()
    alert = _firing(server)
    assert alert is not None
    assert alert["labels"]["job"] == job
    assert alert["labels"]["severity"] == "page"
    first_error = load.first_error_at
    assert first_error is not None
    return {
        "seconds_to_page_seen": round(seen - first_error, 1),
        "requests": len(load.statuses),
        "failed": sum(1 for status in load.statuses if status >= 500),
    }


def _require_prometheus() -> None:
    missing = prometheus_missing()
    if missing:
        unavailable(missing)


async def test_an_outage_pages_within_the_deadline(
    site: Site, tmp_path: Path, figures: Figures
) -> None:
    # Two outages, timed at once (they share nothing but the machine, and each measurement
    # takes a minute of mostly waiting for Prometheus): the three hosts losing their database,
    # and one process on loopback whose every request fails.
    _require_prometheus()
    (tmp_path / "hosts").mkdir()
    (tmp_path / "process").mkdir()
    on_hosts, on_one_process = await asyncio.gather(
        _hosts_lose_their_database(site, tmp_path / "hosts"),
        _a_process_fails_every_request(tmp_path / "process"),
    )
    figures("alert_latency", setup="3 hosts x 2 workers, database cut", **on_hosts)
    figures("alert_latency", setup="one process, every request 500", **on_one_process)


async def _hosts_lose_their_database(site: Site, tmp_path: Path) -> dict[str, float]:
    # PgBouncer refuses and drops every connection of the hosts: every read answers 503
    # DEPENDENCY_UNAVAILABLE, fast.
    targets = [f"{server.host.address}:{APP_PORT}" for server in site.hosts]
    users = [f"alert-{index}" for index in range(100)]  # each under the rate limit
    load = Load(
        url=lambda index: f"{site.url}/api/funds?limit=1",
        headers=lambda index: {"X-User-Id": users[index % len(users)]},
    )
    with contextlib.ExitStack() as stack:
        # Started and stopped in a thread: the other measurement's load runs meanwhile.
        server = await asyncio.to_thread(
            stack.enter_context, prometheus(tmp_path, configuration(targets))
        )
        await asyncio.to_thread(server.wait_until_scraped, "funds", len(targets))
        try:
            measured = await measure_page(server, load, site.bouncer.cut)
        finally:
            await asyncio.to_thread(site.bouncer.restore)
            await _until(lambda: _all_ready(site), 30, "the hosts did not recover")
            await asyncio.to_thread(stack.close)
    # Reads answer 503 DEPENDENCY_UNAVAILABLE once the database is gone, never 500: a pooled
    # connection that PgBouncer killed is an outage too (tests/scale/test_pooling.py).
    assert set(load.statuses) == {200, 503}, load.bodies
    return measured


def _all_ready(site: Site) -> bool:
    with httpx.Client(timeout=2.0) as client:
        return all(client.get(f"{s.url}/readyz").status_code == 200 for s in site.hosts)


async def _a_process_fails_every_request(tmp_path: Path) -> dict[str, float]:
    # The same rules and intervals on loopback, without namespaces: the load moves from a
    # healthy process to one whose every /api/work answers 500, both scraped as one job.
    healthy, failing = free_port(), free_port()
    args = ["uvicorn", "tests.servers.rollout_app:app", "--host", HOST, "--log-level", "warning"]
    target = {"port": healthy}
    load = Load(url=lambda index: f"http://{HOST}:{target['port']}/api/work")
    config = configuration([f"{HOST}:{healthy}", f"{HOST}:{failing}"])
    with contextlib.ExitStack() as stack:
        # Started and stopped in a thread: the other measurement's load runs meanwhile.
        def start() -> PrometheusServer:
            stack.enter_context(
                run_server([*args, "--port", str(healthy)], port=healthy, tmp_path=tmp_path)
            )
            stack.enter_context(
                run_server(
                    [*args, "--port", str(failing)],
                    port=failing,
                    tmp_path=tmp_path,
                    env={"FAULT_ERROR_RATE": "1"},
                )
            )
            server = stack.enter_context(prometheus(tmp_path, config))
            server.wait_until_scraped("funds", 2)
            return server

        try:
            server = await asyncio.to_thread(start)
            measured = await measure_page(server, load, lambda: target.update(port=failing))
        finally:
            await asyncio.to_thread(stack.close)
    assert set(load.statuses) == {200, 500}
    return measured


async def test_the_rollout_reads_the_hosts_from_prometheus_as_from_their_pages(
    site: Site, site_prometheus: PrometheusServer
) -> None:
    # The rollout controller's PrometheusReader against the hosts' multiprocess pages: the
    # sum over three hosts of two workers each, the same as adding up the three pages.
    server = site_prometheus
    async with httpx.AsyncClient(base_url=site.url, timeout=30.0) as client:
        for index in range(60):
            await client.get("/api/funds", headers={"X-User-Id": f"reader-{index % 20}"})
            await client.get("/api/no-such-route", headers={"X-User-Id": "reader"})
    async with httpx.AsyncClient(timeout=10.0) as client:
        pages = [parse_scrape((await client.get(f"{s.url}/metrics")).text) for s in site.hosts]
    moment = time.time()
    await _until(
        lambda: all(
            float(s["value"][1]) > moment for s in server.query('timestamp(up{job="funds"})')
        ),
        20,
        "Prometheus did not scrape the hosts again",
    )
    reader = PrometheusReader(server.url, {"hosts": 'job="funds"'})
    read = reader.read(Target("hosts", "", ""))

    summed: dict[tuple[str, ...], tuple[float, dict[float, float]]] = {}
    for page in pages:
        for key, series in page.series.items():
            count, buckets = summed.get(key, (0.0, {}))
            for le, value in series.buckets.items():
                buckets[le] = buckets.get(le, 0.0) + value
            summed[key] = (count + series.count, buckets)
    # Every scrape of /metrics is itself a request: the pages and Prometheus differ there.
    expected = {key: value for key, value in summed.items() if key[1] != "/metrics"}
    got = {
        key: (series.count, dict(series.buckets))
        for key, series in read.series.items()
        if key[1] != "/metrics"
    }
    assert got == expected
    assert ("GET", "/api/funds", "200") in got
