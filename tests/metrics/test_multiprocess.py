"""Multiprocess mode: real uvicorn workers summed in one scrape, dead workers' gauges dropped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prodkit.metrics import MetricsApp, remove_dead_process_files
from tests.conftest import ClientFactory
from tests.metrics.helpers import DURATION
from tests.servers import free_port, run_server, server_env


@pytest.mark.server
async def test_multiprocess_mode_aggregates_real_uvicorn_workers(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    port = free_port()
    args = ["uvicorn", "tests.servers.metrics_app:app", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
        pids: set[str] = set()
        sent = 0
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20, limits=limits) as client:
            for _ in range(10):  # bounded: stop as soon as both workers have answered
                batch = [client.get(f"/items/{sent + i}") for i in range(20)]
                responses = await asyncio.gather(*batch)
                assert all(r.status_code == 200 for r in responses), server.output()
                pids.update(r.text for r in responses)
                sent += len(responses)
                if len(pids) >= 2:
                    break
            assert len(pids) == 2, f"one worker served everything: {server.output()}"
            unauthorized = await client.get("/metrics")
            assert unauthorized.status_code == 401
            scrape = await client.get("/metrics", headers={"Authorization": "Bearer scrape"})
    assert scrape.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
    }
    labels = (("method", "GET"), ("route", "/items/{item_id}"), ("status_code", "200"))
    assert samples[(f"{DURATION}_count", labels)] == sent  # every worker's requests, one scrape
    assert samples[("demo_orders_total", (("status", "created"),))] == sent
    assert samples[("http_requests_in_flight", (("method", "GET"),))] == 0
    assert not [key for key in samples if key[0].startswith(DURATION) and "/metrics" in str(key)]


def _die_with_one_in_flight(directory: Path) -> int:
    """Run a process that starts a request (in-flight gauge 1) and dies; return its pid."""
    script = (
        "import os\n"
        "from prometheus_client import Gauge\n"
        "g = Gauge('http_requests_in_flight', 'x', ['method'], multiprocess_mode='livesum')\n"
        "g.labels('GET').inc()\n"
        "print(os.getpid())\n"
        "os._exit(0)\n"
    )
    env = {**server_env(), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, check=True, timeout=60
    )
    return int(done.stdout)


async def test_in_flight_of_a_killed_worker_is_dropped_at_scrape(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    pid = await asyncio.to_thread(_die_with_one_in_flight, tmp_path)
    assert any(str(pid) in name for name in os.listdir(tmp_path))
    response = await make_client(MetricsApp(multiprocess_dir=str(tmp_path))).get("/metrics")
    assert 'http_requests_in_flight{method="GET"}' not in response.text
    assert not any(str(pid) in name for name in os.listdir(tmp_path))
    assert remove_dead_process_files(str(tmp_path)) == []
