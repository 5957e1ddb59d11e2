"""Problems: RFC 9457 problem+json rendering, codes and members."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prodkit import FieldError, Problem
from prodkit._core.context import request_id_var
from prodkit._core.problems import fallback_problem
from prodkit.asgi import (
    Message,
    encode_problem,
    problem_dict,
    problem_type,
    send_problem,
)


async def sent_by(problem: Problem) -> tuple[Message, Message]:
    """The two messages ``problem.send`` sends."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await problem.send(send)
    start, body = sent
    return start, body


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


def test_text_utf8_cannot_carry_is_escaped_not_an_error() -> None:
    # A lone surrogate arrives from a client's JSON ({"\ud800": 1}) and is quoted back in a
    # pointer; the body stays valid JSON naming the same characters.
    body = {"errors": [{"pointer": "/\ud800", "detail": "é"}]}
    encoded = encode_problem(body)
    assert encoded.isascii()
    assert json.loads(encoded) == body
    assert encode_problem({"detail": "é"}) == '{"detail":"é"}'.encode()


@pytest.mark.parametrize(
    ("problem", "why"),
    [
        (Problem(422, "VALIDATION_FAILED", extensions={"x": object()}), "not JSON"),
        (Problem(422, "VALIDATION_FAILED", extensions={"x": float("nan")}), "NaN is not JSON"),
        (Problem(422, "VALIDATION_FAILED", headers={"X-Note": "→"}), "not Latin-1"),
        (Problem(422, "VALIDATION_FAILED", headers={"X-Note": "a\r\nSet-Cookie: x"}), "CRLF"),
    ],
)
async def test_a_problem_that_cannot_be_rendered_sends_a_minimal_one(
    problem: Problem, why: str
) -> None:
    token = request_id_var.set("rid-1")
    try:
        start, message = await sent_by(problem)
    finally:
        request_id_var.reset(token)
    headers = dict(start["headers"])
    assert start["status"] == 422, why
    assert headers[b"content-type"] == b"application/problem+json"
    assert b"x-note" not in headers
    body = json.loads(message["body"])
    assert body == {
        "type": problem_type("VALIDATION_FAILED"),
        "title": "Unprocessable Entity",
        "status": 422,
        "detail": "The problem could not be rendered in full.",
        "code": "VALIDATION_FAILED",
        "request_id": "rid-1",
    }


async def test_send_problem_falls_back_too() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_problem(send, 429, "RATE_LIMITED", headers={"Retry-After": "\n7"})
    start, body = sent
    assert start["status"] == 429
    assert json.loads(body["body"])["code"] == "RATE_LIMITED"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "NOT_FOUND", (404, "NOT_FOUND")),
        (200, "OK", (500, "OK")),  # a problem is an error: never a 2xx
        ("422", "x", (500, "INTERNAL_ERROR")),
        (503, "lower_case", (503, "INTERNAL_ERROR")),
        (599, "ODD", (599, "ODD")),
    ],
)
def test_the_fallback_keeps_only_what_is_safe(
    status: Any, code: Any, expected: tuple[int, str]
) -> None:
    sent_status, body, headers = fallback_problem(status, code)
    members = json.loads(body)
    assert (sent_status, members["code"]) == expected
    assert members["status"] == sent_status
    assert members["type"] == problem_type(expected[1])
    assert headers == []
