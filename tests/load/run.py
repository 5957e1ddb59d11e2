"""Run the load scenarios against a local funds service and report them.

    python -m tests.load.run [--backend memory|postgres|all] [--scenario baseline|spike|all]
                             [--baseline-seconds 60] [--out docs/load-test]

For each backend it starts ``python -m examples.funds`` on 127.0.0.1 (for ``postgres``, with
``DATABASE_URL`` pointing at a database created for the run and ``REDIS_URL`` at the local
Redis), runs Locust headless against it, prints a summary table, writes a latency-over-time PNG
per run, and checks the thresholds (p95 < 500 ms, p99 < 1 s, errors < 1 %). The exit status is
non-zero when the baseline scenario misses a threshold. Traffic goes to loopback only, and every
run is bounded in time (the baseline by ``--baseline-seconds``, the spike by its shape, ~100 s).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ROOT, free_port, run_server

THRESHOLDS = {"p95_ms": 500.0, "p99_ms": 1000.0, "error_ratio": 0.01}
DATABASE_URL = os.environ.get(
    "PRODKIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PRODKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Outcome:
    """The aggregate figures of one run."""

    backend: str
    scenario: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    plot: Path

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    @property
    def passed(self) -> bool:
        return (
            self.requests > 0
            and self.p95_ms < THRESHOLDS["p95_ms"]
            and self.p99_ms < THRESHOLDS["p99_ms"]
            and self.error_ratio < THRESHOLDS["error_ratio"]
        )


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(DATABASE_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _aggregate(stats_csv: Path) -> dict[str, str]:
    with stats_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                return row
    raise RuntimeError(f"no Aggregated row in {stats_csv}")


def plot_history(history_csv: Path, out: Path, title: str) -> None:
    """Draw p50/p95/p99 latency and the user count over time from Locust's history CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times: list[float] = []
    users: list[int] = []
    series: dict[str, list[float]] = {"50%": [], "95%": [], "99%": []}
    start: float | None = None
    with history_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] != "Aggregated" or row["50%"] in ("N/A", ""):
                continue
            stamp = float(row["Timestamp"])
            start = stamp if start is None else start
            times.append(stamp - start)
            users.append(int(row["User Count"]))
            for key in series:
                series[key].append(float(row[key]))
    fig, latency = plt.subplots(figsize=(9, 4.5))
    for key, values in series.items():
        latency.plot(times, values, label=f"p{key.rstrip('%')}")
    latency.axhline(
        THRESHOLDS["p95_ms"], color="grey", linestyle="--", linewidth=0.8, label="p95 target"
    )
    latency.set_xlabel("seconds")
    latency.set_ylabel("latency (ms)")
    latency.set_title(title)
    users_axis = latency.twinx()
    users_axis.plot(times, users, color="black", alpha=0.3, label="users")
    users_axis.set_ylabel("users")
    users_axis.set_ylim(bottom=0)
    latency.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run_locust(host: str, scenario: str, seconds: int, prefix: Path) -> None:
    args = [
        sys.executable, "-m", "locust",
        "-f", str(ROOT / "tests" / "load" / "locustfile.py"),
        "--headless", "--host", host, "--csv", str(prefix), "--csv-full-history",
        "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10",
    ]  # fmt: skip
    if scenario == "baseline":
        args += ["--users", "10", "--spawn-rate", "10", "--run-time", f"{seconds}s"]
    env = {**os.environ, "LOAD_SCENARIO": scenario}
    # Bounded: the run's own length plus a margin for start-up and the stop timeout.
    subprocess.run(args, env=env, check=False, timeout=seconds + 180, cwd=ROOT)


def run_backend(backend: str, scenarios: list[str], seconds: int, out: Path) -> list[Outcome]:
    env = {
        "RATE_LIMIT": "1000000/minute",  # one load generator on one address must not be limited
        "LOG_LEVEL": "WARNING",
        "MAX_CONCURRENCY": "2000",
    }
    database = None
    if backend == "postgres":
        database = f"prodkit_load_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
        env["DATABASE_URL"] = f"{DATABASE_URL.rpartition('/')[0]}/{database}"
        env["REDIS_URL"] = REDIS_URL
    outcomes = []
    try:
        port = free_port()
        with run_server(
            ["examples.funds", "--port", str(port)], port=port, tmp_path=out, env=env
        ) as server:
            for scenario in scenarios:
                prefix = out / f"{backend}-{scenario}"
                run_locust(server.base_url, scenario, seconds, prefix)
                row = _aggregate(Path(f"{prefix}_stats.csv"))
                plot = out / f"{backend}-{scenario}.png"
                plot_history(Path(f"{prefix}_stats_history.csv"), plot, f"{scenario} on {backend}")
                outcomes.append(
                    Outcome(
                        backend=backend,
                        scenario=scenario,
                        requests=int(row["Request Count"]),
                        failures=int(row["Failure Count"]),
                        rps=float(row["Requests/s"]),
                        p50_ms=float(row["50%"]),
                        p95_ms=float(row["95%"]),
                        p99_ms=float(row["99%"]),
                        plot=plot,
                    )
                )
    finally:
        if database is not None:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """A Markdown table of the outcomes."""
    lines = [
        "| backend | scenario | requests | errors | req/s | p50 ms | p95 ms | p99 ms | thresholds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.backend} | {o.scenario} | {o.requests} | {o.error_ratio:.2%} | {o.rps:.0f} | "
            f"{o.p50_ms:.0f} | {o.p95_ms:.0f} | {o.p99_ms:.0f} | {'pass' if o.passed else 'MISS'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", choices=["memory", "postgres", "all"], default="all")
    parser.add_argument("--scenario", choices=["baseline", "spike", "all"], default="all")
    parser.add_argument("--baseline-seconds", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "load-test")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    backends = ["memory", "postgres"] if args.backend == "all" else [args.backend]
    scenarios = ["baseline", "spike"] if args.scenario == "all" else [args.scenario]
    outcomes: list[Outcome] = []
    for backend in backends:
        outcomes += run_backend(backend, scenarios, args.baseline_seconds, args.out)
    report = table(outcomes)
    print(report)
    (args.out / "summary.md").write_text(report + "\n")
    baseline_ok = all(o.passed for o in outcomes if o.scenario == "baseline")
    return 0 if baseline_ok else 1


if __name__ == "__main__":
    sys.exit(main())
