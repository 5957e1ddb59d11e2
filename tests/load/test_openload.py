"""The open-model generator works end to end: tiny rates, a few seconds, counts and schema only.

Nothing here asserts a duration or a latency: the figures are the benchmark's, not the test's.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.capacity import recovery
from benchmarks.openload import (
    FUNDS_MIX,
    SLO_P99_MS,
    Funds,
    Outcome,
    StepReport,
    ladder,
    parse_schedule,
    percentile,
    problem_code,
    search,
    summarise,
)
from tests.servers import ROOT, free_port, run_server, server_env

STEP_FIELDS = {
    "rate", "offered", "ok", "errors", "error_ratio", "p50_ms", "p99_ms", "lag_p99_ms",
    "generator_cpu", "server_cpu", "cpu_busy", "connections", "passed", "generator_bound",
    "operations",
}  # fmt: skip


def openload(url: str, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.openload", url, "--warmup", "0", "--json", "-", *args],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


@pytest.mark.server
def test_each_step_offers_its_rate_and_counts_every_arrival(tmp_path: Path) -> None:
    port = free_port()
    args = ["uvicorn", "--factory", "benchmarks.apps:bare", "--port", str(port)]
    with run_server(args, port=port, tmp_path=tmp_path) as server:
        figures = openload(
            server.base_url, "--rates", "20,40", "--seconds", "2", "--server-pid", str(server.pid)
        )
    steps = figures["steps"]
    assert [step["rate"] for step in steps] == [20.0, 40.0]
    for step in steps:
        assert step.keys() >= STEP_FIELDS
        # Poisson arrivals: about rate x seconds, never a fixed number of users.
        expected = step["rate"] * 2
        assert expected * 0.4 < step["offered"] < expected * 2
        assert step["ok"] == step["offered"], step["errors"]
        assert step["operations"]["GET /items/{id}"]["count"] == step["offered"]
        assert step["connections"] >= 1
    assert steps[1]["offered"] > steps[0]["offered"]


@pytest.mark.server
def test_the_funds_mix_reaches_the_example_and_retries_replay(tmp_path: Path) -> None:
    port = free_port()
    with run_server(
        ["examples.funds", "--port", str(port)], port=port, tmp_path=tmp_path
    ) as server:
        figures = openload(
            server.base_url, "--workload", "funds", "--schedule", "2@30,1@60", "--seed", "3"
        )
    whole = figures["whole"]
    # Every create answered 201, every retry 201 replayed, every read 200: no error at all.
    assert whole["errors"] == {}
    assert whole["ok"] == whole["offered"] > 30
    assert set(whole["operations"]) <= set(FUNDS_MIX)
    assert {"POST /api/funds", "GET /api/funds/{id}"} <= set(whole["operations"])
    assert sum(row["offered"] for row in figures["timeline"]) == whole["offered"]
    assert [phase["rate"] for phase in figures["schedule"]] == [30.0, 60.0]


def test_a_server_that_is_not_there_stops_the_run_before_any_step() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.openload", f"http://127.0.0.1:{port}", "--json", "-"],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "GET /items/0 failed before the run: connect ConnectionRefusedError" in result.stderr
    assert result.stdout == ""


def outcome(latency_ms: float, error: str | None = None) -> Outcome:
    return Outcome(0, "GET", 0.0, latency_ms, 0.1, error)


def test_failures_count_as_slower_than_any_answer() -> None:
    cpu = {"generator_cpu": 0.1, "server_cpu": 0.5, "cpu_busy": []}
    answered = [outcome(1.0)] * 995
    step = summarise([*answered, *[outcome(1.0, "timeout")] * 5], 100, 10, cpu, 4)
    assert step.errors == {"timeout": 5}
    assert step.p50_ms == 1.0
    assert step.p99_ms == 1.0  # 0.5 % failed: the 99th percentile is still an answer
    assert not step.passed  # ... but more than 0.1 % of the requests failed
    step = summarise([*answered[:900], *[outcome(1.0, "timeout")] * 100], 100, 10, cpu, 4)
    assert step.p99_ms is None


def test_the_generator_is_blamed_only_for_a_miss() -> None:
    late = {"generator_cpu": 0.95, "server_cpu": 0.5, "cpu_busy": []}
    held = summarise([outcome(3.0)] * 100, 100, 1, late, 1)
    assert held.passed
    assert held.generator_bound  # late, but latency counts from the intended time: it held
    missed = summarise([outcome(SLO_P99_MS * 2)] * 100, 100, 1, late, 1)
    assert not missed.passed
    assert missed.generator_bound


class FakeServer:
    """Steps that hold up to ``capacity`` requests per second: the search's arithmetic alone."""

    def __init__(self, capacity: float, late_above: float = float("inf")) -> None:
        self.capacity = capacity
        self.late_above = late_above
        self.rates: list[float] = []

    async def step(self, rate: float, seconds: float, index: int) -> StepReport:
        self.rates.append(rate)
        cpu = {
            "generator_cpu": 0.99 if rate > self.late_above else 0.1,
            "server_cpu": 0.5,
            "cpu_busy": [],
        }
        latency = 5.0 if rate <= self.capacity else SLO_P99_MS * 3
        return summarise([outcome(latency)] * 100, rate, seconds, cpu, 1)


