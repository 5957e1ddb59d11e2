"""A real Prometheus server for tests: Debian's ``prometheus`` binary on a loopback port.

Its configuration is ``deploy/prometheus/prometheus.yml`` (the intervals and the rule file the
project ships) with the test's own targets; its data lives in a temporary directory; it is
stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.servers import HOST, ROOT, free_port, wait_for_port

DEPLOY = ROOT / "deploy" / "prometheus"


def prometheus_missing() -> str | None:
    """Why Prometheus cannot be started here, or ``None``."""
    if shutil.which("prometheus") is None:
        return "prometheus is not installed (apt-get install -y prometheus)"
    return None


@dataclass
class PrometheusServer:
    """A running Prometheus: its base URL and a few calls of its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:  # noqa: S310 - loopback
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def wait_until_scraped(self, job: str, targets: int, timeout: float = 30.0) -> None:
        """Wait until ``targets`` targets of ``job`` have been scraped successfully."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.query(f'up{{job="{job}"}} == 1')) >= targets:
                return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus did not scrape {targets} {job} targets in {timeout}s")


def configuration(
    targets: Sequence[str],
    *,
    job: str = "funds",
    scrape_interval: str | None = None,
    rule_files: Sequence[Path] = (DEPLOY / "alerts.yml",),
) -> dict[str, Any]:
    """``deploy/prometheus/prometheus.yml`` with ``targets`` (``host:port``) for ``job``."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [scrape] = config["scrape_configs"]
    scrape["job_name"] = job
    scrape["static_configs"] = [{"targets": list(targets)}]
    config["rule_files"] = [str(path) for path in rule_files]
    if scrape_interval is not None:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
        config["global"]["scrape_timeout"] = scrape_interval
    return config


@contextlib.contextmanager
def prometheus(tmp_path: Path, config: dict[str, Any]) -> Iterator[PrometheusServer]:
    """Prometheus on a free 127.0.0.1 port with ``config``; stopped by its PID afterwards."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = folder / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_path}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={HOST}:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, 30, process)
        server = PrometheusServer(f"http://{HOST}:{port}", process, log_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer,  # noqa: S310 - loopback
            ):
                if answer.status == 200:
                    break
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
