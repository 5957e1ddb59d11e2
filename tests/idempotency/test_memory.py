"""The memory store against the linear algorithm it replaced, under capacity and mixed ttls.

``LinearStore`` is the store as it was before claims at capacity became O(1): on a full store
it scans every record for expired ones, then searches for the oldest completed one. It is the
model: over random claims, completions, releases, reads and clock moves, the store must give
the same answers, hold the same number of records and fail (full of claims) at the same step.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from prodkit._core.exceptions import BackendError
from prodkit.idempotency import (
    Claim,
    ClaimOutcome,
    IdempotencyRecord,
    MemoryIdempotencyStore,
    StoredResponse,
)

T = TypeVar("T")
KEYS = [f"key-{index}" for index in range(16)]


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a store call that must finish without awaiting (that is what makes it atomic)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise AssertionError("the memory store awaited inside an operation")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def response(status: int, tag: str) -> StoredResponse:
    return StoredResponse(status, ((b"content-type", b"text/plain"),), tag.encode())


# -- the model: the previous, linear implementation ------------------------------------------


@dataclass
class LinearEntry:
    fingerprint: bytes
    owner: str | None
    lease_until: float
    expires_at: float
    response: StoredResponse | None


class LinearStore:
    """The old ``MemoryIdempotencyStore``, synchronous: one OrderedDict, scanned when full."""

    def __init__(self, max_entries: int, clock: FakeClock) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[str, LinearEntry] = OrderedDict()

    def live(self, key: str, now: float) -> LinearEntry | None:
        entry = self.entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self.entries[key]
            return None
        return entry

    def make_room(self, now: float) -> None:
        if len(self.entries) < self.max_entries:
            return
        for key in [k for k, e in self.entries.items() if e.expires_at <= now]:
            del self.entries[key]
        while len(self.entries) >= self.max_entries:
            victim = next((k for k, e in self.entries.items() if e.response is not None), None)
            if victim is None:
                raise BackendError("full")
            del self.entries[victim]

    def claim(self, key: str, fingerprint: bytes, owner: str, lease: float, ttl: float) -> Claim:
        now = self.clock()
        entry = self.live(key, now)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                return Claim(ClaimOutcome.MISMATCH)
            if entry.response is not None:
                return Claim(ClaimOutcome.COMPLETED, response=entry.response)
            if entry.lease_until > now:
                return Claim(ClaimOutcome.IN_PROGRESS, retry_after=entry.lease_until - now)
            del self.entries[key]
        self.make_room(now)
        self.entries[key] = LinearEntry(fingerprint, owner, now + lease, now + ttl, None)
        return Claim(ClaimOutcome.ACQUIRED)

    def complete(self, key: str, owner: str, stored: StoredResponse, ttl: float) -> bool:
        now = self.clock()
        entry = self.live(key, now)
        if entry is None or entry.response is not None or entry.owner != owner:
            return False
        entry.owner = None
        entry.response = stored
        entry.expires_at = now + ttl
        self.entries.move_to_end(key)
        return True

    def release(self, key: str, owner: str) -> bool:
        entry = self.live(key, self.clock())
        if entry is None or entry.response is not None or entry.owner != owner:
            return False
        del self.entries[key]
        return True

    def get(self, key: str) -> IdempotencyRecord | None:
        entry = self.live(key, self.clock())
        if entry is None:
            return None
        return IdempotencyRecord(entry.fingerprint, entry.owner, entry.response)


# -- the state machine -------------------------------------------------------------------------


class AgainstTheLinearStore(RuleBasedStateMachine):
    """Random operations on a small store (1-6 records, 16 keys) and on the model.

    ``ttls`` are the ttls that claims and completions choose from: one (as a middleware
    writes) or several. Most rules claim, so that most claims meet a full store.
    """

    ttls: tuple[float, ...] = (60.0,)

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.claimed: list[tuple[str, str]] = [("key-0", "never-claimed")]
        self.claims = 0
        self.store = MemoryIdempotencyStore(clock=self.clock)
        self.model = LinearStore(1, self.clock)

    @initialize(max_entries=st.integers(1, 6))
    def build(self, max_entries: int) -> None:
        self.store = MemoryIdempotencyStore(max_entries=max_entries, clock=self.clock)
        self.model = LinearStore(max_entries, self.clock)

    def ttl(self, index: int) -> float:
        return self.ttls[index % len(self.ttls)]

    def do_claim(self, key: str, fingerprint: bytes, lease: float, ttl: float) -> str | None:
        """Claim on both; the owner token if acquired."""
        self.claims += 1
        owner = f"owner-{self.claims}"
        try:
            expected = self.model.claim(key, fingerprint, owner, lease, ttl)
        except BackendError:
            with pytest.raises(BackendError, match="full"):
                run_now(self.store.claim(key, fingerprint, owner, lease=lease, ttl=ttl))
            return None
        got = run_now(self.store.claim(key, fingerprint, owner, lease=lease, ttl=ttl))
        assert got == expected
        if got.outcome is not ClaimOutcome.ACQUIRED:
            return None
        self.claimed.append((key, owner))
        return owner

    def do_complete(self, key: str, owner: str, ttl: float, status: int = 201) -> None:
        stored = response(status, owner)
        expected = self.model.complete(key, owner, stored, ttl)
        assert run_now(self.store.complete(key, owner, stored, ttl=ttl)) is expected

    def do_release(self, key: str, owner: str) -> None:
        expected = self.model.release(key, owner)
        assert run_now(self.store.release(key, owner)) is expected

    @rule(
        key=st.sampled_from(KEYS),
        fingerprint=st.sampled_from([b"fp-a", b"fp-b"]),
        lease=st.sampled_from([5.0, 50.0]),
        ttl_index=st.integers(0, 2),
    )
    def claim(self, key: str, fingerprint: bytes, lease: float, ttl_index: int) -> None:
        self.do_claim(key, fingerprint, lease, self.ttl(ttl_index))

    @rule(key=st.sampled_from(KEYS), ttl_index=st.integers(0, 2))
    def request(self, key: str, ttl_index: int) -> None:
        # A request as the middleware runs it: claim, then complete at once (the same ttl).
        owner = self.do_claim(key, b"fp-a", 5.0, self.ttl(ttl_index))
        if owner is not None:
            self.do_complete(key, owner, self.ttl(ttl_index))

    @rule(back=st.integers(1, 4), ttl_index=st.integers(0, 2), release=st.booleans())
    def finish_a_recent_claim(self, back: int, ttl_index: int, release: bool) -> None:
        # A handler that took a while: complete (or release) one of the latest claims.
        key, owner = self.claimed[-min(back, len(self.claimed))]
        if release:
            self.do_release(key, owner)
        else:
            self.do_complete(key, owner, self.ttl(ttl_index))

    @rule(
        action=st.sampled_from(["complete", "release", "get"]),
        key=st.sampled_from(KEYS),
        owner_index=st.integers(0, 40),
        status=st.sampled_from([200, 409]),
        ttl_index=st.integers(0, 2),
    )
    def stray(self, action: str, key: str, owner_index: int, status: int, ttl_index: int) -> None:
        # Reads, and writes by owners that may hold another key or nothing any more.
        owner = self.claimed[owner_index % len(self.claimed)][1]
        if action == "complete":
            self.do_complete(key, owner, self.ttl(ttl_index), status)
        elif action == "release":
            self.do_release(key, owner)
        else:
            assert run_now(self.store.get(key)) == self.model.get(key)

    @rule(seconds=st.sampled_from([0.0, 10.0, 20.0, 30.0, 45.0, 100.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def same_records(self) -> None:
        # Reading drops expired records, and leaving them in place until the store is full is
        # what this test is about: read every key from copies, not from the stores under test.
        assert len(self.store) == len(self.model.entries)
        store, model = copy.deepcopy((self.store, self.model))
        for key in KEYS:
            assert run_now(store.get(key)) == model.get(key)


@pytest.mark.parametrize("ttls", [(60.0,), (60.0, 100.0, 400.0)], ids=["one ttl", "mixed ttls"])
def test_same_answers_as_the_linear_store(ttls: tuple[float, ...]) -> None:
    machine = type("AgainstTheLinearStore", (AgainstTheLinearStore,), {"ttls": ttls})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=300, stateful_step_count=40, deadline=None)
    )


@dataclass(frozen=True)
class Request:
    """One request of a workload: when it starts after the previous one, how long it runs."""

    gap: float
    duration: float
    key: str
    ttl_index: int  #: of the claim
    completed_ttl_index: int  #: of the completion (the middleware gives both the same ttl)
    end: str  # "complete", "release" (the handler failed) or "crash" (the lease runs out)


REQUESTS = st.builds(
    Request,
    gap=st.sampled_from([0.0, 5.0, 10.0, 20.0]),
    duration=st.sampled_from([0.0, 5.0, 20.0, 50.0]),
    key=st.sampled_from(KEYS),
    ttl_index=st.integers(0, 2),
    completed_ttl_index=st.integers(0, 2),
    end=st.sampled_from(["complete", "complete", "complete", "release", "crash"]),
)


@pytest.mark.parametrize("ttls", [(60.0,), (60.0, 100.0, 400.0)], ids=["one ttl", "mixed ttls"])
@settings(max_examples=300)
@given(max_entries=st.integers(1, 6), requests=st.lists(REQUESTS, min_size=1, max_size=40))
def test_overlapping_requests_as_the_linear_store(
    ttls: tuple[float, ...], max_entries: int, requests: list[Request]
) -> None:
    # Requests that overlap finish in another order than they started: the order of expiry
    # then differs from the order of claims, which is where a queue can go wrong.
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_entries=max_entries, clock=clock)
    model = LinearStore(max_entries, clock)
    events: list[tuple[float, int, str, Request]] = []
    start = clock.now
    for index, request in enumerate(requests):
        start += request.gap
        events.append((start, index, "claim", request))
        events.append((start + request.duration, index, request.end, request))
    events.sort(key=lambda event: (event[0], event[1], event[2] != "claim"))
    acquired: set[int] = set()
    for at, index, step, request in events:
        clock.now = at
        ttl = ttls[request.ttl_index % len(ttls)]
        completed_ttl = ttls[request.completed_ttl_index % len(ttls)]
        owner = f"owner-{index}"
        if step == "claim":
            try:
                expected = model.claim(request.key, b"fp", owner, 10.0, ttl)
            except BackendError:
                with pytest.raises(BackendError, match="full"):
                    run_now(store.claim(request.key, b"fp", owner, lease=10.0, ttl=ttl))
                continue
            got = run_now(store.claim(request.key, b"fp", owner, lease=10.0, ttl=ttl))
            assert got == expected
            if got.outcome is ClaimOutcome.ACQUIRED:
                acquired.add(index)
        elif index in acquired and step == "complete":
            stored = response(201, owner)
            expected_done = model.complete(request.key, owner, stored, completed_ttl)
            completing = store.complete(request.key, owner, stored, ttl=completed_ttl)
            assert run_now(completing) is expected_done
        elif index in acquired and step == "release":
            expected_done = model.release(request.key, owner)
            assert run_now(store.release(request.key, owner)) is expected_done
        assert len(store) == len(model.entries)
        copied_store, copied_model = copy.deepcopy((store, model))
        for key in KEYS:
            assert run_now(copied_store.get(key)) == copied_model.get(key)


# -- cases worth naming ------------------------------------------------------------------------


async def test_an_expired_record_goes_before_an_older_live_completed_one() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_entries=2, clock=clock)
    await store.claim("long", b"fp", "a", lease=10, ttl=400)
    assert await store.complete("long", "a", response(201, "long"), ttl=400)
    await store.claim("short", b"fp", "b", lease=10, ttl=60)
    assert await store.complete("short", "b", response(201, "short"), ttl=60)
    clock.now += 100  # "short" completed last but has expired; "long" is older and live
    assert (await store.claim("new", b"fp", "c", lease=10, ttl=60)).outcome is (
        ClaimOutcome.ACQUIRED
    )
    replay = await store.claim("long", b"fp", "d", lease=10, ttl=400)
    assert replay.outcome is ClaimOutcome.COMPLETED
    assert replay.response == response(201, "long")
    assert await store.get("short") is None


async def test_an_expired_claim_goes_before_a_live_completed_record() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_entries=2, clock=clock)
    await store.claim("done", b"fp", "a", lease=10, ttl=400)
    assert await store.complete("done", "a", response(200, "done"), ttl=400)
    await store.claim("crashed", b"fp", "b", lease=10, ttl=60)  # never completed
    clock.now += 100
    assert (await store.claim("new", b"fp", "c", lease=10, ttl=60)).outcome is (
        ClaimOutcome.ACQUIRED
    )
    assert len(store) == 2
    assert (await store.get("done")) == IdempotencyRecord(b"fp", None, response(200, "done"))
    assert await store.get("crashed") is None


async def test_a_full_store_of_ten_thousand_evicts_the_oldest_completed_only() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_entries=10_000, clock=clock)
    for index in range(9_999):
        key = f"done-{index}"
        await store.claim(key, b"fp", key, lease=60, ttl=3600)
        assert await store.complete(key, key, response(201, key), ttl=3600)
        clock.now += 0.001
    await store.claim("running", b"fp", "r", lease=60, ttl=3600)
    for index in range(3):
        key = f"new-{index}"
        assert (await store.claim(key, b"fp", key, lease=60, ttl=3600)).outcome is (
            ClaimOutcome.ACQUIRED
        )
    assert len(store) == 10_000
    assert [await store.get(f"done-{index}") is None for index in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert (await store.get("running")) == IdempotencyRecord(b"fp", "r", None)
    assert (await store.get("done-9998")) is not None


async def test_a_store_full_of_claims_fails_until_one_is_released() -> None:
    store = MemoryIdempotencyStore(max_entries=3, clock=FakeClock())
    for key in ("a", "b", "c"):
        await store.claim(key, b"fp", key, lease=60, ttl=600)
    with pytest.raises(BackendError, match="3 requests in progress"):
        await store.claim("d", b"fp", "d", lease=60, ttl=600)
    assert await store.release("b", "b")
    assert (await store.claim("d", b"fp", "d", lease=60, ttl=600)).outcome is (
        ClaimOutcome.ACQUIRED
    )
    assert [await store.get(key) is not None for key in ("a", "b", "c", "d")] == [
        True,
        False,
        True,
        True,
    ]
