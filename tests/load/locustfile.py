"""Locust scenarios for the funds example: baseline (10 users) and spike (100 → 1,000 → 0).

Each simulated user has its own ``X-User-Id``, creates funds with idempotency keys (and now and
then retries one, which must replay), reads them back, lists, projects and summarises. Select
the scenario with ``LOAD_SCENARIO=baseline|spike``; ``tests/load/run.py`` drives it.
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, task

SCENARIO = os.environ.get("LOAD_SCENARIO", "baseline")
FUND: dict[str, Any] = {
    "name": "Load Fund",
    "size": 10_000_000,
    "description": "created by the load test",
    "stages": [
        {"name": "seed", "months": 18, "graduate": 0.4, "exit": 0.1},
        {"name": "series-a", "months": 24, "graduate": 0.5, "exit": 0.2},
    ],
}


class FundsUser(FastHttpUser):
    """One API client."""

    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.user_id = f"load-{uuid.uuid4().hex[:12]}"
        self.headers = {"X-User-Id": self.user_id}
        self.fund_ids: list[str] = []
        self.create()

    @task(3)
    def create(self) -> None:
        key = uuid.uuid4().hex
        headers = {**self.headers, "Idempotency-Key": key}
        with self.client.post(
            "/api/funds", json=FUND, headers=headers, name="POST /api/funds", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"create: {response.status_code}")
                return
            self.fund_ids.append(response.json()["id"])
        if random.random() < 0.1:
            # A client retry with the same key must replay the first result, not create another.
            with self.client.post(
                "/api/funds",
                json=FUND,
                headers=headers,
                name="POST /api/funds (retry)",
                catch_response=True,
            ) as retry:
                if retry.status_code != 201 or retry.headers.get("Idempotency-Status") not in (
                    None,
                    "replayed",
                ):
                    retry.failure(
                        f"retry: {retry.status_code} {retry.headers.get('Idempotency-Status')}"
                    )

    @task(6)
    def read(self) -> None:
        if self.fund_ids:
            fund_id = random.choice(self.fund_ids)
            self.client.get(
                f"/api/funds/{fund_id}", headers=self.headers, name="GET /api/funds/{id}"
            )

    @task(2)
    def listing(self) -> None:
        self.client.get("/api/funds?limit=20", headers=self.headers, name="GET /api/funds")

    @task(1)
    def projection(self) -> None:
        if self.fund_ids:
            fund_id = random.choice(self.fund_ids)
            self.client.get(
                f"/api/funds/{fund_id}/projection?simulations=2000&seed=1",
                headers=self.headers,
                name="GET /api/funds/{id}/projection",
            )

    @task(1)
    def summary(self) -> None:
        self.client.get("/api/summary", headers=self.headers, name="GET /api/summary")


if SCENARIO == "spike":

    class SpikeShape(LoadTestShape):
        """Ramp to 100 users, spike to 1,000, then back down; about 100 s in all."""

        # (end of phase in seconds, users, spawn rate per second)
        phases = ((20, 100, 10), (45, 1000, 60), (70, 1000, 60), (85, 100, 100), (100, 0, 100))

        def tick(self) -> tuple[int, float] | None:
            elapsed = self.get_run_time()  # type: ignore[no-untyped-call]  # locust leaves it untyped
            for end, users, rate in self.phases:
                if elapsed < end:
                    return users, rate
            return None
