"""The example through a PostgreSQL outage: the network cut, not the server stopped.

``python -m examples.funds`` runs against a fresh database behind a TCP proxy
(:mod:`tests.servers.proxy`) while a few clients list, read, create, update and delete funds
and read their summaries. The proxy is cut — open connections go silent, new ones hang, as in
a network partition — and later restored. Throughout, every answer is a 2xx or 4xx, or a 503
problem ``DEPENDENCY_UNAVAILABLE`` with ``Retry-After``, never a 500; ``/readyz`` turns 503 and
back within the bound docs/health.md gives (the postgres check's ``cache_ttl`` + ``timeout``,
polled, with slack for a loaded machine); and the server logs the postgres check failing once
and passing again once. It runs with the memory and with the PostgreSQL idempotency store
(then a keyed create whose claim cannot be made is a 503 ``IDEMPOTENCY_STORE_UNAVAILABLE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry

from examples.funds.app import create_app
from prodkit import StackSettings
from tests.conftest import RUN_ID, fresh_database
from tests.servers import HOST, free_port, run_server
from tests.servers.proxy import TcpProxy

pytestmark = [pytest.mark.server, pytest.mark.postgres]

FUND: dict[str, Any] = {
    "name": "Partition Fund",
    "size": 1_000_000,
    "stages": [{"name": "seed", "months": 18, "graduate": 0.4, "exit": 0.1}],
}
OPERATIONS = ("list", "get", "create", "update", "delete", "summary")
CLIENTS = 6
#: Added to the documented readiness bound: probes and the server share a loaded machine.
SLACK = 1.5


@pytest.fixture(scope="module")
def outage_dsn(postgres_server_dsn: str) -> Iterator[str]:
    """A database of this module's own, dropped afterwards: bytes held in the cut may land late."""
    with fresh_database(postgres_server_dsn, f"prodkit_test_{RUN_ID}_outages") as dsn:
        yield dsn


def readiness_bound(dsn: str) -> float:
    """``cache_ttl`` + ``timeout`` of the example's postgres check, as the example sets them."""
    stack = create_app(StackSettings(database_url=dsn), registry=CollectorRegistry())
    (check,) = [c for c in stack.health.checks if c.name == "postgres"]
    return check.cache_ttl + check.timeout


@dataclass
class Answer:
    phase: str
    operation: str
    status: int
    retry_after: str | None
    content_type: str | None
    code: str | None


@dataclass
class Load:
    """A few clients, each with a caller and funds of its own, cycling through the operations."""

    http: httpx.AsyncClient
    phase: str = "before"
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, index: int) -> None:
        headers = {"X-User-Id": f"outage-{index}-{uuid.uuid4().hex[:8]}"}
        funds: list[str] = []
        for _ in range(3):
            created = await self.http.post("/api/funds", json=FUND, headers=headers)
            assert created.status_code == 201, created.text
            funds.append(created.json()["id"])
        step = index  # each client starts elsewhere in the cycle
        while not self.stop.is_set():
            operation = OPERATIONS[step % len(OPERATIONS)]
            step += 1
            phase = self.phase
            try:
                response = await self.send(operation, headers, funds, step)
            except httpx.HTTPError as exc:
                self.failures.append(f"{operation} in {phase}: {type(exc).__name__}: {exc}")
                continue
            problem = response.headers.get("content-type") == "application/problem+json"
            self.answers.append(
                Answer(
                    phase,
                    operation,
                    response.status_code,
                    response.headers.get("retry-after"),
                    response.headers.get("content-type"),
                    response.json().get("code") if problem else None,
                )
            )
            if operation == "create" and response.status_code == 201:
                funds.append(response.json()["id"])
            await asyncio.sleep(0.02)

    async def send(
        self, operation: str, headers: dict[str, str], funds: list[str], step: int
    ) -> httpx.Response:
        # A fund nobody has: never in the response cache, so the read reaches the database.
        some = funds[step % len(funds)] if funds and step % 2 else str(uuid.uuid4())
        if operation == "list":
            return await self.http.get("/api/funds", params={"limit": 5}, headers=headers)
        if operation == "get":
            return await self.http.get(f"/api/funds/{some}", headers=headers)
        if operation == "create":
            # Every other create carries a key: with the PostgreSQL idempotency store the key's
            # claim needs the database too.
            keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex} if step % 4 < 2 else headers
            return await self.http.post("/api/funds", json=FUND, headers=keyed)
        if operation == "update":
            body = {"name": f"renamed {step}"}
            return await self.http.patch(f"/api/funds/{some}", json=body, headers=headers)
        if operation == "delete":
            return await self.http.delete(f"/api/funds/{some}", headers=headers)
        return await self.http.get("/api/summary", headers=headers)

    def seen(self, phase: str, wanted: Callable[[Answer], bool]) -> set[str]:
        return {a.operation for a in self.answers if a.phase == phase and wanted(a)}

    async def until(self, phase: str, wanted: Callable[[Answer], bool], within: float) -> None:
        """Wait until every operation has had an answer ``wanted`` in ``phase`` (bounded)."""
        deadline = time.monotonic() + within
        while self.seen(phase, wanted) != set(OPERATIONS):
            if time.monotonic() > deadline:
                missing = set(OPERATIONS) - self.seen(phase, wanted)
                raise AssertionError(f"in {phase}, no such answer from {sorted(missing)}")
            await asyncio.sleep(0.05)


