"""Claims whose release could not reach the store, retried in the background until it lands.

A request whose handler failed gives its key back so that the client's retry runs the handler.
When that release fails (the database restarting, a network partition) the key would stay
claimed until its lease runs out, and every retry meanwhile would get a 409, long after the
store is back. :class:`PendingReleases` keeps such releases and tries them again, with a
bounded backoff, until they land or the lease is over (then a retry may take the key over
anyway). The PostgreSQL and Redis stores keep one each (``retry_release``); their
``aclose()`` tries what is still pending once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prodkit._core.exceptions import BackendError
from prodkit._core.logs import SafeLogger

#: Seconds one background attempt may take; the first retry comes after ``FIRST_DELAY``, and
#: the wait doubles after each failed round up to ``MAX_DELAY``.
ATTEMPT_TIMEOUT = 1.0
FIRST_DELAY = 0.05
MAX_DELAY = 1.0


class PendingReleases:
    """Releases to retry, each until it lands or its lease is over; one background task.

    Arguments:
        release: the store's ``release(key, owner)`` (or ``withdraw``).
        logger: the store's logger, for the one line when a release is given up.
        what: the operation in log lines, default ``"release"`` (``"withdrawal"``).
        done: its past participle in log lines, default ``"released"`` (``"withdrawn"``).
    """

    def __init__(
        self,
        release: Callable[[str, str], Awaitable[bool]],
        logger: SafeLogger,
        *,
        what: str = "release",
        done: str = "released",
    ) -> None:
        self._release = release
        self.logger = logger
        self.what = what
        self.done = done
        # (key, owner) -> the event loop's time after which a retry may take the key over.
        self._pending: dict[tuple[str, str], float] = {}
        self._retrier: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key: str, owner: str, *, within: float) -> None:
        """Retry releasing ``owner``'s claim on ``key`` for at most ``within`` seconds."""
        loop = asyncio.get_running_loop()
        self._pending[(key, owner)] = loop.time() + within
        if self._retrier is None or self._retrier.done():
            self._retrier = loop.create_task(self._retry(), name="prodkit-idempotency-releases")

    async def _retry(self) -> None:
        delay = FIRST_DELAY
        while self._pending:
            await asyncio.sleep(delay)
            self._give_up_expired()
            try:
                if await self._attempt():
                    return
            except Exception:  # a bug must not end the retries; store failures are handled
                self.logger.exception(f"idempotency claim {self.what} retry failed")
            delay = min(delay * 2, MAX_DELAY)

    def _give_up_expired(self) -> None:
        now = asyncio.get_running_loop().time()
        expired = [claim for claim, until in self._pending.items() if until <= now]
        for claim in expired:
            del self._pending[claim]
        if expired:
            self.logger.warning(
                f"idempotency claim {self.what} given up",
                count=len(expired),
                detail="the lease is over: a retry may take the key over now"
                if self.what == "release"
                else "the record's ttl is over: it is not replayed any more",
            )

    async def _attempt(self) -> bool:
        """Release what is pending, stopping at the first failure; ``True`` when none is left."""
        for claim in list(self._pending):
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT):
                    await self._release(*claim)
            except (BackendError, TimeoutError):
                return False  # still unreachable: the others would fail the same way
            self._pending.pop(claim, None)
        return not self._pending

    async def aclose(self) -> None:
        """Stop retrying; try what is pending once more and log what still did not land."""
        retrier, self._retrier = self._retrier, None
        if retrier is not None and not retrier.done():
            retrier.cancel()
            if retrier.get_loop() is asyncio.get_running_loop():
                await asyncio.wait({retrier})
        if self._pending:
            self._give_up_expired()
            try:
                await self._attempt()
            except Exception:  # not a store failure (those are handled): the store still closes
                self.logger.exception(f"idempotency claim {self.what} retry failed")
        if self._pending:
            self.logger.warning(
                f"idempotency claims not {self.done} at close",
                count=len(self._pending),
                detail="their keys answer 409 until their lease is over"
                if self.what == "release"
                else "their records of work that did not commit stand until their ttl",
            )
            self._pending.clear()


__all__ = ["ATTEMPT_TIMEOUT", "MAX_DELAY", "PendingReleases"]
