"""ResponseObserver and ReceiveWatcher: one wrapper of send and receive that every layer shares."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from prodkit.asgi import (
    Message,
    ReceiveWatcher,
    ResponseObserver,
    on_response_start,
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


async def test_start_hooks_of_several_layers_run_as_nested_wrappers_would() -> None:
    # Three layers, each touching the response with on_response_start: the same headers in
    # the same order as three nested send wrappers, through one observer.
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    def adds(value: bytes) -> Callable[[Message], None]:
        return lambda message: message["headers"].append((b"x-layer", value))

    outer = on_response_start(send, adds(b"outer"))
    assert type(outer) is ResponseObserver  # a plain send: a new observer
    middle = on_response_start(outer, adds(b"middle"))
    inner = on_response_start(middle, adds(b"inner"))
    assert inner is middle is outer  # one observer, no wrapper per layer
    await inner({"type": "http.response.start", "status": 200, "headers": []})
    await inner({"type": "http.response.body", "body": b"ok"})
    assert sent[0]["headers"] == [
        (b"x-layer", b"inner"),
        (b"x-layer", b"middle"),
        (b"x-layer", b"outer"),
    ]
    assert on_response_start(outer, adds(b"late")) is not outer  # started: a new observer


async def test_a_shared_watcher_is_reused() -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"abc", "more_body": False}

    watcher = ReceiveWatcher.shared(receive)
    assert ReceiveWatcher.shared(watcher) is watcher
    await watcher()
    assert watcher.body_bytes == 3
