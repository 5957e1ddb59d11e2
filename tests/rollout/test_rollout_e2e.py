"""Rollouts end to end: real HAProxy, two real service processes, load through the proxy.

HAProxy runs with its own configuration and admin socket in ``tmp_path`` and a frontend on a
free 127.0.0.1 port, balancing between a baseline and a canary (``tests/servers/rollout_app.py``);
a background thread sends a bounded load through the frontend while the controller shifts the
weights through the runtime API. Each rollout uses bake windows of 2.5 s.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from prodkit.rollout import HAProxyRouter, RolloutController, RolloutPolicy, Target, read_records
from tests.conftest import unavailable
from tests.servers import (
    HOST,
    ROOT,
    ServerProcess,
    free_port,
    run_server,
    server_env,
    wait_for_port,
)

pytestmark = pytest.mark.server

BAKE_SECONDS = 2.5
POLICY = RolloutPolicy(
    steps=(25, 50, 75, 100),
    bake_seconds=BAKE_SECONDS,
    check_interval=0.5,
    min_requests=20,
    max_bake_extensions=2,
    max_error_ratio=0.05,
    # The machine is shared and busy: latency noise must not decide these tests.
    latency_tolerance_seconds=2.0,
)


def _service(
    port: int, tmp_path: Path, **env: str
) -> contextlib.AbstractContextManager[ServerProcess]:
    args = ["uvicorn", "tests.servers.rollout_app:app", "--host", HOST, "--port", str(port)]
    return run_server([*args, "--log-level", "warning"], port=port, tmp_path=tmp_path, env=env)


@dataclass
class Services:
    """The baseline, a healthy canary, one that fails 30 % of ``/api/work``, and a slow one."""

    baseline: ServerProcess
    healthy: ServerProcess
    faulty: ServerProcess
    slow: ServerProcess


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    tmp = tmp_path_factory.mktemp("services")
    with (
        _service(free_port(), tmp) as baseline,
        _service(free_port(), tmp) as healthy,
        _service(free_port(), tmp, FAULT_ERROR_RATE="0.3") as faulty,
        _service(free_port(), tmp, FAULT_LATENCY_SECONDS="0.3") as slow,
    ):
        yield Services(baseline, healthy, faulty, slow)


@dataclass
class Proxy:
    """A running HAProxy: its frontend URL and the router that drives its weights."""

    url: str
    router: HAProxyRouter


@contextlib.contextmanager
def haproxy(tmp_path: Path, baseline: ServerProcess, canary: ServerProcess) -> Iterator[Proxy]:
    """HAProxy balancing ``baseline`` (weight 100) and ``canary`` (weight 0); stopped by PID."""
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        unavailable("haproxy is not installed (apt-get install -y haproxy)")
        raise AssertionError("unreachable")
    port = free_port()
    sock = tmp_path / "admin.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""
global
    stats socket {sock} mode 600 level admin
    maxconn 512

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend web
    bind {HOST}:{port}
    default_backend app

backend app
    balance roundrobin
    server baseline {HOST}:{baseline.port} weight 100
    server canary {HOST}:{canary.port} weight 0
"""
    )
    log = (tmp_path / "haproxy.log").open("wb")
    process = subprocess.Popen(
        [binary, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, 15.0, process)
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield Proxy(f"http://{HOST}:{port}", HAProxyRouter(sock, backend="app"))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@contextlib.contextmanager
def load(
    url: str, *, workers: int = 1, max_requests: int = 20_000, max_seconds: float = 60.0
) -> Iterator[list[int]]:
    """Send ``GET /api/work`` through ``url`` from background threads until the block ends.

    Bounded by ``max_requests`` and ``max_seconds``; yields the list of statuses seen so far.
    """
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        deadline = time.monotonic() + max_seconds
        with httpx.Client(base_url=url, timeout=5.0) as client:
            while not stop.is_set() and len(statuses) < max_requests:
                if time.monotonic() > deadline:
                    return
                try:
                    statuses.append(client.get("/api/work").status_code)
                except httpx.HTTPError:
                    statuses.append(0)

    threads = [
        threading.Thread(target=run, name=f"rollout-load-{i}", daemon=True) for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def _targets(baseline: ServerProcess, canary: ServerProcess) -> tuple[Target, Target]:
    return (
        Target("baseline", f"{baseline.base_url}/metrics", f"{baseline.base_url}/readyz"),
        Target("canary", f"{canary.base_url}/metrics", f"{canary.base_url}/readyz"),
    )


def test_healthy_canary_is_promoted_to_100_percent(services: Services, tmp_path: Path) -> None:
    baseline, canary = _targets(services.baseline, services.healthy)
    record_path = tmp_path / "deployments.jsonl"
    with haproxy(tmp_path, services.baseline, services.healthy) as proxy, load(proxy.url) as seen:
        controller = RolloutController(
            baseline=baseline,
            canary=canary,
            router=proxy.router,
            policy=POLICY,
            version="v2-healthy",
            record_path=record_path,
        )
        record = controller.run()
        weights = (proxy.router.weight("canary"), proxy.router.weight("baseline"))

    assert record.outcome == "promoted", record.reason
    assert record.exit_status == 0
    assert weights == (100, 0)
    assert [step["percent"] for step in record.steps] == [25, 50, 75, 100]
    assert all(step["verdict"] == "pass" for step in record.steps)
    for step in record.steps:
        assert step["canary"]["requests"] >= POLICY.min_requests
        assert step["canary"]["error_ratio"] == 0.0
        assert step["canary"]["latency_quantile_seconds"] is not None
    assert 200 in seen
    (written,) = read_records(record_path)
    assert written["id"] == record.id
    assert written["version"] == "v2-healthy"
    assert written["outcome"] == "promoted"
    assert written["final_canary_weight"] == 100
    assert written["finished_at"] >= written["started_at"]


def test_faulty_canary_is_rolled_back_within_one_bake_window(
    services: Services, tmp_path: Path
) -> None:
    record_path = tmp_path / "deployments.jsonl"
    with haproxy(tmp_path, services.baseline, services.faulty) as proxy, load(proxy.url) as seen:
        # The command line, as an operator runs it; exit status 1 means "rolled back".
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "prodkit.cli",
                "rollout",
                f"--baseline={services.baseline.base_url}",
                f"--canary={services.faulty.base_url}",
                f"--haproxy-socket={proxy.router.socket_path}",
                "--haproxy-backend=app",
                "--steps=25,50,75,100",
                f"--bake-seconds={BAKE_SECONDS}",
                "--check-interval=0.5",
                f"--min-requests={POLICY.min_requests}",
                "--max-error-ratio=0.05",
                "--latency-tolerance-seconds=2",
                "--version=v2-faulty",
                f"--record={record_path}",
            ],
            cwd=ROOT,
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        weights = (proxy.router.weight("canary"), proxy.router.weight("baseline"))

    assert result.returncode == 1, result.stdout + result.stderr
    # stdout is the one-line summary; the progress log goes to stderr.
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "rolled_back"
    assert summary["canary_weight"] == 0
    assert "rolled back" in result.stderr
    assert weights == (0, 100)
    assert 500 in seen
    (record,) = read_records(record_path)
    assert record["outcome"] == "rolled_back"
    assert record["final_canary_weight"] == 0
    # Rolled back at the first step, inside its bake window: no extension, no second step.
    (step,) = record["steps"]
    assert step["percent"] == 25
    assert step["verdict"] == "fail"
    assert step["extensions"] == 0
    assert step["bake_seconds"] <= BAKE_SECONDS + POLICY.check_interval
    assert 0.15 <= step["canary"]["error_ratio"] <= 0.45
    assert step["canary"]["errors"] > 0
    assert step["baseline"]["error_ratio"] == 0.0
    assert any("max_error_ratio" in reason for reason in step["reasons"])


def test_slow_canary_is_rolled_back_on_its_p99(services: Services, tmp_path: Path) -> None:
    baseline, canary = _targets(services.baseline, services.slow)
    # Every canary request takes 0.3 s: fewer requests, so judge after 5 of them.
    policy = RolloutPolicy(
        bake_seconds=BAKE_SECONDS,
        check_interval=0.5,
        min_requests=5,
        max_bake_extensions=2,
        max_latency_ratio=1.5,
        latency_tolerance_seconds=0.1,
    )
    with (
        haproxy(tmp_path, services.baseline, services.slow) as proxy,
        load(proxy.url, workers=4),
    ):
        record = RolloutController(
            baseline=baseline, canary=canary, router=proxy.router, policy=policy
        ).run()
        weights = (proxy.router.weight("canary"), proxy.router.weight("baseline"))

    assert record.outcome == "rolled_back", record.reason
    assert weights == (0, 100)
    step = record.steps[-1]
    assert step["verdict"] == "fail"
    assert step["canary"]["error_ratio"] == 0.0
    # The injected 0.3 s lands in the (0.25, 0.5] bucket of the default buckets.
    assert 0.25 <= step["canary"]["latency_quantile_seconds"] <= 0.5
    assert any("x baseline" in reason for reason in step["reasons"])


def test_canary_without_traffic_is_rolled_back(services: Services, tmp_path: Path) -> None:
    baseline, canary = _targets(services.baseline, services.healthy)
    with haproxy(tmp_path, services.baseline, services.healthy) as proxy:
        policy = RolloutPolicy(
            bake_seconds=0.5, check_interval=0.25, min_requests=20, max_bake_extensions=1
        )
        record = RolloutController(
            baseline=baseline, canary=canary, router=proxy.router, policy=policy
        ).run()
        weights = (proxy.router.weight("canary"), proxy.router.weight("baseline"))

    assert record.outcome == "rolled_back"
    assert weights == (0, 100)
    (step,) = record.steps
    assert step["extensions"] == 1
    assert step["reasons"][0] == "not enough canary traffic to judge"


def test_canary_that_is_not_ready_is_never_given_traffic(
    tmp_path: Path, services: Services
) -> None:
    with (
        _service(free_port(), tmp_path, NOT_READY="1") as unready,
        haproxy(tmp_path, services.baseline, unready) as proxy,
    ):
        baseline, canary = _targets(services.baseline, unready)
        record = RolloutController(
            baseline=baseline, canary=canary, router=proxy.router, policy=POLICY
        ).run()
        weights = (proxy.router.weight("canary"), proxy.router.weight("baseline"))

    assert record.outcome == "error"
    assert record.exit_status == 2
    assert record.reason.startswith("pre-flight failed: canary is not ready")
    assert record.steps == []
    assert weights == (0, 100)


def test_sigterm_rolls_the_canary_back(services: Services, tmp_path: Path) -> None:
    record_path = tmp_path / "deployments.jsonl"
    with haproxy(tmp_path, services.baseline, services.healthy) as proxy:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prodkit.cli",
                "rollout",
                f"--baseline={services.baseline.base_url}",
                f"--canary={services.healthy.base_url}",
                f"--haproxy-socket={proxy.router.socket_path}",
                "--haproxy-backend=app",
                "--bake-seconds=60",
                "--log-format=json",
                f"--record={record_path}",
            ],
            cwd=ROOT,
            env=server_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            for line in process.stderr:  # wait for the first shift, then interrupt the bake
                if json.loads(line)["event"] == "traffic shifted":
                    break
            shifted = proxy.router.weight("canary")
            process.send_signal(signal.SIGTERM)
            stdout, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
        weights = (proxy.router.weight("canary"), proxy.router.weight("baseline"))

    assert shifted == 25
    assert process.returncode == 2
    assert json.loads(stdout)["outcome"] == "aborted"
    assert weights == (0, 100)
    (record,) = read_records(record_path)
    assert record["outcome"] == "aborted"
    assert record["final_canary_weight"] == 0
