"""Problems: RFC 9457 problem+json rendering, codes and members."""

from __future__ import annotations

import json

from prodkit import FieldError, Problem
from prodkit.asgi import (
    Message,
    problem_dict,
    problem_type,
    send_problem,
)


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
