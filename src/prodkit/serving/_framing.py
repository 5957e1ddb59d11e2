"""Refuse an HTTP/1.x request whose body length is ambiguous, for servers that let it through.

RFC 9112 section 6.3: a request with both ``Content-Length`` and ``Transfer-Encoding`` may be
an attempt to smuggle a second request past a proxy that reads the other header; a server
that answers it must close the connection afterwards. llhttp (uvicorn's httptools) refuses it
itself; h11 (hypercorn) lets it through with ``Transfer-Encoding`` winning, so under hypercorn
this wrapper answers 400 with ``Connection: close`` before the app runs, and the bytes after
the body are never read as a request.
"""

from __future__ import annotations

from prodkit._core.problems import send_problem_body
from prodkit.asgi import ASGIApp, Receive, Scope, Send, encode_problem, problem_dict
from prodkit.requestid import generate_request_id
from prodkit.serving._options import MALFORMED_REQUEST

_HTTP1 = frozenset({"1.0", "1.1"})


def refuse_ambiguous_length(app: ASGIApp) -> ASGIApp:
    """``app``, with HTTP/1.x requests that carry both length headers answered 400."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("http_version", "1.1") in _HTTP1:
            names = {name for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                # Outside the app's stack: the request id is made here, for the log and client.
                request_id = generate_request_id()
                body = problem_dict(
                    400,
                    MALFORMED_REQUEST,
                    "a request must not carry both Content-Length and Transfer-Encoding",
                    request_id=request_id,
                )
                headers = [(b"x-request-id", request_id.encode()), (b"connection", b"close")]
                await send_problem_body(send, 400, encode_problem(body), headers)
                return
        await app(scope, receive, send)

    return guarded


__all__ = ["refuse_ambiguous_length"]
