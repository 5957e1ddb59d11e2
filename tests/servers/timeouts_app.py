"""The recommended stack around a tiny app, for the slow-client tests, configured by environment.

* ``MAX_CONCURRENCY`` and the other stack variables: read by ``StackSettings.from_env``
* ``PRODKIT_TEST_BODY_TIMEOUT``: the stack's ``body_timeout_seconds``
* ``PRODKIT_TEST_WITHOUT_REQUEST_TIMEOUT=1``: the stack without its ``request_timeout`` layer
  (the control that shows what the layer prevents)

``POST /upload`` reads the body and answers its length; ``GET /work`` answers ``ok``.
Run with ``uvicorn tests.servers.timeouts_app:app``.
"""

from __future__ import annotations

import dataclasses
import os

from prodkit import Stack, StackSettings
from prodkit.asgi import Receive, Scope, Send


async def service(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    size = 0
    if scope["method"] == "POST":
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
    body = str(size).encode() if scope["method"] == "POST" else b"ok"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app() -> Stack:
    settings = dataclasses.replace(
        StackSettings.from_env(),
        body_timeout_seconds=float(os.environ.get("PRODKIT_TEST_BODY_TIMEOUT", "10")),
    )
    stack = Stack.recommended(settings)
    if os.environ.get("PRODKIT_TEST_WITHOUT_REQUEST_TIMEOUT") == "1":
        stack.remove("request_timeout")
    return stack.build(service)
