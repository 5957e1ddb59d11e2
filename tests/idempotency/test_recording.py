"""What the idempotency middleware records of a claimed request (``prodkit.idempotency._recording``).

The middleware, the claim a handler sees and the responder that holds a claimed response back
all record through one ``Recorder`` made from the options: these check that each follows the
options, not a copy of them.
"""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from prodkit import IdempotencyMiddleware
from prodkit.idempotency import (
    ClaimOutcome,
    IdempotencyClaim,
    IdempotencyOptions,
    MemoryIdempotencyStore,
)
from prodkit.idempotency._recording import Recorder
from tests.apps import build_app


def recorder(**options: object) -> Recorder:
    middleware = IdempotencyMiddleware(
        build_app("raw"),
        options=IdempotencyOptions(
            store=MemoryIdempotencyStore(),
            registry=CollectorRegistry(),
            **options,  # type: ignore[arg-type]
        ),
    )
    return middleware.recorder


@pytest.mark.parametrize(
    ("options", "status", "headers", "body", "recorded"),
    [
        ({}, 201, [], b"made", True),
        ({}, 500, [], b"", False),  # a retry may succeed: it runs again
        ({"store_server_errors": True}, 500, [], b"", True),
        ({}, 201, [(b"retry-after", b"3")], b"", False),
        ({}, 403, [], b"", False),  # answers the credentials, not the operation
        ({"max_response_bytes": 4}, 201, [], b"12345", False),
        ({"max_response_bytes": 4}, 201, [], b"1234", True),
    ],
)
def test_which_responses_are_recorded_follows_the_options(
    options: dict[str, object],
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    recorded: bool,
) -> None:
    record = recorder(**options).record(status, headers, body)
    assert (record is not None) is recorded
    if record is not None:
        assert (record.status, record.body) == (status, body)


def test_a_record_keeps_the_stored_headers_only() -> None:
    headers = [(b"location", b"/orders/7"), (b"x-trace", b"t-1"), (b"set-cookie", b"s=1")]
    record = recorder(stored_headers=["Location", "X-Trace"]).record(201, headers, b"{}")
    assert record is not None
    assert record.headers == ((b"location", b"/orders/7"), (b"x-trace", b"t-1"))
    record = recorder().record(201, headers, b"{}")  # the default list: no X-Trace
    assert record is not None
    assert record.headers == ((b"location", b"/orders/7"),)


async def test_the_claim_a_handler_sees_records_by_the_middlewares_rules() -> None:
    store = MemoryIdempotencyStore()
    recorder = IdempotencyMiddleware(
        build_app("raw"), store=store, max_response_bytes=4, registry=CollectorRegistry()
    ).recorder
    await store.claim("k", b"fp", "owner", lease=30, ttl=60)
    claim = IdempotencyClaim(store, "k", "owner", ttl=recorder.ttl, record=recorder.record)
    assert not await claim.complete(201, {}, b"12345")  # over max_response_bytes
    assert await claim.complete(201, {"Location": "/orders/7"}, b"1234")
    stored = await store.get("k")
    assert stored is not None
    assert stored.response == claim.response
    assert claim.response is not None
    assert claim.response.headers == ((b"location", b"/orders/7"),)


async def test_a_release_gives_the_key_back_to_a_retry() -> None:
    store = MemoryIdempotencyStore()
    releasing = dataclasses.replace(recorder(), store=store)
    await store.claim("k", b"fp", "owner", lease=30, ttl=60)
    in_progress = await store.claim("k", b"fp", "retry", lease=30, ttl=60)
    assert in_progress.outcome is ClaimOutcome.IN_PROGRESS
    await releasing.release("k", "owner", lease_ends=0.0)
    retry = await store.claim("k", b"fp", "retry", lease=30, ttl=60)
    assert retry.outcome is ClaimOutcome.ACQUIRED