def served(answer: Answer) -> bool:
    return answer.status < 500


def unavailable(answer: Answer) -> bool:
    return answer.status == 503


async def readyz_turns(probe: httpx.AsyncClient, status: int, within: float) -> None:
    """Poll ``/readyz`` (every 0.1 s, as a load balancer would) until it answers ``status``."""
    deadline = time.monotonic() + within
    seen: list[int] = []
    while time.monotonic() < deadline:
        response = await probe.get("/readyz")
        if response.status_code == status:
            if status == 503:
                assert response.headers["retry-after"].isdigit()
            return
        seen.append(response.status_code)
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz did not answer {status} within {within:.1f} s: {seen[-5:]}")


def health_transitions(output: str) -> list[str]:
    events = []
    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("check") == "postgres":
                events.append(str(entry.get("event")))
    return events


@pytest.mark.parametrize("idempotency_store", ["memory", "postgres"])
async def test_a_postgres_partition_is_answered_503_never_500(
    outage_dsn: str, tmp_path: Path, idempotency_store: str
) -> None:
    bound = readiness_bound(outage_dsn)
    target = urlsplit(outage_dsn)
    with TcpProxy((target.hostname or HOST, target.port or 5432)) as proxy:
        port = free_port()
        env = {
            "DATABASE_URL": proxy.dsn(outage_dsn),
            "IDEMPOTENCY_STORE": idempotency_store,
            "RATE_LIMIT": "100000/second",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
        }
        args = ["examples.funds", "--port", str(port), "--workers", "1"]
        with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
            async with (
                httpx.AsyncClient(base_url=server.base_url, timeout=30) as http,
                httpx.AsyncClient(base_url=server.base_url, timeout=10) as probe,
            ):
                await readyz_turns(probe, 200, within=20)
                load = Load(http)
                clients = [asyncio.create_task(load.client(i)) for i in range(CLIENTS)]
                try:
                    await load.until("before", served, within=30)

                    proxy.cut()
                    load.phase = "cut"
                    await readyz_turns(probe, 503, within=bound + SLACK)
                    assert (await probe.get("/livez")).status_code == 200
                    # Every endpoint that needs the database says so, each within the bounds
                    # of the pool's timeouts (the HTTP client's 30 s would report a hang).
                    await load.until("cut", unavailable, within=60)

                    proxy.restore()
                    load.phase = "restored"
                    await readyz_turns(probe, 200, within=bound + SLACK)
                    await load.until("restored", served, within=30)
                finally:
                    load.stop.set()
                    await asyncio.gather(*clients)
            output = server.output()

    assert load.failures == []
    codes = {"DEPENDENCY_UNAVAILABLE"}
    if idempotency_store == "postgres":  # a keyed request whose claim could not be made
        codes.add("IDEMPOTENCY_STORE_UNAVAILABLE")
    wrong = [a for a in load.answers if not (served(a) or a.status == 503)]
    assert wrong == [], Counter((a.operation, a.status) for a in wrong)
    for answer in load.answers:
        if answer.status == 503:
            assert answer.content_type == "application/problem+json", answer
            assert answer.code in codes, answer
            assert answer.retry_after is not None, answer
            assert int(answer.retry_after) >= 1, answer
    assert "unhandled exception" not in output
    assert health_transitions(output) == ["health check failing", "health check passing again"]
    # The summary refresher says it is failing once, not once a second.
    assert output.count("refreshing fund_summaries failed") <= 1