def run_search(server: FakeServer, refine: int = 2) -> dict[str, Any]:
    return asyncio.run(
        search(
            server,  # type: ignore[arg-type]  # the search only calls step()
            start=100,
            factor=2,
            top=10_000,
            seconds=1,
            refine=refine,
            report=lambda step: None,
            cool_down=0,
        )
    )


def test_the_search_climbs_until_a_miss_then_bisects() -> None:
    server = FakeServer(capacity=500)
    result = run_search(server)
    # 100, 200, 400 hold, 800 misses; then sqrt(400 x 800) ≈ 565.7 misses, sqrt(400 x 565.7) ≈ 475.7 holds.
    assert server.rates == [100, 200, 400, 800, 565.7, 475.7]
    assert result["capacity"] == 475.7
    assert result["first_miss"] == 565.7
    assert not result["generator_bound"]
    assert [step["rate"] for step in result["steps"]] == sorted(server.rates)


def test_a_miss_while_the_generator_was_late_ends_the_search_as_generator_bound() -> None:
    server = FakeServer(capacity=500, late_above=300)
    result = run_search(server)
    assert server.rates == [100, 200, 400, 800]
    assert result["capacity"] == 400
    assert result["generator_bound"]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # Back under the SLO the second after the spike ends, and for good.
        ([(8, 50.0, 0), (9, 900.0, 0), (10, 150.0, 0), (11, 40.0, 0), (12, 30.0, 0)], 0.0),
        # A relapse within three seconds: recovered once three seconds in a row hold.
        ([(10, 900.0, 0), (11, 100.0, 0), (12, 300.0, 0), (13, 90.0, 0), (14, 80.0, 0),
          (15, 80.0, 0), (16, 500.0, 0)], 3.0),
        # Errors count too: a second with failures has not recovered.
        ([(10, 50.0, 5), (11, 50.0, 0), (12, 50.0, 0), (13, 50.0, 0)], 1.0),
        # Never back: None.
        ([(10, 900.0, 0), (11, None, 30)], None),
    ],
)  # fmt: skip
def test_recovery_is_the_first_of_enough_seconds_in_a_row_that_hold(
    rows: list[tuple[int, float | None, int]], expected: float | None
) -> None:
    timeline = [
        {"second": s, "offered": 100, "errors": e, "p50_ms": 1.0, "p99_ms": p} for s, p, e in rows
    ]
    assert recovery(timeline, spike_end=10, hold=3) == expected


def test_schedules_ladders_and_percentiles() -> None:
    assert parse_schedule("10@200,5@800") == [(10.0, 200.0), (5.0, 800.0)]
    with pytest.raises(ValueError, match="seconds@rate"):
        parse_schedule("10@0")
    assert list(ladder(100, 2, 800)) == [100, 200, 400, 800]
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    assert percentile([], 0.99) == 0.0


def test_a_miss_at_the_first_rate_halves_it_until_one_holds() -> None:
    server = FakeServer(capacity=30)
    result = run_search(server, refine=0)
    assert server.rates == [100, 50, 25]
    assert result["capacity"] == 25
    assert result["first_miss"] == 50


def test_the_funds_workload_can_offer_one_operation_alone() -> None:
    workload = Funds("127.0.0.1:8000", random.Random(1), operations=["GET /api/summary"])
    planned = [workload.next() for _ in range(50)]
    assert {p.operation for p in planned} == {"GET /api/summary"}
    assert all(p.data.startswith(b"GET /api/summary HTTP/1.1\r\n") for p in planned)
    with pytest.raises(ValueError, match="unknown operations"):
        Funds("127.0.0.1:8000", random.Random(1), operations=["DELETE /api/funds/{id}"])


def test_a_wrong_answer_names_its_problem_code() -> None:
    assert problem_code([b'{"type": "about:blank", "status": 503, ', b'"code": "OVERLOADED"}']) == (
        " OVERLOADED"
    )
    assert problem_code([b"<html>busy</html>"]) == ""
    assert problem_code([b"[1, 2]"]) == ""
    assert problem_code([]) == ""
