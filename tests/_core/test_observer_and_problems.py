"""ResponseObserver, read_body/replay_receive, header helpers and problem rendering."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import FieldError, Problem
from prodkit.asgi import (
    Message,
    ReceiveWatcher,
    ResponseObserver,
    append_vary,
    get_list_header,
    problem_dict,
    problem_type,
    read_body,
    replay_receive,
    send_problem,
)


async def test_observer_records_status_headers_and_every_chunk() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    def add_header(message: Message) -> None:
        message["headers"] = [*message.get("headers", []), (b"x-added", b"1")]

    observer = ResponseObserver(send, on_start=add_header, capture_limit=100)
    await observer(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    assert observer.started
    assert not observer.complete
    for chunk in (b"ab", b"cd", b""):
        await observer({"type": "http.response.body", "body": chunk, "more_body": chunk != b""})
    assert observer.status == 201
    assert (b"x-added", b"1") in observer.headers
    assert observer.body == b"abcd"
    assert (observer.body_bytes, observer.complete) == (4, True)
    assert sent[0]["headers"][-1] == (b"x-added", b"1")


async def test_observer_capture_limit_drops_the_body_but_counts_bytes() -> None:
    async def send(message: Message) -> None:
        return None

    observer = ResponseObserver(send, capture_limit=3)
    await observer({"type": "http.response.start", "status": 200})
    await observer({"type": "http.response.body", "body": b"ab", "more_body": True})
    await observer({"type": "http.response.body", "body": b"cd"})
    assert observer.overflowed
    assert observer.body == b""
    assert observer.body_bytes == 4


async def test_observer_does_not_count_bytes_a_failed_send_never_delivered() -> None:
    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("client went away")

    observer = ResponseObserver(send)
    await observer({"type": "http.response.start", "status": 200})
    with pytest.raises(OSError, match="went away"):
        await observer({"type": "http.response.body", "body": b"lost"})
    assert observer.body_bytes == 0
    assert not observer.complete


@given(st.lists(st.binary(max_size=20), max_size=8))
async def test_read_body_joins_chunks_and_replay_gives_the_same_bytes(chunks: list[bytes]) -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": c, "more_body": True} for c in chunks
    ]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> Message:
        return messages.pop(0)

    body, complete = await read_body(receive)
    assert complete
    assert body == b"".join(chunks)
    replayed = await replay_receive(body, receive)()
    assert replayed == {"type": "http.request", "body": body, "more_body": False}


async def test_read_body_stops_at_the_limit_and_on_disconnect() -> None:
    queue: list[Message] = [
        {"type": "http.request", "body": b"12345", "more_body": True},
        {"type": "http.request", "body": b"67890", "more_body": True},
    ]

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    assert await read_body(receive, limit=8) == (b"1234567890", False)
    assert await read_body(receive) == (b"", False)


def test_append_vary_merges_without_repeats() -> None:
    headers = [(b"vary", b"Accept-Encoding")]
    append_vary(headers, "Origin", "accept-encoding")
    assert get_list_header(headers, b"vary") == ["Accept-Encoding", "Origin"]
    star = [(b"vary", b"*")]
    append_vary(star, "Origin")
    assert star == [(b"vary", b"*")]


async def test_send_problem_renders_rfc9457_with_code_and_headers() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_problem(send, 429, "RATE_LIMITED", "slow down", headers={"Retry-After": "7"})
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 429
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == b"7"
    assert headers[b"cache-control"] == b"no-store"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert json.loads(body["body"]) == {
        "type": "urn:prodkit:problem:rate-limited",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "slow down",
        "code": "RATE_LIMITED",
        "request_id": None,
    }


def test_problem_members() -> None:
    problem = Problem(
        422,
        "VALIDATION_FAILED",
        errors=[FieldError("/a", "bad")],
        extensions={"status": 999, "x": 1},
    )
    body = problem.to_dict(request_id="r")
    assert body["status"] == 422  # extensions cannot override standard members
    assert body["detail"] == "Unprocessable Content" or body["detail"] == "Unprocessable Entity"
    assert body["errors"] == [{"pointer": "/a", "detail": "bad"}]
    assert body["x"] == 1
    assert body["request_id"] == "r"
    assert (
        problem_type("IDEMPOTENCY_KEY_MISMATCH") == "urn:prodkit:problem:idempotency-key-mismatch"
    )
    assert problem_dict(599, "ODD")["title"] == "Error"


async def test_a_shared_observer_runs_inner_hooks_first_like_nested_wrappers() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    def adds(value: bytes) -> Callable[[Message], None]:
        return lambda message: message["headers"].append((b"x-order", value))

    outer = ResponseObserver(send, on_start=adds(b"outer"))
    middle = ResponseObserver.shared(outer)
    assert middle is outer  # handed down unchanged: observe through it
    middle.add_start_hook(adds(b"middle"))
    middle.add_start_hook(adds(b"inner"))  # added later = nearer the app
    await middle({"type": "http.response.start", "status": 201, "headers": []})
    assert sent[0]["headers"] == [
        (b"x-order", b"inner"),
        (b"x-order", b"middle"),
        (b"x-order", b"outer"),
    ]
    assert ResponseObserver.shared(outer) is not outer  # started: a new observer
    assert outer.status == 201


async def test_a_shared_watcher_is_reused() -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"abc", "more_body": False}

    watcher = ReceiveWatcher.shared(receive)
    assert ReceiveWatcher.shared(watcher) is watcher
    await watcher()
    assert watcher.body_bytes == 3
