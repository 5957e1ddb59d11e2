"""A steady open-loop load: requests at a fixed rate, whatever the answers and their delays."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

#: Requests a second.
RATE = 20


@dataclass
class Load:
    """A steady open-loop load: one request every ``1 / RATE`` s, whatever the answers."""

    url: Callable[[int], str]
    headers: Callable[[int], dict[str, str]] = lambda index: {}
    statuses: list[int] = field(default_factory=list)
    #: (monotonic time of the answer, status, ``X-Served-By``) of every answer.
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    bodies: dict[int, str] = field(default_factory=dict)  # the first body of each status
    first_error_at: float | None = None  # wall clock of the first 5xx answer received

    def failed(self) -> bool:
        return self.first_error_at is not None

    async def _one(self, client: httpx.AsyncClient, index: int) -> None:
        served_by = ""
        try:
            response = await client.get(self.url(index), headers=self.headers(index))
            status = response.status_code
            served_by = response.headers.get("x-served-by", "")
            self.bodies.setdefault(status, response.text[:500])
        except httpx.HTTPError as exc:
            status = 0
            self.bodies.setdefault(status, repr(exc))
        self.answers.append((time.monotonic(), status, served_by))
        if status >= 500 and self.first_error_at is None:
            self.first_error_at = time.time()
        self.statuses.append(status)

    @contextlib.asynccontextmanager
    async def running(self, max_seconds: float) -> AsyncIterator[Load]:
        async def send() -> None:
            async with httpx.AsyncClient(timeout=10.0) as client, asyncio.TaskGroup() as tasks:
                start, index = time.monotonic(), 0
                while time.monotonic() - start < max_seconds:
                    tasks.create_task(self._one(client, index))
                    index += 1
                    await asyncio.sleep(max(0.0, start + index / RATE - time.monotonic()))

        task = asyncio.create_task(send())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
